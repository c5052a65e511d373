"""Time the evaluate stage on N real vs N synthetic random volumes, stage by stage.

    python benchmarks/evaluate.py                       # 16 vs 16 at 32³, Med3D ResNet-10, B = 200
    python benchmarks/evaluate.py --n 32 --size 48 --depth 50
    python benchmarks/evaluate.py --n 16 --size 128 --depth 50 --device cuda

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
from ctdiff.io import load_volume, save_volume
from ctdiff.metrics.bootstrap import fid_ci, mean_ci
from ctdiff.metrics.evaluate import evaluate, real_floor
from ctdiff.metrics.feature_memorisation import feature_audit
from ctdiff.metrics.fid import fid_from_features, frechet_distance
from ctdiff.metrics.kid import kid_ci, kid_from_features
from ctdiff.metrics.med3d import extract_features, load_med3d
from ctdiff.metrics.msssim import diversity_msssim, paired_msssim
from ctdiff.metrics.nearest import nearest_l2, nearest_over_chunks


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

    rng = np.random.default_rng(args.seed)
    shape = (args.n, args.size, args.size, args.size)
    real, syn, train = (rng.random(shape, dtype=np.float32) for _ in range(3))
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
            save_volume(path, v, np.eye(4))

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
        "floor": lambda: real_floor(real, feats_r, [str(i) for i in range(args.n)], seed=0, window=7, device=dev),
        "memorisation": lambda: nearest_over_chunks([syn, real], [train[i : i + 64] for i in range(0, args.n, 64)]),
        # reading every file evaluate() reads, and the feature-space memorisation audit: the training volumes'
        # Med3D features (the test and synthetic features are FID's) and the search and rule on them
        "read_files": lambda: [load_volume(path) for name in ("real", "syn", "train") for path in paths[name]],
        "feature_memorisation": lambda: feature_audit(
            names, feats_s, names, feats_r, names, extract_features(model, train, device=dev), network={}),
        "evaluate": lambda: evaluate(paths["real"], paths["syn"], folder / "metrics.json", settings,
                                     train=paths["train"], device=dev),
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
    print(f"{args.n} vs {args.n} volumes (+ {args.n} training) at {args.size}^3, Med3D ResNet-{args.depth} "
          f"(random weights), B = {args.n_boot}, fastest of {args.rounds} rounds, {args.threads} threads, "
          f"torch {torch.__version__}, {platform.machine()}, device {dev}"
          f"{' (' + torch.cuda.get_device_name(dev) + ')' if torch.device(dev).type == 'cuda' else ''}")
    width = max(len(r[0]) for r in rows)
    for name, seconds, note in rows:
        print(f"{name:<{width}}  {seconds:9.3f} s  {note}")


if __name__ == "__main__":
    main()
