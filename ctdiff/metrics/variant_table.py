"""The variants table (config ``variants`` and ``evaluate.compare_samplers``): what produced a synthetic set,
and one table with a row per (variant, sampler) pair and its cost. Which pairs the run draws is decided when
the workflow parses (:func:`ctdiff.plan.table_rows`).

Every set is drawn with ``sample.n`` and ``sample.seed``, so sample ``i`` of every row starts from the same
noise ``x_T`` (``ctdiff.sampling.generate``: sample ``i`` depends only on ``(seed, i)``), and is scored by
``ctdiff.metrics.evaluate.evaluate`` against the same held-out real volumes; the rows of one variant share its
checkpoint. ``variant_table`` checks that instead of assuming it: rows that differ are refused.

Cost, per row:

- ``network_evaluations`` per volume, the model calls of ``ctdiff.diffusion.sampling.sample``
  (:func:`ctdiff.diffusion.samplers.network_evaluations`, each sampler family's ``evaluations``: T for ddpm,
  ``steps`` for ddim, dpmpp and euler, ``2·steps − 1`` for heun), which does not depend on the machine; twice that for a nodule-conditioned set
  drawn with classifier-free guidance ``w`` other than 0 and 1 (:func:`ctdiff.model.condition.guided`);
- ``train_s_per_step``: the median over the training log's intervals (``log.csv``, one row every
  ``train.log_every`` steps) of seconds per optimizer step, leaving out the first interval, which holds the
  start-up (``torch.compile``, cuDNN's algorithm search, the first batches read); ``train_hours`` is that
  times ``train_steps`` (the checkpoint's), on ``train_machine`` (all its processes together);
- ``sampling_s_per_volume``: one device's seconds per volume at the sample batch size, the median over the
  set's samples (``sampling.json``, :func:`ctdiff.sampling.generate.sampling_cost`), on ``sampling_machine``.

Privacy: ``mia_{loss,t_error}_auc`` (with ``_low``, ``_high`` and ``_tpr_at_fpr_1pct``), the membership-inference
audit of the row's model (:mod:`ctdiff.metrics.membership`); every set of one model carries the same values.

Downstream use: ``downstream_{real,synthetic,combined}_{dice,sensitivity}`` (each with ``_low`` and ``_high``) and
``..._fp_per_volume``, the arms of the downstream stage (:mod:`ctdiff.downstream.stage`) of a nodule-conditioned
model with ``downstream.enabled``: a segmenter trained on the real training split (the same for every row), on
the model's synthetic volumes, and on both, scored on the held-out real volumes; empty for any other model.

Machines are recorded since this table has cost columns; a set drawn or trained before leaves them empty.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ctdiff.training.checkpoint import read_checkpoint
from ctdiff.diffusion.samplers import network_evaluations
from ctdiff.files import atomic_path, file_sha256
from ctdiff.machine import label
from ctdiff.metrics import keys
from ctdiff.model.condition import copies_per_call
from ctdiff.options import ETA_SAMPLERS
from ctdiff.plan import DOWNSTREAM_ARMS, TableRow, setting

MIA_ATTACKS = ("loss", "t_error")
DOWNSTREAM_KEYS = ("dice", "dice_low", "dice_high", "sensitivity", "sensitivity_low", "sensitivity_high",
                   "fp_per_volume")

COLUMNS = [
    "variant", "set", "sampler", "steps", "eta", "network_evaluations",
    "train_s_per_step", "train_steps", "train_hours", "train_machine",
    "sampling_s_per_volume", "sampling_machine",
    keys.N_SYNTHETIC, keys.N_REAL,
    # a metric's value and its bootstrap interval, named after its metrics.json key
    *(f"{key}{end}" for key in (keys.FID, keys.KID, keys.MSSSIM_NEAREST_REAL, keys.MSSSIM_DIVERSITY)
      for end in ("", "_low", "_high")),
    "two_lungs_share", "lung_volume_ratio",
    "ci_level", "n_boot", "checkpoint_step", "sample_seed",
    "memorisation_flagged_voxels", "memorisation_flagged_features",
    # the membership-inference audit of the row's model (ctdiff.metrics.membership): per attack, the AUC with its
    # interval and the TPR at 1 % FPR; empty where the model was not audited (privacy.enabled: false)
    *(f"mia_{attack}_{key}" for attack in MIA_ATTACKS for key in ("auc", "auc_low", "auc_high", "tpr_at_fpr_1pct")),
    # the downstream stage's arms of the row's model (ctdiff.downstream.stage): a segmenter's Dice and lesion
    # sensitivity with intervals and its false positives per volume; empty unless the stage ran for the model
    *(f"downstream_{arm}_{key}" for arm in DOWNSTREAM_ARMS for key in DOWNSTREAM_KEYS),
]
# What every row must share for the comparison to be fair, and what the rows of one variant share besides.
SHARED = ("sample_seed", keys.N_SYNTHETIC, keys.REAL_VOLUMES)
SHARED_BY_VARIANT = ("checkpoint_sha256",)


def sampling_provenance(checkpoint: Path, *, sampler: str, steps: int | None, eta: float, seed: int,
                        guidance: float = 1.0) -> dict:
    """What produced a synthetic set, for ``evaluate(provenance=...)``: the resolved sampler setting (see
    :func:`ctdiff.plan.setting`), the guidance scale, network evaluations per volume (doubled by guidance
    other than 0 and 1), the sample seed, and the checkpoint's path, training step, sha256 and the ctdiff
    version that wrote it."""
    ckpt = read_checkpoint(Path(checkpoint))
    T = int(ckpt["config"]["diffusion"]["timesteps"])
    run = setting(sampler, steps, eta, T)
    per_step = copies_per_call(guidance)
    return {
        "sampler": run["sampler"],
        "sampler_steps": run["steps"],
        "eta": run["eta"],
        "guidance": guidance,
        "network_evaluations": per_step * network_evaluations(run["sampler"], run["steps"], T),
        "sample_seed": seed,
        "checkpoint": str(checkpoint),
        "checkpoint_step": int(ckpt["step"]),
        "checkpoint_sha256": file_sha256(Path(checkpoint)),
        "checkpoint_version": ckpt.get("version"),
    }


def _row(name: str, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(table row, the values every row must share) of one metrics.json."""
    m = json.loads(Path(path).read_text())
    prov = m.get(keys.PROVENANCE, {})
    missing = [k for k in ("sampler", "sampler_steps", "eta", "network_evaluations", "sample_seed",
                           "checkpoint_step", "checkpoint_sha256") if k not in prov]
    missing += [k for k in (keys.REAL_VOLUMES, keys.N_SYNTHETIC, keys.N_REAL) if k not in m]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)} (not a metrics.json of ctdiff's evaluate stage)")
    boot = m.get(keys.BOOTSTRAP, {})

    def interval(key: str) -> tuple[float | None, float | None]:
        ci = boot.get(key)
        return (ci["low"], ci["high"]) if ci else (None, None)

    row = {
        "set": name, "sampler": prov["sampler"], "steps": prov["sampler_steps"],
        "eta": prov["eta"] if prov["sampler"] in ETA_SAMPLERS else None,
        "network_evaluations": prov["network_evaluations"],
        keys.N_SYNTHETIC: m[keys.N_SYNTHETIC], keys.N_REAL: m[keys.N_REAL], keys.FID: m[keys.FID],
        keys.MSSSIM_NEAREST_REAL: m[keys.MSSSIM_NEAREST_REAL]["mean"],
        keys.MSSSIM_DIVERSITY: m[keys.MSSSIM_DIVERSITY]["mean"],
        "ci_level": boot.get("level") if boot.get("n_boot") else None, "n_boot": boot.get("n_boot", 0),
        "checkpoint_step": prov["checkpoint_step"], "sample_seed": prov["sample_seed"],
    }
    for key in (keys.FID, keys.MSSSIM_NEAREST_REAL, keys.MSSSIM_DIVERSITY):
        row[f"{key}_low"], row[f"{key}_high"] = interval(key)
    # KID (mean over subsets)
    row[keys.KID] = m[keys.KID]["mean"]
    row[f"{keys.KID}_low"], row[f"{keys.KID}_high"] = interval(keys.KID)
    # Anatomy in HU (ctdiff.metrics.anatomy_compare): the share of synthetic volumes with two lungs and the mean
    # synthetic / mean real lung volume.
    summary = m.get(keys.ANATOMY, {}).get("summary", {})
    row["two_lungs_share"] = summary.get("two_lungs_share_synthetic")
    row["lung_volume_ratio"] = summary.get("lung_volume_ratio")
    # near-copies of training volumes by the voxel and the feature-space audit (empty: not audited)
    memorisation = m.get(keys.MEMORISATION, {})
    row["memorisation_flagged_voxels"] = memorisation.get("n_flagged")
    row["memorisation_flagged_features"] = memorisation.get("features", {}).get("n_flagged")
    attacks = m.get(keys.MEMBERSHIP, {}).get("attacks", {})
    for attack in MIA_ATTACKS:
        a = attacks.get(attack, {})
        ci = a.get("intervals", {}).get("auc", {})
        row[f"mia_{attack}_auc"], row[f"mia_{attack}_tpr_at_fpr_1pct"] = a.get("auc"), a.get("tpr_at_fpr_1pct")
        row[f"mia_{attack}_auc_low"], row[f"mia_{attack}_auc_high"] = ci.get("low"), ci.get("high")
    shared = {"checkpoint_sha256": prov["checkpoint_sha256"], "sample_seed": prov["sample_seed"],
              keys.N_SYNTHETIC: m[keys.N_SYNTHETIC], keys.REAL_VOLUMES: sorted(m[keys.REAL_VOLUMES])}
    return row, shared


def _downstream(files: Sequence[str]) -> dict[str, Any]:
    """The downstream columns of a model from its arm records (none: every cell empty)."""
    row: dict[str, Any] = {}
    for path in files:
        record = json.loads(Path(path).read_text())
        for key in DOWNSTREAM_KEYS:
            name, _, bound = key.rpartition("_")
            if bound in ("low", "high"):
                value = record.get("intervals", {}).get(name, {}).get(bound)
            else:
                value = record.get(key)
            row[f"downstream_{record['arm']}_{key}"] = value
    return row


def train_seconds_per_step(log_csv: Path) -> float | None:
    """Seconds per optimizer step of a training log (``ctdiff.training.loop.write_log``: ``step`` and cumulative
    ``elapsed_s`` every ``train.log_every`` steps): the median over consecutive rows of Δelapsed / Δstep. The
    first row's interval, from the start, holds the start-up and is left out; None when no other is logged."""
    with open(log_csv, newline="") as fh:
        rows = [(int(r["step"]), float(r["elapsed_s"])) for r in csv.DictReader(fh)]
    rates = [(e1 - e0) / (s1 - s0) for (s0, e0), (s1, e1) in zip(rows, rows[1:]) if s1 > s0]
    return statistics.median(rates) if rates else None


def _train_cost(train: Path) -> dict[str, Any]:
    """The training cost columns of a variant from its ``train/`` folder (``model.pt``, ``log.csv``)."""
    ckpt = read_checkpoint(train / "model.pt")
    per_step = train_seconds_per_step(train / "log.csv")
    steps = int(ckpt["step"])
    return {"train_s_per_step": per_step, "train_steps": steps,
            "train_hours": None if per_step is None else per_step * steps / 3600,
            "train_machine": label(ckpt.get("machine"))}


def _sampling_cost(samples: Path) -> dict[str, Any]:
    """The sampling cost columns of a set from ``sampling.json`` in its folder (empty where it is missing)."""
    path = samples / "sampling.json"
    cost = json.loads(path.read_text()) if path.exists() else {}
    return {"sampling_s_per_volume": cost.get("seconds_per_volume"),
            "sampling_machine": ", ".join(label(m) for m in cost.get("machines", [])) or None}


def variant_table(rows: Sequence[TableRow], out: Path) -> pd.DataFrame:
    """One row per (variant, sampler) pair of ``rows`` (:func:`ctdiff.plan.table_rows`, the main config's rows
    first), in order: the sampler setting, the cost columns and every metric with its interval; written to
    ``out`` as TSV (empty cell = no interval, no eta or not recorded) and returned.

    Raises ValueError, naming the files, when the sets do not share sample seed, sample count and real volumes,
    or a variant's sets not its checkpoint: then the rows would not be comparable.
    """
    table, first, by_variant, train_cost = [], None, {}, {}
    for r in rows:
        path = Path(r.metrics)
        row, same = _row(r.set, path)
        if r.variant not in train_cost:
            train_cost[r.variant] = _train_cost(Path(r.train))
        table.append({"variant": r.variant, **row, **train_cost[r.variant], **_sampling_cost(Path(r.samples)),
                      **_downstream(r.downstream)})
        first = first or (path, same)
        ref = by_variant.setdefault(r.variant, (path, same))
        for names, (other, values) in ((SHARED, first), (SHARED_BY_VARIANT, ref)):
            differ = [k for k in names if same[k] != values[k]]
            if differ:
                raise ValueError(f"{path} and {other} differ in {', '.join(differ)}: the rows of the variants table "
                                 "need the same seed, sample count and real volumes, and a variant's rows its checkpoint")
    frame = pd.DataFrame(table, columns=COLUMNS)
    # A column empty in every row (e.g. no model was audited for membership) is numeric NaN, as it reads back.
    text = {"variant", "set", "sampler", "train_machine", "sampling_machine"}
    frame = frame.apply(lambda col: col.astype(float) if col.name not in text and col.isna().all() else col)
    with atomic_path(Path(out)) as tmp:
        frame.to_csv(tmp, sep="\t", index=False)
    return frame


def read_variant_table(path: Path) -> pd.DataFrame:
    """The table ``variant_table`` wrote (empty cells as NaN)."""
    table = pd.read_csv(path, sep="\t", dtype={"variant": str, "set": str, "sampler": str,
                                                "train_machine": str, "sampling_machine": str})
    missing = set(COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"{path} lacks the columns {sorted(missing)}")
    return table
