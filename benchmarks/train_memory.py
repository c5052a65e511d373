"""Estimate what one training process keeps on its GPU, without a GPU: ctdiff's step on fake tensors, tracked.

    python benchmarks/train_memory.py                       # paper U-Net, 128³, batch 1 and 2, four settings
    python benchmarks/train_memory.py --batch 2 --grad-accumulation 2 --settings ckpt+rnorm   # 8 GiB, one GPU
    python benchmarks/train_memory.py --batch 1 --processes 2 --settings ckpt+rnorm           # 8 GiB, two GPUs
    python benchmarks/train_memory.py --autocast cpu        # CPU autocast's precision policy instead of CUDA's
    python benchmarks/train_memory.py --representation wavelet --size 256 --batch 1   # 8 Haar sub-bands at 128³

No tensor holds data (``torch._subclasses.FakeTensorMode``), so the paper's network at 128³ is "run" in
seconds on any machine. ``torch.distributed._tools.mem_tracker.MemTracker`` records the live tensors, by
kind, at the peak of one steady-state step of :func:`ctdiff.training.step.train_step` itself (the bf16-autocast
forward and backward of each micro-batch, gradient clipping, the fused Adam step and the EMA update),
called as :func:`ctdiff.training.loop.train` calls it: Adam's moments already allocated, gradients set to None
between steps, this step's batch and the next one's prefetched copy on the device. Everything one process
keeps on the device is in the count, in these parts:

- state: the fp32 weights and their fp32 EMA copy, Adam's two fp32 moments (and its step counters), the
  gradients that exist at the peak (few in the first micro-batch's backward, all of them in a later one),
  and with ``--processes`` > 1 DistributedDataParallel's gradient buckets (one fp32 copy of the gradients:
  Accelerate leaves DDP's ``gradient_as_bucket_view`` off);
- activations: tensors saved for the backward pass and temporaries, bf16 casts of the weights included;
- data in flight: the step's batch (volumes, timesteps, noise; ``[b, 1, S, S, S]`` float32 twice, or
  ``[b, 8, S/2, S/2, S/2]`` with ``--representation wavelet``, the same bytes: the Haar transform runs on the
  host) and the next step's copy made by :class:`ctdiff.training.prefetch.Prefetcher`. The next copy is counted as if alive
  at the peak; the loop makes it after the step's last kernel is queued, so this errs by one batch at most.

The step runs under CPU autocast (fake tensors cannot be CUDA tensors in a CPU build of torch). The two
autocast policies differ where it matters here: CUDA autocast runs ``group_norm`` in float32 (a float32
copy of its input and a float32 output, which SiLU keeps), CPU autocast in the input's bf16. By default
(``--autocast cuda``) GroupNorm modules therefore run on a float32 copy of their input, as on a GPU;
``--autocast cpu`` leaves CPU autocast's policy alone.

What the count leaves out is the GPU's own: the CUDA context (the driver's state and the kernels loaded
into it, ~0.3 GiB bare since CUDA 11.7 loads kernels lazily, more once cuDNN's and cuBLAS's are in), the
caching allocator's slack (reserved but unallocated blocks) and cuDNN's workspaces. ``--allowance-gib``
(default 1.0) is added for them: 0.5 GiB of context and 0.5 GiB of workspace and slack. The one eager
measurement at hand bounds the second half: on an H100 the eager step at batch 2 without checkpointing
measured 59 GiB where this count gives 59.09 (benchmarks/README.md), so what that measurement held beyond
the tensors counted here was within its rounding, about 0.5 GiB. torch.compile plans memory on its own (it
fuses GroupNorm, SiLU and the cast and keeps no float32 copy), so compiled runs are not estimated here.
``benchmarks/gpu.sh`` measures the 8 GiB setting on a GPU, the context and the allocator's slack included.
"""

from __future__ import annotations

import argparse
import contextlib
from unittest import mock

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker
from torch.nn import functional as F

