"""Estimate a training step's peak memory without a GPU: the U-Net under FakeTensorMode, tracked by MemTracker.

    python benchmarks/train_memory.py                # paper U-Net, 128³, batch 1 and 2, each memory setting
    python benchmarks/train_memory.py --size 128 --batch 1 --channels 32 64 128 256
    python benchmarks/train_memory.py --autocast cpu # CPU autocast's precision policy instead of CUDA's

No tensor holds data (``torch._subclasses.FakeTensorMode``), so the paper's network at 128³ is "run" in
seconds on any machine. ``torch.distributed._tools.mem_tracker.MemTracker`` records the peak bytes of live
tensors by kind during one whole training step as ``ctdiff.train.train_step`` runs it in steady state
(Adam's moments already allocated, gradients set to None between steps): the bf16-autocast forward and
backward, gradient clipping, the fused Adam step and the EMA update. The peak is split into state (fp32
weights and EMA copy; Adam's two moments; the gradients allocated by then) and activations (tensors saved
for the backward pass and temporaries).

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
checkpointed blocks, where an H100 measured 10.5 GiB compiled; without checkpointing the H100 measured
59 GiB at batch 2 in eager bf16, which the CUDA policy reproduces.
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
    """Peak GiB of one steady-state training step, by kind: ``state``, ``activations`` and ``total``."""
    policy = (mock.patch.object(torch.nn.GroupNorm, "forward", _group_norm_fp32) if args.autocast == "cuda"
              else contextlib.nullcontext())
    with FakeTensorMode(), policy:
        def unet() -> UNet3D:
            return UNet3D(channels=tuple(args.channels), res_blocks=args.res_blocks, attention=False,
                          groups=args.groups, grad_checkpointing=checkpointing, recompute_norm=recompute_norm)

        model, ema = unet().train(), unet().requires_grad_(False)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-5, fused=True)
        for p in model.parameters():  # one step on zero gradients allocates Adam's moments
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tracker = MemTracker()
        tracker.track_external(model, optimizer, ema)
        with tracker:
            x = torch.randn(batch, 1, *(args.size,) * 3)
            t = torch.zeros(batch, dtype=torch.long)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x, t)
            F.mse_loss(out.float(), x).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1e-4)
        peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    kinds = {str(k).rsplit(".", 1)[-1]: v / GIB for k, v in peak.items()}
    state = kinds.get("PARAM", 0) + kinds.get("OPT", 0) + kinds.get("GRAD", 0) + kinds.get("BUFFER", 0)
    return {"activations": kinds["Total"] - state, "state": state, "total": kinds["Total"]}


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
    print(f"{'batch':>5}  {'checkpointing':<14}{'recompute_norm':<15}{'state GiB':>11}{'activations GiB':>16}"
          f"{'peak GiB':>10}")
    for batch in args.batch:
        for checkpointing in (False, True):
            for recompute_norm in (False, True):
                r = estimate(args, batch, checkpointing, recompute_norm)
                print(f"{batch:>5}  {str(checkpointing):<14}{str(recompute_norm):<15}{r['state']:>11.2f}"
                      f"{r['activations']:>16.2f}{r['total']:>10.2f}")


if __name__ == "__main__":
    main()
