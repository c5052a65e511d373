"""The sampler comparison (``evaluate.compare_samplers``): what produced a synthetic set, and one table with a
row per sampler. Which settings the comparison draws is decided when the workflow parses
(:func:`ctdiff.plan.comparison_runs`).

Every set in the comparison is drawn from the same checkpoint with ``sample.n`` and ``sample.seed``, so
sample ``i`` of every sampler starts from the same noise ``x_T`` (``ctdiff.generate``: sample ``i`` depends only
on ``(seed, i)``), and is scored by ``ctdiff.metrics.evaluate.evaluate`` against the same held-out real
volumes. ``sampler_table`` checks that instead of assuming it: rows that differ in checkpoint, seed, sample
count or real volumes are refused.

Cost is counted in network evaluations per volume, the model calls of ``ctdiff.diffusion.samplers.sample``
(:func:`ctdiff.diffusion.samplers.network_evaluations`: T for ddpm, ``steps`` for ddim, dpmpp and euler,
``2·steps − 1`` for heun), which does not depend on the machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from ctdiff.checkpoint import read_checkpoint
from ctdiff.diffusion.samplers import network_evaluations
from ctdiff.io import atomic_path, file_sha256
from ctdiff.plan import setting

COLUMNS = [
    "set", "sampler", "steps", "eta", "network_evaluations", "n_synthetic", "n_real",
    "fid", "fid_low", "fid_high",
    "kid", "kid_low", "kid_high",
    "msssim_nearest_real", "msssim_nearest_real_low", "msssim_nearest_real_high",
    "msssim_diversity", "msssim_diversity_low", "msssim_diversity_high",
    "two_lungs_share", "lung_volume_ratio",
    "ci_level", "n_boot", "checkpoint_step", "sample_seed",
    "memorisation_flagged_voxels", "memorisation_flagged_features",
]
# What every row must share for the comparison to be fair; checked by sampler_table.
SHARED = ("checkpoint_sha256", "sample_seed", "n_synthetic", "real_volumes")


def sampling_provenance(checkpoint: Path, *, sampler: str, steps: int | None, eta: float, seed: int) -> dict:
    """What produced a synthetic set, for ``evaluate(provenance=...)``: the resolved sampler setting (see
    :func:`ctdiff.plan.setting`), network evaluations per volume, the sample seed, and the checkpoint's path,
    training step, sha256 and the ctdiff version that wrote it."""
    ckpt = read_checkpoint(Path(checkpoint))
    T = int(ckpt["config"]["diffusion"]["timesteps"])
    run = setting(sampler, steps, eta, T)
    return {
        "sampler": run["sampler"],
        "sampler_steps": run["steps"],
        "eta": run["eta"],
        "network_evaluations": network_evaluations(run["sampler"], run["steps"], T),
        "sample_seed": seed,
        "checkpoint": str(checkpoint),
        "checkpoint_step": int(ckpt["step"]),
        "checkpoint_sha256": file_sha256(Path(checkpoint)),
        "checkpoint_version": ckpt.get("version"),
    }


def _row(name: str, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(table row, the values every row must share) of one metrics.json."""
    m = json.loads(Path(path).read_text())
    prov = m.get("provenance", {})
    missing = [k for k in ("sampler", "sampler_steps", "eta", "network_evaluations", "sample_seed",
                           "checkpoint_step", "checkpoint_sha256") if k not in prov]
    missing += [k for k in ("real_volumes", "n_synthetic", "n_real") if k not in m]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)} (metrics written before the sampler comparison? "
                         "rerun the evaluation)")
    boot = m.get("bootstrap", {})

    def interval(key: str) -> tuple[float | None, float | None]:
        ci = boot.get(key)
        return (ci["low"], ci["high"]) if ci else (None, None)

    row = {
        "set": name, "sampler": prov["sampler"], "steps": prov["sampler_steps"],
        "eta": prov["eta"] if prov["sampler"] == "ddim" else None,
        "network_evaluations": prov["network_evaluations"], "n_synthetic": m["n_synthetic"], "n_real": m["n_real"],
        "fid": m["fid"],
        "msssim_nearest_real": m["msssim_nearest_real"]["mean"], "msssim_diversity": m["msssim_diversity"]["mean"],
        "ci_level": boot.get("level") if boot.get("n_boot") else None, "n_boot": boot.get("n_boot", 0),
        "checkpoint_step": prov["checkpoint_step"], "sample_seed": prov["sample_seed"],
    }
    for key in ("fid", "msssim_nearest_real", "msssim_diversity"):
        row[f"{key}_low"], row[f"{key}_high"] = interval(key)
    # KID (mean over subsets); a metrics.json written before KID leaves its cells empty
    row["kid"] = m["kid"]["mean"] if "kid" in m else None
    row["kid_low"], row["kid_high"] = interval("kid")
    # Anatomy in HU (ctdiff.metrics.anatomy_compare): the share of synthetic volumes with two lungs and the mean
    # synthetic / mean real lung volume; empty for metrics written before the anatomy was measured.
    summary = m.get("anatomy", {}).get("summary", {})
    row["two_lungs_share"] = summary.get("two_lungs_share_synthetic")
    row["lung_volume_ratio"] = summary.get("lung_volume_ratio")
    # near-copies of training volumes by the voxel and the feature-space audit (empty: not audited)
    memorisation = m.get("memorisation", {})
    row["memorisation_flagged_voxels"] = memorisation.get("n_flagged")
    row["memorisation_flagged_features"] = memorisation.get("features", {}).get("n_flagged")
    shared = {"checkpoint_sha256": prov["checkpoint_sha256"], "sample_seed": prov["sample_seed"],
              "n_synthetic": m["n_synthetic"], "real_volumes": sorted(m["real_volumes"])}
    return row, shared


def sampler_table(main: Path, compare: dict[str, Path], out: Path) -> pd.DataFrame:
    """One row per sampler, the main set (``main``, the sample section's metrics.json) first, then each of
    ``compare`` ({tag: metrics.json}) in order; written to ``out`` as TSV (empty cell = no interval or no eta)
    and returned.

    Raises ValueError, naming the files, when the sets do not share checkpoint, sample seed, sample count and
    real volumes: then the rows would not be comparable.
    """
    rows, shared = [], []
    for name, path in [("main", Path(main)), *((t, Path(p)) for t, p in compare.items())]:
        row, same = _row(name, path)
        rows.append(row)
        shared.append((path, same))
    for path, same in shared[1:]:
        differ = [k for k in SHARED if same[k] != shared[0][1][k]]
        if differ:
            raise ValueError(f"{path} and {shared[0][0]} differ in {', '.join(differ)}: "
                             "the sampler comparison needs the same checkpoint, seed, sample count and real volumes")
    table = pd.DataFrame(rows, columns=COLUMNS)
    with atomic_path(Path(out)) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    return table


def read_sampler_table(path: Path) -> pd.DataFrame:
    """The table ``sampler_table`` wrote (empty cells as NaN)."""
    table = pd.read_csv(path, sep="\t", dtype={"set": str, "sampler": str})
    missing = set(COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"{path} lacks the columns {sorted(missing)}")
    return table
