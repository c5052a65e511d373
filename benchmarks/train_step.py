"""Time one training step of ctdiff against a plain eager bf16 step of the same network, in one run.

    python benchmarks/train_step.py                      # GPU: the paper's U-Net at 128³; CPU: a tiny one
    python benchmarks/train_step.py --size 128 --channels 64 128 256 512 --res-blocks 2 --batch 2
    python benchmarks/train_step.py --variants reference ctdiff-compile --steps 20

Variants (each in a fresh child process, so peak memory is its own):
- ``reference``: the same U-Net, bf16 autocast, Adam, ε-MSE on noise drawn on the device; nothing else.
- ``ctdiff-*``: what ``ctdiff.train`` runs per step — batch indices and per-position noise from
  ``(seed, step, position)`` on the CPU, then :func:`ctdiff.train.train_step` under Accelerate (bf16
  autocast, gradient clipping, EMA update, fused Adam on CUDA) — with ``-eager``, ``-compile`` (torch.compile),
  ``-ckpt`` (gradient checkpointing), ``-rnorm`` (``train.recompute_norm``: GroupNorm → SiLU recomputed in
  the backward pass), ``-accumN`` (N micro-batches) and ``-bN`` (another batch size) as named.

After ``--warmup`` steps (which pay for compiling), ``--steps`` steps are timed (CUDA synchronised). Printed
per variant: seconds per step, its ratio to the reference, peak memory (CUDA: ``max_memory_allocated``;
CPU: the child's peak resident set, which includes the interpreter and libraries), and TFLOP/s, where the
FLOPs of one step (forward + backward, recomputation not counted) are counted by
``torch.utils.flop_counter`` on the meta device. The ``--batch`` given applies to every variant without ``-bN``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import subprocess
import sys
import time

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from ctdiff.config import DiffusionConfig
from ctdiff.diffusion.schedule import make_schedule, q_sample
from ctdiff.model.unet import UNet3D

DEFAULT_VARIANTS = ("reference", "ctdiff-eager", "ctdiff-eager-rnorm", "ctdiff-compile", "ctdiff-compile-ckpt",
                    "ctdiff-compile-ckpt-b1", "ctdiff-eager-ckpt-rnorm-b1")


def parse_variant(name: str, batch: int) -> dict:
    """``ctdiff-compile-ckpt-accum2-b1`` → its options; ``reference`` → the plain step."""
    parts = name.split("-")
    plain = {"compile": False, "ckpt": False, "rnorm": False, "accum": 1, "batch": batch}
    if parts[0] == "reference" and len(parts) == 1:
        return {"kind": "reference", **plain}
    if parts[0] != "ctdiff":
        raise SystemExit(f"unknown variant {name!r}: use reference or "
                         "ctdiff-[eager|compile][-ckpt][-rnorm][-accumN][-bN]")
    opts = {"kind": "ctdiff", **plain}
    for part in parts[1:]:
        if part in ("eager", "compile"):
            opts["compile"] = part == "compile"
        elif part == "ckpt":
            opts["ckpt"] = True
        elif part == "rnorm":
            opts["rnorm"] = True
        elif part.startswith("accum") and part[5:].isdigit():
            opts["accum"] = int(part[5:])
        elif part.startswith("b") and part[1:].isdigit():
            opts["batch"] = int(part[1:])
        else:
            raise SystemExit(f"unknown part {part!r} of variant {name!r}")
    return opts


def build(args: argparse.Namespace, ckpt: bool, rnorm: bool = False) -> UNet3D:
    torch.manual_seed(0)
    return UNet3D(channels=tuple(args.channels), res_blocks=args.res_blocks, attention=False, groups=args.groups,
                  grad_checkpointing=ckpt, recompute_norm=rnorm)


def step_flops(args: argparse.Namespace, batch: int) -> float:
    """FLOPs of one forward + backward at ``batch``, counted on the meta device (no memory, no compute)."""
    with torch.device("meta"):
        model = build(args, ckpt=False)
        x = torch.randn(batch, 1, *(args.size,) * 3)
        t = torch.zeros(batch, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        F.mse_loss(model(x, t), x).backward()
    return float(counter.get_total_flops())


def child(args: argparse.Namespace) -> dict:
    """Run one variant and return its measurements."""
    opts = parse_variant(args.child, args.batch)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    schedule = make_schedule(timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    shape = (1, *(args.size,) * 3)
    batch = opts["batch"]
    data = torch.rand(max(batch, 4), *shape, device=device).mul_(2).sub_(1)

    if opts["kind"] == "reference":
        model = build(args, ckpt=False).to(device).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)

        def one_step(step: int) -> None:
            x0 = data[:batch]
            t = torch.randint(0, 1000, (batch,), device=device)
            noise = torch.randn_like(x0)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = F.mse_loss(model(q_sample(schedule, x0, t, noise), t).float(), noise)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    else:
        from accelerate import Accelerator

        from ctdiff.train import batch_indices, draw_noise, train_step

        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        accelerator = Accelerator(mixed_precision="bf16", cpu=device.type == "cpu")
        net = build(args, ckpt=opts["ckpt"], rnorm=opts["rnorm"])
        ema = copy.deepcopy(net).requires_grad_(False).to(accelerator.device)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-5, fused=device.type == "cuda")
        model, optimizer = accelerator.prepare(net, optimizer)
        if opts["compile"]:
            model = torch.compile(model)

        def one_step(step: int) -> None:
            idx = batch_indices(len(data), batch, seed=0, step=step)
            x0 = data[idx]
            t, noise = draw_noise(0, step, range(batch), shape, DiffusionConfig(timesteps=schedule.timesteps))
            train_step(model, ema, optimizer, accelerator, schedule, x0, t.to(device), noise.to(device),
                       micro_batches=opts["accum"], grad_clip=1.0, ema_decay=0.9999)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    for step in range(args.warmup):
        one_step(step)
    sync()
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for step in range(args.warmup, args.warmup + args.steps):
        one_step(step)
    sync()
    seconds = (time.perf_counter() - t0) / args.steps
    if device.type == "cuda":
        peak_gib = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return {"variant": args.child, "batch": batch, "s_per_step": seconds, "warmup_s": warmup_s, "peak_gib": peak_gib,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    gpu = torch.cuda.is_available()
    p.add_argument("--size", type=int, default=128 if gpu else 16)
    p.add_argument("--channels", type=int, nargs="+", default=[64, 128, 256, 512] if gpu else [8, 16, 32])
    p.add_argument("--res-blocks", type=int, default=2 if gpu else 1)
    p.add_argument("--groups", type=int, default=32 if gpu else 4)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=10 if gpu else 5)
    p.add_argument("--warmup", type=int, default=3 if gpu else 2)
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    for name in args.variants:
        parse_variant(name, args.batch)  # fail before any run
    print(f"U-Net channels {args.channels}, {args.res_blocks} res blocks, {args.size}³, torch {torch.__version__}, "
          f"{'CUDA ' + torch.cuda.get_device_name() if gpu else 'CPU, ' + str(torch.get_num_threads()) + ' threads'}")
    flops = {}
    rows = []
    for name in args.variants:
        cmd = [sys.executable, __file__, "--child", name, "--size", str(args.size), "--channels",
               *map(str, args.channels), "--res-blocks", str(args.res_blocks), "--groups", str(args.groups),
               "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{name}: failed\n{proc.stderr[-2000:]}")
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        if row["batch"] not in flops:
            flops[row["batch"]] = step_flops(args, row["batch"])
        row["tflops"] = flops[row["batch"]] / row["s_per_step"] / 1e12
        rows.append(row)

    ref = next((r for r in rows if r["variant"] == "reference"), None)
    memory = "peak GiB (CUDA allocated)" if gpu else "peak GiB (process RSS)"
    print(f"{'variant':<28}{'batch':>6}{'s/step':>10}{'vs ref':>8}{memory:>28}{'TFLOP/s':>10}{'warm-up s':>11}")
    for r in rows:
        ratio = f"{r['s_per_step'] / ref['s_per_step']:.2f}×" if ref and r["batch"] == ref["batch"] else "-"
        print(f"{r['variant']:<28}{r['batch']:>6}{r['s_per_step']:>10.4f}{ratio:>8}{r['peak_gib']:>28.2f}"
              f"{r['tflops']:>10.3f}{r['warmup_s']:>11.1f}")
    for b, f in sorted(flops.items()):
        print(f"FLOPs per step at batch {b}: {f / 1e9:,.1f} G (forward + backward, recomputation not counted)")


if __name__ == "__main__":
    main()