from ctdiff.config import TrainConfig, check_network_size
from ctdiff.diffusion.schedule import make_schedule
from ctdiff.model import representation
from ctdiff.model.unet import UNet3D
from ctdiff.options import REPRESENTATIONS
from ctdiff.training.step import train_step

GIB = 2**30
SETTINGS = {"plain": (False, False), "ckpt": (True, False), "rnorm": (False, True), "ckpt+rnorm": (True, True)}


def _group_norm_fp32(self: torch.nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """GroupNorm as CUDA autocast runs it: in float32, on a float32 copy of a lower-precision input."""
    with torch.autocast("cpu", enabled=False):
        return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps)


class _OneProcess:
    """What :func:`ctdiff.training.step.train_step` asks of its ``Accelerator`` (bf16 mixed precision), for one
    process on fake CPU tensors: bf16 autocast, a plain backward (bf16 needs no loss scaling), clipping."""

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16)

    def no_sync(self, model):
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm_(self, parameters, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)


class _EachCallTracked:
    """Call ``module`` with fresh per-module statistics each time: MemTracker refuses a second forward of the
    root module (a second micro-batch) otherwise. The whole step's peak is kept apart and survives."""

    def __init__(self, module: torch.nn.Module, tracker: MemTracker) -> None:
        self.module, self.tracker = module, tracker

    def __call__(self, *args):
        self.tracker.reset_mod_stats()
        return self.module(*args)

    def parameters(self):
        return self.module.parameters()


def _step_batch(batch: int, size: int, rep: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A step's batch on the device: volumes ``[b, C, S', S', S']`` in representation ``rep`` (``[b, 1, S, S, S]``
    for voxels), timesteps ``[b]``, noise like the volumes."""
    shape = (batch, *representation.network_shape(rep, size))
    return torch.randn(shape), torch.zeros(batch, dtype=torch.long), torch.randn(shape)


def batch_bytes(batch: int, size: int) -> int:
    """Bytes of one step's batch on the device: float32 volumes and noise, int64 timesteps."""
    return 2 * batch * size**3 * 4 + batch * 8


