"""Time the evaluate stage on N real vs N synthetic random volumes, stage by stage.

    python benchmarks/evaluate.py                       # 16 vs 16 at 32³, Med3D ResNet-10, B = 200
    python benchmarks/evaluate.py --n 64 --size 64 --depth 50

Stages are timed by calling the functions ``ctdiff.metrics.evaluate.evaluate`` is built from, on the same
arrays, then ``evaluate`` itself end to end (reading NIfTI files included). Each optimised stage is set against
a reference measured in the same run:
- pairing: blockwise float64 ``nearest_l2`` vs brute force (all N·N voxel differences at once; skipped when
  that would need more than --brute-mib);
- bootstrap FID: per replicate, the sample-space form (one [N, N] SVD) vs the covariance form (two [C, C]
  eigendecompositions), the reference timed on --reference-reps replicates.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ctdiff.io import save_volume
from ctdiff.metrics.bootstrap import fid_ci, mean_ci
from ctdiff.metrics.evaluate import evaluate, real_floor
from ctdiff.metrics.fid import fid_from_features, frechet_distance
from ctdiff.metrics.med3d import extract_features, load_med3d
from ctdiff.metrics.memorisation import nearest_over_chunks
from ctdiff.metrics.msssim import diversity_msssim, nearest_l2, paired_msssim


def _timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def _brute_nearest(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    d2 = ((query[:, None].astype(np.float64) - reference[None].astype(np.float64)) ** 2).reshape(
        len(query), len(reference), -1).sum(-1)
    return d2.argmin(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=16, help="real volumes, synthetic volumes and training volumes each")
    p.add_argument("--size", type=int, default=32, help="volume side (voxels)")
    p.add_argument("--depth", type=int, default=10, help="Med3D ResNet depth (seeded random weights)")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap replicates")
    p.add_argument("--reference-reps", type=int, default=5, help="covariance-form FID replicates timed")
    p.add_argument("--brute-mib", type=int, default=2048, help="memory cap of the brute-force pairing")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(args.seed)
    shape = (args.n, args.size, args.size, args.size)
    real, syn, train = (rng.random(shape, dtype=np.float32) for _ in range(3))
    rows: list[tuple[str, float, str]] = []

    model, _ = load_med3d(args.depth, None, seed=args.seed)
    (feats_r, t_r) = _timed(extract_features, model, iter(real))
    (feats_s, t_s) = _timed(extract_features, model, iter(syn))
    rows.append(("features (Med3D, both sets)", t_r + t_s, f"{(t_r + t_s) / (2 * args.n) * 1e3:.1f} ms/volume"))

    _, t_fid = _timed(fid_from_features, feats_r, feats_s)
    rows.append(("FID point estimate", t_fid, f"C = {feats_r.shape[1]}"))

    (_, t_block) = _timed(nearest_l2, syn, real)
    brute_mib = args.n * args.n * args.size**3 * 8 * 2 / 2**20
    if brute_mib <= args.brute_mib:
        idx_brute, t_brute = _timed(_brute_nearest, syn, real)
        assert (idx_brute == nearest_l2(syn, real)[0]).all()
        rows.append(("pairing, blockwise nearest_l2", t_block, f"brute force {t_brute:.3f} s "
                     f"(brute / blockwise = {t_brute / t_block:.2f}; peak ~{brute_mib:.0f} MiB vs <= 64 MiB)"))
    else:
        rows.append(("pairing, blockwise nearest_l2", t_block, f"brute force skipped (~{brute_mib:.0f} MiB)"))

    paired, t_pair = _timed(paired_msssim, syn, real)
    rows.append(("MS-SSIM nearest-real (incl. pairing)", t_pair, f"{t_pair / args.n * 1e3:.1f} ms/pair"))
    n_div = min(1000, args.n * (args.n - 1) // 2)
    _, t_div = _timed(diversity_msssim, syn, n_pairs=n_div, seed=0)
    rows.append(("MS-SSIM diversity", t_div, f"{n_div} pairs"))

    _, t_boot_fid = _timed(fid_ci, feats_r, feats_s, 0.0, n_boot=args.n_boot, seed=0)
    per_rep = t_boot_fid / args.n_boot
    ref_rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(args.reference_reps):
        a = feats_r[ref_rng.integers(0, args.n, args.n)]
        b = feats_s[ref_rng.integers(0, args.n, args.n)]
        frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    per_ref = (time.perf_counter() - t0) / args.reference_reps
    rows.append((f"bootstrap FID, B = {args.n_boot}", t_boot_fid,
                 f"{per_rep * 1e3:.2f} ms/replicate; covariance form {per_ref * 1e3:.1f} ms/replicate "
                 f"(covariance / sample-space = {per_ref / per_rep:.0f})"))
    _, t_boot_ms = _timed(mean_ci, np.asarray(paired["values"]), n_boot=args.n_boot, seed=0)
    rows.append((f"bootstrap MS-SSIM mean, B = {args.n_boot}", t_boot_ms, ""))
    _, t_floor = _timed(real_floor, real, feats_r, [str(i) for i in range(args.n)], seed=0, window=7)
    rows.append(("real-vs-real floor", t_floor, f"{args.n // 2} vs {args.n - args.n // 2}"))
    _, t_mem = _timed(nearest_over_chunks, [syn, real], (train[i : i + 64] for i in range(0, args.n, 64)))
    rows.append(("memorisation distances", t_mem, f"{2 * args.n} queries vs {args.n} training volumes"))

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = {}
        for name, vols in (("real", real), ("syn", syn), ("train", train)):
            paths[name] = [folder / name / f"{i:04d}.nii.gz" for i in range(args.n)]
            for path, v in zip(paths[name], vols):
                save_volume(path, v, np.eye(4))
        _, t_total = _timed(evaluate, paths["real"], paths["syn"], folder / "metrics.json", train=paths["train"],
                            med3d_weights=None, med3d_depth=args.depth, normalise="none", msssim_window=7,
                            seed=args.seed, n_boot=args.n_boot)
    rows.append(("evaluate() end to end (reads NIfTI)", t_total, ""))

    print(f"{args.n} vs {args.n} volumes (+ {args.n} training) at {args.size}^3, Med3D ResNet-{args.depth} "
          f"(random weights), B = {args.n_boot}, {args.threads} threads, torch {torch.__version__}, "
          f"{platform.machine()}, {platform.processor() or platform.platform()}")
    width = max(len(r[0]) for r in rows)
    for name, seconds, note in rows:
        print(f"{name:<{width}}  {seconds:9.3f} s  {note}")


if __name__ == "__main__":
    main()
