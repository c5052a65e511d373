"""Seconds per synthetic volume for every sampler (``ctdiff.diffusion.samplers.FAMILIES``, each with its
``typical_steps``: DDPM-1000, DDIM-50, DPM-Solver++(2M)-25 and the flow samplers Euler-30 and Heun-15), eager
and compiled, in one run.

    python benchmarks/sample.py                         # GPU: the paper's U-Net at 128³, bf16; CPU: a tiny one
    python benchmarks/sample.py --checkpoint results/models/wavelet-flow/train/model.pt --batch 8
    python benchmarks/sample.py --ddpm-steps 100        # time 100 DDPM steps and scale to the full chain
    python benchmarks/sample.py --wavelet-sizes 128 256 # also the wavelet representation at 128³ and 256³

Every row runs ``ctdiff.diffusion.sampling.sample`` on the network as ``ctdiff.sampling.generate`` wraps it
(``network(model, device, precision, compile)``), with one generator per batch element as in production,
after one untimed warm-up batch per mode (which pays for compiling). The network is randomly initialised
unless ``--checkpoint`` is given; speed does not depend on the weights, so every sampler runs on the same
network (the flow rows as if it were a flow model: float times t·T instead of integer timesteps). Printed:
network evaluations, seconds per batch and per volume, the ratio to DDPM-1000 eager (the paper's sampler)
and the projected wall time for 500 volumes on this device. Quality per sampler is not measured here: the
workflow's ``evaluate.compare_samplers`` reports FID and MS-SSIM per sampler on the same seeds.

``--wavelet-sizes`` adds rows for ``model.representation: wavelet`` at each size (the same channel widths, 8
input and output channels, the chain on ``[B, 8, S/2, S/2, S/2]`` with the wavelet x0 projection, and the
inverse transform of the result, as ``ctdiff.sampling.generate`` runs it), in eager mode, with the same ratio to the
voxel DDPM-1000 eager reference (of ``--size`` or the checkpoint's size) measured in the same run.

Each row is printed as soon as it is measured, so a run cut at a time budget (benchmarks/gpu.sh) keeps the
rows it finished; the reference, voxel DDPM eager, is the first row measured when eager mode is asked for.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from ctdiff.training.checkpoint import load_for_sampling
from ctdiff.diffusion.samplers import FAMILIES, family, network_evaluations
from ctdiff.diffusion.sampling import sample
from ctdiff.diffusion.schedule import make_schedule
from ctdiff.config import check_network_size
from ctdiff.sampling.generate import network, sample_generator
from ctdiff.model import representation
from ctdiff.model.unet import UNet3D
from ctdiff.options import PRECISIONS

# (sampler, steps) of each row: every family at the steps it is measured with (None = T).
SAMPLERS = tuple((f.name, f.typical_steps) for f in FAMILIES)


def main() -> None:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=None, help="a ctdiff checkpoint (default: a random paper-shaped U-Net)")
    p.add_argument("--size", type=int, default=128 if gpu else 16)
    p.add_argument("--channels", type=int, nargs="+", default=[64, 128, 256, 512] if gpu else [8, 16, 32])
    p.add_argument("--res-blocks", type=int, default=2 if gpu else 1)
    p.add_argument("--groups", type=int, default=32 if gpu else 4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--precision", choices=PRECISIONS, default="bf16" if gpu else "fp32")
    p.add_argument("--modes", nargs="+", choices=("eager", "compile"), default=["eager", "compile"])
    p.add_argument("--ddpm-steps", type=int, default=None,
                   help="time only this many DDPM steps and scale to all T (the cost per step is constant)")
    p.add_argument("--wavelet-sizes", type=int, nargs="*", default=[],
                   help="also time a random wavelet-representation U-Net (eager) for volumes of these sizes")
    p.add_argument("--wavelet-samplers", nargs="+", choices=[name for name, _ in SAMPLERS],
                   default=[name for name, _ in SAMPLERS],
                   help="the samplers of the wavelet rows (a network call costs the same in every sampler)")
    args = p.parse_args()
    for size in args.wavelet_sizes:
        try:
            check_network_size(size, tuple(args.channels), "wavelet", source="--wavelet-sizes")
        except ValueError as err:
            p.error(str(err))

    device = torch.device("cuda" if gpu else "cpu")
    if gpu:
        torch.backends.cudnn.benchmark = True
    if args.checkpoint:
        model, schedule, recorded = load_for_sampling(args.checkpoint, device)
        size, rep = recorded.data.size, recorded.model.representation
        described = f"checkpoint {args.checkpoint}"
    else:
        torch.manual_seed(0)
        model = UNet3D(channels=tuple(args.channels), res_blocks=args.res_blocks, attention=False,
                       groups=args.groups).to(device).eval()
        schedule = make_schedule(timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
        size, rep = args.size, "voxels"
        described = f"random U-Net channels {args.channels}, {args.res_blocks} res blocks"
    T = schedule.timesteps
    print(f"{described}, {size}³, batch {args.batch}, {args.precision}, torch {torch.__version__}, "
          f"{torch.cuda.get_device_name() if gpu else platform.processor() or 'CPU'}"
          f"{'' if gpu else f', {torch.get_num_threads()} threads'}")

    def run(forward, rep: str, size: int, sampler: str, steps: int | None, eta: float = 0.0) -> float:
        generators = [sample_generator(0, i) for i in range(args.batch)]
        if gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        # Every sampler runs on the same network; the flow rows as if it were a flow model (float times t·T).
        objective = family(sampler).objectives[0]
        x = sample(forward, schedule, representation.network_shape(rep, size), generators, sampler=sampler,
                   steps=steps, eta=eta, objective=objective, device=device, clip=representation.x0_clip(rep))
        representation.decode(x, rep).clamp(-1.0, 1.0)
        if gpu:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    # The reference row: DDPM on the voxel (or checkpoint) network in eager mode, measured first.
    reference, ref = f"{rep} {size}³", None

    def timed(label: str, mode: str, forward, rep: str, size: int, samplers=tuple(n for n, _ in SAMPLERS)) -> None:
        nonlocal ref
        t0 = time.perf_counter()
        run(forward, rep, size, "ddim", 2)  # warm-up: compile, cuDNN algorithm search
        warmup = time.perf_counter() - t0
        for sampler, steps in [(n, k) for n, k in SAMPLERS if n in samplers]:
            n = network_evaluations(sampler, steps, T)
            if sampler == "ddpm" and args.ddpm_steps:
                # DDIM with eta = 1 costs what a DDPM step costs: one network call and one noise draw.
                seconds = run(forward, rep, size, "ddim", args.ddpm_steps, eta=1.0) * T / args.ddpm_steps
                name = f"ddpm-{T} (scaled from {args.ddpm_steps})"
            else:
                seconds = run(forward, rep, size, sampler, steps)
                name = f"{sampler}-{steps or T}"
            if ref is None and mode == "eager" and sampler == "ddpm" and label == reference:
                ref = seconds
            per_volume = seconds / args.batch
            ratio = f"{ref / seconds:.1f}× faster" if ref else "-"
            print(f"{label:<15}{mode:<9}{name:<32}{n:>6}{seconds:>10.2f}{per_volume:>10.3f}{ratio:>15}"
                  f"{500 * per_volume / 60:>10.1f} min{warmup:>11.1f}", flush=True)

    print(f"{'volumes':<15}{'mode':<9}{'sampler':<32}{'NFE':>6}{'s/batch':>10}{'s/volume':>10}{'vs DDPM eager':>15}"
          f"{'500 volumes':>13}{'warm-up s':>11}", flush=True)
    for mode in args.modes:
        timed(reference, mode, network(model, device, args.precision, mode == "compile"), rep, size)
    for wsize in args.wavelet_sizes:
        torch.manual_seed(0)
        wmodel = UNet3D(channels=tuple(args.channels), res_blocks=args.res_blocks, attention=False,
                        in_channels=representation.channels("wavelet"), groups=args.groups).to(device).eval()
        timed(f"wavelet {wsize}³", "eager", network(wmodel, device, args.precision, False), "wavelet", wsize,
              args.wavelet_samplers)
        del wmodel

    print(f"vs DDPM eager: against {rep} {size}³ DDPM-{T} eager in this run (below 1: slower)")


if __name__ == "__main__":
    main()