def estimate(args: argparse.Namespace, batch: int, micro_batches: int, checkpointing: bool,
             recompute_norm: bool) -> dict[str, float]:
    """GiB one process keeps on the device at the peak of a steady-state step, by part (see the docstring)."""
    policy = (mock.patch.object(torch.nn.GroupNorm, "forward", _group_norm_fp32) if args.autocast == "cuda"
              else contextlib.nullcontext())
    schedule = make_schedule(timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    with FakeTensorMode(), policy:
        def unet() -> UNet3D:
            return UNet3D(channels=tuple(args.channels), res_blocks=args.res_blocks, attention=False,
                          in_channels=representation.channels(args.representation), groups=args.groups,
                          grad_checkpointing=checkpointing, recompute_norm=recompute_norm)

        # The EMA copy is a second module built in the same fake mode (copy.deepcopy would make another one).
        model, ema = unet().train(), unet().requires_grad_(False)
        n_params = sum(p.numel() for p in model.parameters())
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-5, fused=True)
        for p in model.parameters():  # one step on zero gradients allocates Adam's moments
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tracker = MemTracker()
        tracker.track_external(model, optimizer, ema)
        with tracker:
            buckets = torch.empty(n_params) if args.processes > 1 else None  # DDP's fp32 gradient buckets
            x0, t, noise = _step_batch(batch, args.size, args.representation)  # this step's batch
            prefetched = _step_batch(batch, args.size, args.representation)  # the next step's copy
            train_step(_EachCallTracked(model, tracker), ema, optimizer, _OneProcess(), schedule, x0, t, noise,
                       micro_batches=micro_batches, grad_clip=1.0, ema_decay=TrainConfig.ema_decay)
            del buckets, prefetched
        peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    kinds = {str(k).rsplit(".", 1)[-1]: v / GIB for k, v in peak.items()}
    parts = {
        "weights_ema": kinds.get("PARAM", 0) + kinds.get("BUFFER", 0),
        "adam": kinds.get("OPT", 0),
        "grads": kinds.get("GRAD", 0),
        "ddp": n_params * 4 / GIB if args.processes > 1 else 0.0,
        "data": 2 * batch_bytes(batch, args.size) / GIB,
    }
    parts["activations"] = kinds["Total"] - sum(parts.values())
    parts["tracked"] = kinds["Total"]
    parts["device"] = kinds["Total"] + args.allowance_gib
    parts["params"] = n_params
    return parts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=128, help="preprocess.size: voxels per side of the volumes")
    p.add_argument("--representation", choices=REPRESENTATIONS, default="voxels",
                   help="model.representation: wavelet runs the U-Net on 8 Haar sub-bands at size/2")
    p.add_argument("--channels", type=int, nargs="+", default=[64, 128, 256, 512])
    p.add_argument("--res-blocks", type=int, default=2)
    p.add_argument("--groups", type=int, default=32)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 2],
                   help="volumes per process per step (train.batch_size / processes)")
    p.add_argument("--grad-accumulation", type=int, nargs="+", default=[1],
                   help="micro-batches per step (train.grad_accumulation); each must divide the batch")
    p.add_argument("--processes", type=int, default=1,
                   help="GPUs training together; above 1, DDP's gradient buckets are counted")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS),
                   help="ckpt = train.grad_checkpointing, rnorm = train.recompute_norm")
    p.add_argument("--autocast", choices=["cuda", "cpu"], default="cuda",
                   help="whose autocast precision policy for GroupNorm to follow (default: cuda)")
    p.add_argument("--allowance-gib", type=float, default=1.0,
                   help="added for the CUDA context, allocator slack and cuDNN workspaces (see the docstring)")
    args = p.parse_args()
    for batch in args.batch:
        for k in args.grad_accumulation:
            if k < 1 or batch % k:
                p.error(f"--grad-accumulation {k} does not divide --batch {batch} into equal micro-batches")
    if args.processes < 1:
        p.error("--processes must be at least 1")
    try:
        side = check_network_size(args.size, tuple(args.channels), args.representation, source="train_memory")
    except ValueError as err:
        p.error(str(err))

    what = (f"{args.size}³" if args.representation == "voxels"
            else f"{args.size}³ as 8 Haar sub-bands at {side}³ (model.representation: wavelet)")
    print(f"U-Net channels {args.channels}, {args.res_blocks} res blocks, {what}, bf16 autocast "
          f"({args.autocast.upper()} policy), {args.processes} process(es), torch {torch.__version__}; "
          f"GiB per process (estimate, see the docstring)")
    head = (f"{'batch':>5}{'micro':>6}  {'setting':<11}{'weights+EMA':>12}{'Adam':>6}{'grads':>6}{'DDP':>6}"
            f"{'activations':>12}{'data':>6}{'tracked':>8}{'+allow.':>8}")
    print(head)
    for batch in args.batch:
        for k in args.grad_accumulation:
            for name in args.settings:
                r = estimate(args, batch, k, *SETTINGS[name])
                print(f"{batch:>5}{k:>6}  {name:<11}{r['weights_ema']:>12.2f}{r['adam']:>6.2f}{r['grads']:>6.2f}"
                      f"{r['ddp']:>6.2f}{r['activations']:>12.2f}{r['data']:>6.2f}{r['tracked']:>8.2f}"
                      f"{r['device']:>8.2f}")
    print(f"parameters {r['params']:,}; micro = micro-batches per step; data = this step's batch and the "
          f"prefetched next one; +allow. = tracked + {args.allowance_gib:g} GiB for context, slack and workspaces")


if __name__ == "__main__":
    main()
