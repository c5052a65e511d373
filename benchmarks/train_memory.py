"""Estimate a training step's peak memory without a GPU: the U-Net under FakeTensorMode, tracked by MemTracker.

    python benchmarks/train_memory.py                # paper U-Net, 128³, batch 1 and 2, each memory setting
    python benchmarks/train_memory.py --size 128 --batch 1 --channels 32 64 128 256
    python benchmarks/train_memory.py --autocast cpu # CPU autocast's precision policy instead of CUDA's

No tensor holds data (``torch._subclasses.FakeTensorMode``), so the paper's network at 128³ is "run" in
seconds on any machine. ``torch.distributed._tools.mem_tracker.MemTracker`` records the peak bytes of live
tensors by kind during one bf16-autocast forward + backward: activations (saved for the backward pass) and
temporaries. The training state is added from the parameter count, not tracked: fp32 weights, gradients,
Adam's two moments and the EMA copy = 5 × 4 bytes per parameter.

The step runs under CPU autocast (fake tensors cannot be CUDA tensors in a CPU build of torch). The two
autocast policies differ where it matters here: CUDA autocast runs ``group_norm`` in float32 (a float32
copy of its input and a float32 output, which SiLU keeps), CPU autocast in the input's bf16. By default
(``--autocast cuda``) GroupNorm modules therefore run on a float32 copy of their input, as on a GPU;
``--autocast cpu`` leaves CPU autocast's policy alone.

What it is for: comparing settings (checkpointing, recomputed GroupNorm → SiLU, batch, channels) by the
tensors they keep, as eager PyTorch keeps them. It is an estimate: a GPU adds the caching allocator's slack,
cuDNN workspaces and the CUDA context (~0.5 GiB), and torch.compile plans memory on its own (it fuses
GroupNorm, SiLU and the cast, so it never keeps the float32 tensors). For the paper's U-Net with
checkpointing at batch 1 the CPU policy gave 10.6 GiB before decoder concatenations moved inside the
checkpointed blocks, where an H100 measured 10.5 GiB compiled; without checkpointing the H100 needed ~1.6×
the CPU-policy estimate (59 GiB at batch 2, eager).
"""

from __future__ import annotations

import argparse
import contextlib
from unittest import mock

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker
from torch.nn import functional as F

from ctdiff.model.unet import UNet3D

GIB = 2**30


def _group_norm_fp32(self: torch.nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """GroupNorm as CUDA autocast runs it: in float32, on a float32 copy of a lower-precision input."""
    with torch.autocast("cpu", enabled=False):
        return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps)


def estimate(args: argparse.Namespace, batch: int, checkpointing: bool, recompute_norm: bool) -> dict[str, float]:
    policy = (mock.patch.object(torch.nn.GroupNorm, "forward", _group_norm_fp32) if args.autocast == "cuda"
              else contextlib.nullcontext())
    with FakeTensorMode(), policy:
        model = UNet3D(channels=tuple(args.channels), res_blocks=args.res_blocks, attention=False,
                       groups=args.groups, grad_checkpointing=checkpointing,
                       recompute_norm=recompute_norm).train()
        n_params = sum(p.numel() for p in model.parameters())
        tracker = MemTracker()
        tracker.track_external(model)
        with tracker:
            x = torch.randn(batch, 1, *(args.size,) * 3)
            t = torch.zeros(batch, dtype=torch.long)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x, t)
            F.mse_loss(out.float(), x).backward()
        peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    kinds = {str(k).rsplit(".", 1)[-1]: v for k, v in peak.items()}
    activations = (kinds.get("ACT", 0) + kinds.get("TEMP", 0)) / GIB
    state = 5 * 4 * n_params / GIB
    return {"activations": activations, "state": state, "total": activations + state}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--channels", type=int, nargs="+", default=[64, 128, 256, 512])
    p.add_argument("--res-blocks", type=int, default=2)
    p.add_argument("--groups", type=int, default=32)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    p.add_argument("--autocast", choices=["cuda", "cpu"], default="cuda",
                   help="whose autocast precision policy for GroupNorm to follow (default: cuda)")
    args = p.parse_args()
    print(f"U-Net channels {args.channels}, {args.res_blocks} res blocks, {args.size}³, bf16 autocast "
          f"({args.autocast.upper()} policy), torch {torch.__version__} (estimate; see the docstring)")
    print(f"{'batch':>5}  {'checkpointing':<14}{'recompute_norm':<15}{'activations GiB':>16}{'state GiB':>11}"
          f"{'total GiB':>11}")
    for batch in args.batch:
        for checkpointing in (False, True):
            for recompute_norm in (False, True):
                r = estimate(args, batch, checkpointing, recompute_norm)
                print(f"{batch:>5}  {str(checkpointing):<14}{str(recompute_norm):<15}{r['activations']:>16.2f}"
                      f"{r['state']:>11.2f}{r['total']:>11.2f}")


if __name__ == "__main__":
    main()
