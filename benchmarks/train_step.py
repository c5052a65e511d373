"""Time one training step of ctdiff against a plain eager bf16 step of the same network, in one run.

    python benchmarks/train_step.py                      # GPU: the paper's U-Net at 128³; CPU: a tiny one
    python benchmarks/train_step.py --size 128 --channels 64 128 256 512 --res-blocks 2 --batch 2
    python benchmarks/train_step.py --variants reference ctdiff-compile --steps 20
    python benchmarks/train_step.py --variants reference ctdiff-eager ctdiff-eager-wavelet ctdiff-eager-wavelet-s256-b1

Variants (each in a fresh child process, so peak memory is its own):
- ``reference``: the same U-Net, bf16 autocast, Adam, ε-MSE on noise drawn on the device; nothing else.
- ``ctdiff-*``: what ``ctdiff.training.loop`` runs per step — batch indices and per-position noise from
  ``(seed, step, position)`` on the CPU, then :func:`ctdiff.training.step.train_step` under Accelerate (bf16
  autocast, gradient clipping, EMA update, fused Adam on CUDA) — with ``-eager``, ``-compile`` (torch.compile),
  ``-ckpt`` (gradient checkpointing), ``-rnorm`` (``train.recompute_norm``: GroupNorm → SiLU recomputed in
  the backward pass), ``-accumN`` (N micro-batches), ``-bN`` (another batch size), ``-wavelet``
  (``model.representation: wavelet``: the U-Net has 8 input and output channels and runs on the Haar sub-bands at
  half the size per axis) and ``-sN`` (volumes of N³ instead of ``--size``) as named. The wavelet variants'
  volumes are transformed once before timing: ctdiff transforms each batch on the host, in the prefetching
  thread, so the transform is not on the step's path. ``reference`` takes ``-bN`` and ``-sN`` too.

After ``--warmup`` steps (which pay for compiling), ``--steps`` steps are timed (CUDA synchronised). Printed
per variant: seconds per step, its ratio to the reference, peak memory (CUDA: ``max_memory_allocated``;
CPU: the child's peak resident set, which includes the interpreter and libraries), and TFLOP/s, where the
FLOPs of one step (forward + backward, recomputation not counted) are counted by
``torch.utils.flop_counter`` on the meta device. The ``--batch`` given applies to every variant without ``-bN``.
A variant's ratio is to the reference at the same batch; with ``vs ref/vol`` (time per volume) also across
batch sizes.
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

from ctdiff.config import DiffusionConfig, TrainConfig, check_network_size
from ctdiff.diffusion.schedule import make_schedule, q_sample
from ctdiff.model import representation
from ctdiff.model.unet import UNet3D

DEFAULT_VARIANTS = ("reference", "ctdiff-eager", "ctdiff-eager-rnorm", "ctdiff-compile", "ctdiff-compile-ckpt",
                    "ctdiff-compile-ckpt-b1", "ctdiff-eager-ckpt-rnorm-b1")


def parse_variant(name: str, batch: int, size: int) -> dict:
    """``ctdiff-compile-ckpt-accum2-b1`` → its options; ``reference`` → the plain step."""
    parts = name.split("-")
    plain = {"compile": False, "ckpt": False, "rnorm": False, "accum": 1, "batch": batch, "size": size,
             "rep": "voxels"}
    if parts[0] not in ("reference", "ctdiff"):
        raise SystemExit(f"unknown variant {name!r}: use reference[-bN][-sN] or "
                         "ctdiff-[eager|compile][-ckpt][-rnorm][-accumN][-wavelet][-bN][-sN]")
    opts = {"kind": parts[0], **plain}
    for part in parts[1:]:
        if part.startswith("b") and part[1:].isdigit():
            opts["batch"] = int(part[1:])
        elif part.startswith("s") and part[1:].isdigit():
            opts["size"] = int(part[1:])
        elif opts["kind"] == "reference":
            raise SystemExit(f"unknown part {part!r} of variant {name!r} (the reference takes -bN and -sN)")
        elif part in ("eager", "compile"):
            opts["compile"] = part == "compile"
        elif part == "ckpt":
            opts["ckpt"] = True
        elif part == "rnorm":
            opts["rnorm"] = True
        elif part.startswith("accum") and part[5:].isdigit():
            opts["accum"] = int(part[5:])
        elif part == "wavelet":
            opts["rep"] = "wavelet"
        else:
            raise SystemExit(f"unknown part {part!r} of variant {name!r}")
    return opts


def build(args: argparse.Namespace, ckpt: bool, rnorm: bool = False, rep: str = "voxels") -> UNet3D:
    torch.manual_seed(0)
    return UNet3D(channels=tuple(args.channels), res_blocks=args.res_blocks, attention=False, groups=args.groups,
                  in_channels=representation.channels(rep), grad_checkpointing=ckpt, recompute_norm=rnorm)


def step_flops(args: argparse.Namespace, batch: int, size: int, rep: str) -> float:
    """FLOPs of one forward + backward at ``batch``, counted on the meta device (no memory, no compute)."""
    with torch.device("meta"):
        model = build(args, ckpt=False, rep=rep)
        x = torch.randn(batch, *representation.network_shape(rep, size))
        t = torch.zeros(batch, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        F.mse_loss(model(x, t), x).backward()
    return float(counter.get_total_flops())


def child(args: argparse.Namespace) -> dict:
    """Run one variant and return its measurements."""
    opts = parse_variant(args.child, args.batch, args.size)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    schedule = make_schedule(timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    rep, batch = opts["rep"], opts["batch"]
    shape = representation.network_shape(rep, opts["size"])
    volumes = torch.rand(max(batch, 4), 1, *(opts["size"],) * 3, device=device).mul_(2).sub_(1)
    data = representation.encode(volumes, rep)  # ctdiff does this on the host, off the step's path
    del volumes

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

        from ctdiff.training.step import batch_indices, draw_noise, train_step

        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        accelerator = Accelerator(mixed_precision="bf16", cpu=device.type == "cpu")
        net = build(args, ckpt=opts["ckpt"], rnorm=opts["rnorm"], rep=rep)
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
                       micro_batches=opts["accum"], grad_clip=1.0, ema_decay=TrainConfig.ema_decay)

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
    return {"variant": args.child, "batch": batch, "size": opts["size"], "representation": rep,
            "s_per_step": seconds, "warmup_s": warmup_s, "peak_gib": peak_gib,
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
        opts = parse_variant(name, args.batch, args.size)  # fail before any run
        try:
            check_network_size(opts["size"], tuple(args.channels), opts["rep"], source=f"variant {name}")
        except ValueError as err:
            raise SystemExit(str(err)) from None
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
        key = (row["batch"], row["size"], row["representation"])
        if key not in flops:
            flops[key] = step_flops(args, *key)
        row["tflops"] = flops[key] / row["s_per_step"] / 1e12
        rows.append(row)

    refs = [r for r in rows if r["variant"].split("-")[0] == "reference"]
    ref = refs[0] if refs else None
    memory = "peak GiB (CUDA allocated)" if gpu else "peak GiB (process RSS)"
    print(f"reference: {ref['variant']} ({ref['size']}³ voxels, batch {ref['batch']})" if ref else "no reference")
    print(f"{'variant':<34}{'size':>5}{'repr':>8}{'batch':>6}{'s/step':>10}{'vs ref':>8}{'vs ref/vol':>11}{memory:>28}"
          f"{'TFLOP/s':>10}{'warm-up s':>11}")
    for r in rows:
        same = next((q for q in refs if q["batch"] == r["batch"]), None)
        ratio = f"{r['s_per_step'] / same['s_per_step']:.2f}×" if same else "-"
        per_volume = f"{(r['s_per_step'] / r['batch']) / (ref['s_per_step'] / ref['batch']):.2f}×" if ref else "-"
        print(f"{r['variant']:<34}{r['size']:>5}{r['representation']:>8}{r['batch']:>6}{r['s_per_step']:>10.4f}"
              f"{ratio:>8}{per_volume:>11}{r['peak_gib']:>28.2f}{r['tflops']:>10.3f}{r['warmup_s']:>11.1f}")
    for (b, size, rep), f in sorted(flops.items()):
        print(f"FLOPs per step at batch {b}, {size}³ {rep}: {f / 1e9:,.1f} G (forward + backward, recomputation not "
              "counted)")


if __name__ == "__main__":
    main()
