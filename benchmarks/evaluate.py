"""Time the evaluate stage on N real vs N synthetic phantom chests, stage by stage.

    python benchmarks/evaluate.py                       # 16 vs 16 at 32³, Med3D ResNet-10, B = 200
    python benchmarks/evaluate.py --n 32 --size 48 --depth 50
    python benchmarks/evaluate.py --n 16 --size 128 --depth 50 --device cuda

Volumes: the phantom cohort's chests (``ctdiff.phantom.scan.phantom_volume``, white noise included), each
with its own seed and body scale, over a 384 mm field (3 mm voxels at 128³, as ``config/config.yaml``), in
[0, 1] through the [-1000, 400] HU window, RAS+ as preprocessing writes them.
Med3D features and MS-SSIM run on ``--device`` (the GPU when there is one, as in the workflow's evaluate
rule); pairing, FID and the bootstraps run on the CPU.
Stages are timed by calling the functions ``ctdiff.metrics.evaluate.evaluate`` is built from, on the same
arrays, then ``evaluate`` itself end to end (writing and reading NIfTI files included). After a warm-up, all
stages run once per round for --rounds rounds and each stage's fastest round is reported: rounds spread the
repeats over time, so a burst of other load on the machine spoils one round, not every repeat of a stage.
Each optimised stage is set against a reference measured in the same round:
- pairing: blockwise float64 ``nearest_l2`` vs brute force (all N·N voxel differences at once; skipped when
  that would need more than --brute-mib);
- feature memorisation: the training volumes' Med3D features and the feature-space audit on them, the stage
  ``ctdiff.metrics.feature_memorisation`` adds, against reading every NIfTI file evaluate() reads;
- anatomy: ``volume_anatomy`` of every real and synthetic volume on 1 and on --threads processes
  (``ctdiff.metrics.anatomy_compare.anatomy_rows``, the same numbers either way; checked), and the
  distributions with their intervals and floor (``compare_anatomy``), against reading every NIfTI file;
- bootstrap FID: per replicate, the sample-space form (one [N, N] SVD) vs the covariance form (two [C, C]
  eigendecompositions), the reference timed on --reference-reps replicates.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from dataclasses import replace
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ctdiff.config import EvaluateConfig
from ctdiff.phantom.scan import phantom_volume
from ctdiff.files import load_volume, save_volume
from ctdiff.machine import cpu_name
from ctdiff.metrics.anatomy_compare import VOXELS_PER_WORKER, anatomy_rows, compare_anatomy
from ctdiff.metrics.bootstrap import fid_ci, mean_ci
from ctdiff.metrics.evaluate import evaluate, real_floor
from ctdiff.metrics.feature_memorisation import feature_audit
from ctdiff.metrics.fid import fid_from_features, frechet_distance
from ctdiff.metrics.kid import kid_ci, kid_from_features
from ctdiff.metrics.med3d import extract_features, load_med3d
from ctdiff.metrics.msssim import diversity_msssim, paired_msssim
from ctdiff.metrics.nearest import nearest_l2, nearest_over_chunks


HU_WINDOW = (-1000.0, 400.0)
FIELD_MM = 384.0


def _phantoms(n: int, size: int, seed: int) -> np.ndarray:
    """[n, size, size, size] phantom chests in [0, 1], RAS+ (x toward the Right), ``FIELD_MM`` across."""
    spacing = FIELD_MM / size
    out = np.empty((n, size, size, size), np.float32)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        hu = phantom_volume(rng, (size,) * 3, (spacing,) * 3, body_scale=rng.uniform(0.85, 1.15))  # [Z, Y, X] LPS
        out[i] = np.clip((hu.transpose(2, 1, 0)[::-1, ::-1, :] - HU_WINDOW[0]) / (HU_WINDOW[1] - HU_WINDOW[0]), 0, 1)
    return out


def _brute_nearest(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    d2 = ((query[:, None].astype(np.float64) - reference[None].astype(np.float64)) ** 2).reshape(
        len(query), len(reference), -1).sum(-1)
    return d2.argmin(1)


def _covariance_form_replicates(a: np.ndarray, b: np.ndarray, reps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(reps):
        x, y = a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))]
        frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=16, help="real, synthetic and training volumes, each")
    p.add_argument("--size", type=int, default=32, help="volume side (voxels)")
    p.add_argument("--depth", type=int, default=10, help="Med3D ResNet depth (seeded random weights)")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap replicates")
    p.add_argument("--reference-reps", type=int, default=3, help="covariance-form FID replicates timed")
    p.add_argument("--brute-mib", type=int, default=2048, help="memory cap of the brute-force pairing")
    p.add_argument("--rounds", type=int, default=3, help="rounds over all stages; the fastest is reported")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where features and MS-SSIM run (default: cuda when there is one, as in the workflow)")
    args = p.parse_args()
    dev = args.device
    torch.set_num_threads(args.threads)

    real, syn, train = (_phantoms(args.n, args.size, args.seed + k) for k in (0, 1000, 2000))
    affine = np.diag([FIELD_MM / args.size] * 3 + [1.0])
    affines = [affine] * (2 * args.n)
    serial = anatomy_rows([*real, *syn], affines, HU_WINDOW)  # warm-up, and the reference for the pool
    pooled = anatomy_rows([*real, *syn], affines, HU_WINDOW, workers=args.threads)
    assert all(a[0] == b[0] and (a[1] == b[1]).all() for a, b in zip(serial, pooled)), "workers changed the anatomy"
    rows_r, rows_s = [r for r, _ in serial[:args.n]], [r for r, _ in serial[args.n:]]
    hist_r, hist_s = np.stack([h for _, h in serial[:args.n]]), np.stack([h for _, h in serial[args.n:]])
    lungs = sum(r["n_lungs"] == 2 for r, _ in serial)
    model, _ = load_med3d(args.depth, None, seed=args.seed)
    feats_r, feats_s = extract_features(model, real, device=dev), extract_features(model, syn, device=dev)  # warm-up
    values = np.asarray(paired_msssim(syn, real, device=dev)["values"])
    assert (_brute_nearest(syn[:4], real[:4]) == nearest_l2(syn[:4], real[:4])[0]).all()
    brute_mib = args.n * args.n * args.size**3 * 8 * 2 / 2**20
    n_div = min(1000, args.n * (args.n - 1) // 2)
    settings = EvaluateConfig(med3d_depth=args.depth, seed=args.seed, bootstrap=args.n_boot)
    # KID subsets must fit the sets: the default size, or all N volumes where N is smaller
    kid_settings = {"subset_size": min(settings.kid_subset_size, args.n), "subsets": settings.kid_subsets}
    settings = replace(settings, kid_subset_size=kid_settings["subset_size"])

    tmp = tempfile.TemporaryDirectory()
    folder, paths = Path(tmp.name), {}
    for name, vols in (("real", real), ("syn", syn), ("train", train)):
        paths[name] = [folder / name / f"{i:04d}.nii.gz" for i in range(args.n)]
        for path, v in zip(paths[name], vols):
            save_volume(path, v, affine)

    names = [f"{i:04d}.nii.gz" for i in range(args.n)]
    stages: dict[str, Callable[[], object]] = {
        "features": lambda: (extract_features(model, real, device=dev), extract_features(model, syn, device=dev)),
        "fid": lambda: fid_from_features(feats_r, feats_s),
        "pairing": lambda: nearest_l2(syn, real),
        "pairing_brute": (lambda: _brute_nearest(syn, real)) if brute_mib <= args.brute_mib else None,
        "msssim_paired": lambda: paired_msssim(syn, real, device=dev),
        "msssim_diversity": lambda: diversity_msssim(syn, n_pairs=n_div, seed=0, device=dev),
        "bootstrap_fid": lambda: fid_ci(feats_r, feats_s, 0.0, n_boot=args.n_boot, seed=0),
        "bootstrap_fid_covariance": lambda: _covariance_form_replicates(feats_r, feats_s, args.reference_reps, 0),
        "bootstrap_msssim": lambda: mean_ci(values, n_boot=args.n_boot, seed=0),
        "kid": lambda: kid_from_features(feats_r, feats_s, **kid_settings, seed=0),
        "bootstrap_kid": lambda: kid_ci(feats_r, feats_s, 0.0, **kid_settings, n_boot=args.n_boot, seed=0),
        "anatomy": lambda: anatomy_rows([*real, *syn], affines, HU_WINDOW),
        "anatomy_pool": (lambda: anatomy_rows([*real, *syn], affines, HU_WINDOW, workers=args.threads))
        if args.threads > 1 else None,
        "anatomy_compare": lambda: compare_anatomy(rows_r, hist_r, rows_s, hist_s, hu_window=HU_WINDOW, seed=0,
                                                   n_boot=args.n_boot, level=0.95),
        "floor": lambda: real_floor(real, feats_r, [str(i) for i in range(args.n)], seed=0, window=7, device=dev),
        "memorisation": lambda: nearest_over_chunks([syn, real], [train[i : i + 64] for i in range(0, args.n, 64)]),
        # reading every file evaluate() reads, and the feature-space memorisation audit: the training volumes'
        # Med3D features (the test and synthetic features are FID's) and the search and rule on them
        "read_files": lambda: [load_volume(path) for name in ("real", "syn", "train") for path in paths[name]],
        "feature_memorisation": lambda: feature_audit(
            names, feats_s, names, feats_r, names, extract_features(model, train, device=dev), network={}),
        "evaluate": lambda: evaluate(paths["real"], paths["syn"], folder / "metrics.json", settings,
                                     train=paths["train"], device=dev, workers=args.threads),
    }
    best = {name: float("inf") for name, fn in stages.items() if fn is not None}
    for _ in range(args.rounds):
        for name in best:
            t0 = time.perf_counter()
            stages[name]()
            best[name] = min(best[name], time.perf_counter() - t0)
    tmp.cleanup()

    per_rep, per_ref = best["bootstrap_fid"] / args.n_boot, best["bootstrap_fid_covariance"] / args.reference_reps
    brute = (f"brute force {best['pairing_brute']:.3f} s (brute / blockwise = "
             f"{best['pairing_brute'] / best['pairing']:.1f}; peak ~{brute_mib:.0f} MiB vs <= 64 MiB)"
             if "pairing_brute" in best else f"brute force skipped (~{brute_mib:.0f} MiB)")
    rows = [
        ("features (Med3D, both sets)", best["features"], f"{best['features'] / (2 * args.n) * 1e3:.1f} ms/volume"),
        ("FID point estimate", best["fid"], f"C = {feats_r.shape[1]}"),
        ("pairing, blockwise nearest_l2", best["pairing"], brute),
        ("MS-SSIM nearest-real (incl. pairing)", best["msssim_paired"],
         f"{best['msssim_paired'] / args.n * 1e3:.1f} ms/pair"),
        ("MS-SSIM diversity", best["msssim_diversity"], f"{n_div} pairs"),
        (f"bootstrap FID, B = {args.n_boot}", best["bootstrap_fid"],
         f"{per_rep * 1e3:.2f} ms/replicate; covariance form {per_ref * 1e3:.1f} ms/replicate "
         f"(covariance / sample-space = {per_ref / per_rep:.0f})"),
        (f"bootstrap MS-SSIM mean, B = {args.n_boot}", best["bootstrap_msssim"], ""),
        ("KID point estimate", best["kid"], f"{kid_settings['subsets']} subsets of {kid_settings['subset_size']}"),
        (f"bootstrap KID, B = {args.n_boot}", best["bootstrap_kid"],
         f"{best['bootstrap_kid'] / args.n_boot * 1e3:.2f} ms/replicate"),
        ("real-vs-real floor", best["floor"], f"{args.n // 2} vs {args.n - args.n // 2}"),
        ("memorisation distances", best["memorisation"], f"{2 * args.n} queries vs {args.n} training volumes"),
        ("evaluate() end to end (reads NIfTI)", best["evaluate"], ""),
        ("reading the NIfTI files", best["read_files"], f"{3 * args.n} files"),
        ("feature memorisation (train features + audit)", best["feature_memorisation"],
         f"{best['feature_memorisation'] / best['read_files']:.2f} x reading the files; "
         f"{best['feature_memorisation'] / best['evaluate']:.2f} x evaluate()"),
    ]
    read_rs = best["read_files"] * 2 / 3  # the real and synthetic files, which the anatomy measures
    pool = best.get("anatomy_pool", best["anatomy"])
    workers = max(1, min(args.threads, 2 * args.n, 2 * args.n * args.size ** 3 // VOXELS_PER_WORKER))  # as anatomy_rows
    rows += [
        ("anatomy per volume, 1 process", best["anatomy"],
         f"{best['anatomy'] / (2 * args.n) * 1e3:.1f} ms/volume; {best['anatomy'] / read_rs:.2f} x reading those "
         f"{2 * args.n} files; {lungs} of {2 * args.n} with two lungs"),
        (f"anatomy per volume, --threads {args.threads} ({workers} process{'es' if workers > 1 else ''})", pool,
         f"{pool / read_rs:.2f} x reading them; {best['anatomy'] / pool:.2f} x faster than 1 process"),
        (f"anatomy distributions (W1, floor, B = {args.n_boot})", best["anatomy_compare"],
         f"{best['anatomy_compare'] / best['read_files']:.2f} x reading all files"),
        ("anatomy in all, as evaluate() runs it", pool + best["anatomy_compare"],
         f"{(pool + best['anatomy_compare']) / best['read_files']:.2f} x reading all {3 * args.n} files; "
         f"{(pool + best['anatomy_compare']) / best['evaluate']:.2f} x evaluate()"),
    ]
    print(f"phantom chests, {args.n} vs {args.n} volumes (+ {args.n} training) at {args.size}^3, "
          f"Med3D ResNet-{args.depth} "
          f"(random weights), B = {args.n_boot}, fastest of {args.rounds} rounds, {args.threads} threads, "
          f"torch {torch.__version__}, {platform.machine()}, device {dev}"
          f"{' (' + torch.cuda.get_device_name(dev) + ')' if torch.device(dev).type == 'cuda' else ''}, "
          f"CPU {cpu_name()}")
    width = max(len(r[0]) for r in rows)
    for name, seconds, note in rows:
        print(f"{name:<{width}}  {seconds:9.3f} s  {note}")


if __name__ == "__main__":
    main()
