"""FID's and KID's dependence on the number of volumes N, measured on feature sets whose population values are
known.

    python benchmarks/metric_bias.py                    # N = 50, 100, 200, 500; 10 seeds; d = 512
    python benchmarks/metric_bias.py --seeds 20 --dim 2048

Features: isotropic Gaussians of dimension --dim (512, Med3D ResNet-10's feature size), "real"
P = N(0, I) and "synthetic" Q = N(δ·1, s² I), not features of volumes: their population FID,
d·δ² + d·(1 − s)², and population MMD² (``ctdiff.metrics.kid.cubic_kernel_mean_gaussian``) are exact, so the
bias is measured against the truth. Two fixed pools of --pool vectors are drawn once (seed 0); for each seed and
N, N vectors are drawn without replacement from each pool (P vs Q), and two disjoint sets of N from P's pool
(P vs P, whose population FID and KID are both 0). KID uses the evaluate section's defaults: subsets of
min(kid_subset_size, N) over kid_subsets subsets. Reported: mean ± sd over seeds.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ctdiff.config import EvaluateConfig
from ctdiff.metrics.fid import fid_from_features
from ctdiff.metrics.kid import cubic_kernel_mean_gaussian, kid_from_features


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[50, 100, 200, 500], help="volumes per set")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--pool", type=int, default=2000, help="vectors per fixed pool (>= 2 max N)")
    p.add_argument("--shift", type=float, default=0.1, help="δ, Q's mean in every coordinate")
    p.add_argument("--scale", type=float, default=1.1, help="s, Q's standard deviation")
    args = p.parse_args()
    if args.pool < 2 * max(args.n):
        p.error(f"--pool {args.pool} must hold two disjoint sets of the largest N ({max(args.n)})")
    t0 = time.perf_counter()
    defaults = EvaluateConfig()
    d, delta, s = args.dim, args.shift, args.scale
    rng = np.random.default_rng(0)
    pool_p = rng.standard_normal((args.pool, d))
    pool_q = delta + s * rng.standard_normal((args.pool, d))
    mu_p, mu_q = np.zeros(d), np.full(d, delta)
    fid_pop = d * delta**2 + d * (1 - s) ** 2
    kid_pop = (cubic_kernel_mean_gaussian(mu_p, mu_p, 1.0, 1.0) + cubic_kernel_mean_gaussian(mu_q, mu_q, s, s)
               - 2 * cubic_kernel_mean_gaussian(mu_p, mu_q, 1.0, s))

    print(f"d = {d}; P = N(0, I), Q = N({delta:g}·1, {s:g}² I); population FID {fid_pop:.4g}, KID (MMD², cubic "
          f"kernel) {kid_pop:.4g}; P vs P: 0 and 0. Mean ± sd over {args.seeds} seeds; KID over "
          f"{defaults.kid_subsets} subsets of min({defaults.kid_subset_size}, N).")
    print()
    print("| N | FID, P vs Q | KID, P vs Q | FID, P vs P | KID, P vs P |")
    print("|---:|---|---|---|---|")
    for n in args.n:
        size = min(defaults.kid_subset_size, n)
        fid_pq, kid_pq, fid_pp, kid_pp = [], [], [], []
        for seed in range(args.seeds):
            r = np.random.default_rng(1000 + seed)
            a = pool_p[r.choice(args.pool, 2 * n, replace=False)]
            b = pool_q[r.choice(args.pool, n, replace=False)]
            real, real2 = a[:n], a[n:]
            fid_pq.append(fid_from_features(real, b)["fid"])
            fid_pp.append(fid_from_features(real, real2)["fid"])
            kid_pq.append(kid_from_features(real, b, subset_size=size, subsets=defaults.kid_subsets, seed=seed)["mean"])
            kid_pp.append(kid_from_features(real, real2, subset_size=size, subsets=defaults.kid_subsets,
                                            seed=seed)["mean"])
        cells = [f"{np.mean(v):.4g} ± {np.std(v, ddof=1):.2g}" for v in (fid_pq, kid_pq, fid_pp, kid_pp)]
        print(f"| {n} | " + " | ".join(cells) + " |")
    print()
    print(f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
