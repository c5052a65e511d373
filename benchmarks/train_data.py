"""Peak host memory and seconds per step of the training data path: the whole set in memory vs streamed.

    python benchmarks/train_data.py                            # 16 and 512 volumes of 64³, batch 8
    python benchmarks/train_data.py --volumes 16 128 512 --steps 100 --model-steps 0

Paths (each configuration in a fresh child process, so its peak resident set is its own):
- ``memory``: the whole-set loader training used before ``TrainingSet`` — every volume decoded into one
  ``[N, 1, S, S, S]`` tensor — and per step ``data[idx]``, ``idx`` from ``batch_indices(seed, step)``.
- ``stream``: ``ctdiff.training.trainset.TrainingSet`` built in an empty cache folder (every volume checked and
  written as an uncompressed ``.npy``), then per step the batch read by ``ctdiff.training.prefetch.Prefetcher``
  one step ahead.

Printed per configuration: setup seconds (for ``stream`` also a second construction on the filled folder,
as a resumed run pays it), seconds per step of batch loading alone (``--steps`` steps; the consumer does
nothing else, so for ``stream`` this is the background thread's read rate), the peak resident set after
setup and those steps (``ru_maxrss``; it includes the interpreter, torch and numpy, measured alone as
``baseline``), and, with ``--model-steps``, the median seconds per step with a tiny U-Net's forward, backward and Adam
step on each batch (average-pooled by ``--pool``, so that a CPU can afford it), with the seconds per step the
loop waited for data (what the prefetch did not hide).
Reads come from the page cache (the files were just written), as they do in a training run after the
first epoch on a host with memory to spare; on a cold disk the first epoch's reads cost more.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MIB = 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def write_volumes(folder: Path, n: int, size: int) -> list[Path]:
    """``n`` smooth random volumes in [0, 1] (a coarse grid upsampled, so gzip compresses them as it does CT)."""
    from scipy.ndimage import zoom

    from ctdiff.files import save_volume

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        coarse = rng.random((size // 8,) * 3, dtype=np.float32)
        volume = np.clip(zoom(coarse, 8, order=1), 0, 1).astype(np.float32)
        path = folder / f"V{i:04d}.nii.gz"
        save_volume(path, volume, np.eye(4))
        paths.append(path)
    return paths


def child(args: argparse.Namespace) -> None:
    """Measure one configuration in this process and print one JSON line."""
    import torch
    from torch.nn import functional as F

    from ctdiff.training.prefetch import Prefetcher
    from ctdiff.training.trainset import TrainingSet
    from ctdiff.model.unet import UNet3D
    from ctdiff.files import load_volume
    from ctdiff.training.step import batch_indices

    torch.set_num_threads(args.threads)
    files = sorted(Path(args.dir).glob("*.nii.gz"))[: args.n]
    size, batch = args.size, args.batch
    result = {"path": args.child, "volumes": args.n, "baseline_mib": peak_rss_mib()}

    t0 = time.perf_counter()
    if args.child == "memory":
        data = torch.stack([torch.from_numpy(load_volume(f)[0]) for f in files])[:, None].mul_(2).sub_(1)
        n = len(data)
    else:
        cache = Path(args.cache)
        ts = TrainingSet(files, size, cache)
        result["setup_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        ts = TrainingSet(files, size, cache)
        result["resume_s"] = time.perf_counter() - t1
        n = len(ts)
    result.setdefault("setup_s", time.perf_counter() - t0)

    def indices(step: int) -> np.ndarray:
        return batch_indices(n, batch, seed=0, step=step)

    def batches(steps: range):
        """``(step, batch)`` as each path yields it; closing it stops a prefetcher's thread."""
        if args.child == "memory":
            return ((step, data[indices(step)]) for step in steps)
        return Prefetcher(steps, lambda step: ts.read(indices(step)), device="cpu")

    t0 = time.perf_counter()
    checksum = 0.0
    with contextlib.closing(batches(range(args.steps))) as source:
        for _, x0 in source:
            checksum += float(x0[:, 0, 0, 0, 0].sum())  # touch the batch, as a training step would
    result["load_s_per_step"] = (time.perf_counter() - t0) / args.steps
    result["peak_mib"] = peak_rss_mib()

    if args.model_steps:
        torch.manual_seed(0)
        model = UNet3D(channels=(4, 8), res_blocks=1, attention=False, groups=2)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        t = torch.zeros(batch, dtype=torch.long)

        def step_once(x0: torch.Tensor) -> None:
            x = F.avg_pool3d(x0, args.pool)  # a step that costs what a CPU can afford, on every voxel read
            loss = F.mse_loss(model(x, t), x)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        with contextlib.closing(batches(range(args.steps, args.steps + 2))) as source:
            for _, x0 in source:  # warm-up: Adam's moments, the allocator
                step_once(x0)
        times = []
        with contextlib.closing(batches(range(10_000, 10_000 + args.model_steps))) as source:
            t0 = time.perf_counter()
            for _, x0 in source:
                step_once(x0)
                times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
        result["model_s_per_step"] = float(np.median(times))  # median: robust to other jobs on the host
        result["model_wait_s_per_step"] = getattr(source, "wait_s", 0.0) / args.model_steps
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", type=int, nargs="+", default=[16, 512])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100, help="steps of batch loading alone")
    parser.add_argument("--model-steps", type=int, default=12, help="steps with a tiny U-Net (0: none)")
    parser.add_argument("--pool", type=int, default=4, help="the U-Net runs on the batch average-pooled by this")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each child")
    parser.add_argument("--child", choices=("memory", "stream"), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    with tempfile.TemporaryDirectory(prefix="train_data_") as tmp:
        folder = Path(tmp) / "volumes"
        folder.mkdir()
        t0 = time.perf_counter()
        write_volumes(folder, max(args.volumes), args.size)
        print(f"wrote {max(args.volumes)} volumes of {args.size}³ in {time.perf_counter() - t0:.1f} s; "
              f"{platform.processor() or platform.machine()}, batch {args.batch}, {args.threads} torch thread(s)",
              flush=True)
        rows = []
        for n in args.volumes:
            for path in ("memory", "stream"):
                cmd = [sys.executable, __file__, "--child", path, "--n", str(n), "--dir", str(folder),
                       "--cache", str(Path(tmp) / f"cache{n}"), "--size", str(args.size), "--batch",
                       str(args.batch), "--steps", str(args.steps), "--model-steps", str(args.model_steps),
                       "--threads", str(args.threads), "--pool", str(args.pool)]
                out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)

    volume_mib = args.size**3 * 4 / MIB
    print(f"\n| path | volumes | data MiB | setup s | resume s | load s/step | peak RSS MiB | over baseline MiB"
          + (" | U-Net s/step | waited s/step |" if args.model_steps else " |"))
    print("|---|---|---|---|---|---|---|---|" + ("---|---|" if args.model_steps else ""))
    for r in rows:
        line = (f"| {r['path']} | {r['volumes']} | {r['volumes'] * volume_mib:.0f} | {r['setup_s']:.2f} | "
                f"{r['resume_s']:.2f} | " if "resume_s" in r else
                f"| {r['path']} | {r['volumes']} | {r['volumes'] * volume_mib:.0f} | {r['setup_s']:.2f} | – | ")
        line += f"{r['load_s_per_step'] * 1e3:.2f} ms | {r['peak_mib']:.0f} | {r['peak_mib'] - r['baseline_mib']:.0f} |"
        if args.model_steps:
            line += f" {r['model_s_per_step']:.3f} | {r['model_wait_s_per_step'] * 1e3:.2f} ms |"
        print(line)
    by = {(r["path"], r["volumes"]): r for r in rows}
    small, large = min(args.volumes), max(args.volumes)
    if small != large:
        for path in ("memory", "stream"):
            a, b = by[(path, small)], by[(path, large)]
            grow = (b["peak_mib"] - b["baseline_mib"]) / max(a["peak_mib"] - a["baseline_mib"], 1.0)
            print(f"{path}: peak RSS {large} vs {small} volumes: {b['peak_mib'] / a['peak_mib']:.2f}× "
                  f"(over baseline {grow:.1f}×); load s/step {b['load_s_per_step'] / a['load_s_per_step']:.2f}×")
        for n in args.volumes:
            m, s = by[("memory", n)], by[("stream", n)]
            print(f"{n} volumes: stream / memory peak RSS {s['peak_mib'] / m['peak_mib']:.2f}×, "
                  f"load s/step {s['load_s_per_step'] / m['load_s_per_step']:.2f}×"
                  + (f", U-Net s/step {s['model_s_per_step'] / m['model_s_per_step']:.2f}×" if args.model_steps
                     else ""))


if __name__ == "__main__":
    main()
