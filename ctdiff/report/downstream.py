"""Does synthetic data help? The report's "Downstream use" section, from the downstream stage's records
(:func:`ctdiff.downstream.stage.downstream_arm`): the arms side by side and how to read them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ctdiff.machine import label
from ctdiff.plan import DOWNSTREAM_ARMS
from ctdiff.report.sections import Section, table

HEADER = ["arm", "model", "trains on", "Dice (all test volumes)", "Dice (volumes with nodules)",
          "lesion sensitivity", "false positives per volume", "training cost"]


def _cell(record: dict[str, Any], key: str, fmt: str = ".3f") -> str:
    value = record.get(key)
    if value is None:
        return "n/a"
    text = format(value, fmt)
    interval, level = record.get("intervals", {}).get(key), record.get("bootstrap", {}).get("level")
    if interval and level:
        text += f" [{round(100 * level)} % CI {format(interval['low'], fmt)} to {format(interval['high'], fmt)}]"
    return text


def downstream_rows(records: Sequence[dict[str, Any]]) -> list[tuple[str, ...]]:
    """One row per arm record, in the order given (the real arm first, then each model's)."""
    rows = []
    for r in records:
        volumes = ", ".join(f"{r[k]} {name}" for k, name in (("n_real", "real"), ("n_synthetic", "synthetic"))
                            if r.get(k))
        sensitivity = _cell(r, "sensitivity")
        if r.get("sensitivity") is not None:
            sensitivity += f" ({r['n_found']} of {r['n_nodules']})"
        cost = r.get("cost", {})
        rows.append((r["arm"], r.get("model") or "(none)", f"{r['trains_on']} ({volumes})", _cell(r, "dice"),
                     _cell(r, "dice_nodules"), sensitivity, _cell(r, "fp_per_volume", ".2f"),
                     f"{cost.get('train_seconds', float('nan')):.0f} s, {r['settings']['steps']} steps on "
                     f"{label(cost.get('device')) or 'an unrecorded machine'}"))
    return rows


def _apart(a: dict[str, Any], b: dict[str, Any], key: str) -> int:
    """+1 where ``a``'s interval of ``key`` lies wholly above ``b``'s, -1 wholly below, 0 where they overlap or
    either is missing."""
    ia, ib = a.get("intervals", {}).get(key), b.get("intervals", {}).get(key)
    if not ia or not ib:
        return 0
    return 1 if ia["low"] > ib["high"] else -1 if ia["high"] < ib["low"] else 0


def verdicts(records: Sequence[dict[str, Any]]) -> list[str]:
    """Per model, what its arms say against the real arm, by the intervals of the lesion sensitivity (or Dice
    where the test set has no nodule)."""
    real = next((r for r in records if r["arm"] == "real"), None)
    if real is None:
        return []
    key = "sensitivity" if real.get("sensitivity") is not None else "dice"
    word = {1: "lies above", -1: "lies below", 0: "does not differ credibly from"}
    out = []
    for model in dict.fromkeys(r["model"] for r in records if r.get("model")):
        arms = {r["arm"]: r for r in records if r.get("model") == model}
        parts = [f"{arm} arm {word[_apart(arms[arm], real, key)]} the real arm"
                 for arm in DOWNSTREAM_ARMS[1:] if arm in arms]
        if parts:
            out.append(f"{model}: by the {key.replace('_', ' ')}'s intervals, the " + "; the ".join(parts) + ".")
    return out


def downstream_text(records: Sequence[dict[str, Any]]) -> str:
    """How the arms were trained and scored, how to read them, and what this run's say."""
    first = records[0]
    s = first["settings"]
    unit = "volumes" if s["patch"] is None else (
        f"{s['patch']}³ windows, {s['foreground']:.0%} of them centred on a nodule, predicted window by window")
    parts = [
        "Does synthetic data help? The question synthetic scans exist for: a nodule segmenter (a small 3D U-Net, "
        f"{len(s['channels'])} levels of {', '.join(map(str, s['channels']))} channels) is trained with the same "
        f"budget ({s['steps']} steps of {s['batch_size']} {unit}, learning rate {s['lr']:g}, seed {s['seed']}) on "
        "the real training volumes with their consensus masks (real), on a nodule-conditioned model's synthetic "
        "volumes with the masks they were drawn with (synthetic), and on both drawn 1:1 (combined), and each is "
        f"scored on the same {first['n_volumes']} held-out real volumes ({first['n_nodules']} nodules in "
        f"{first['n_volumes_with_nodules']} of them) against their consensus masks. The synthetic volumes are drawn "
        "for this with the training split's masks, so no segmenter has seen a test nodule's place. The stage "
        "applies to nodule-conditioned models only: an unconditional model (the paper's) draws scans without "
        "masks, so there is nothing to train a segmenter on.",
        "How to read it: Dice per volume is the overlap of prediction and mask (a volume without nodules scores "
        "1 when nothing is predicted in it, else 0; the column over the volumes with nodules leaves those out); "
        "a nodule is found when any predicted voxel overlaps it, and the sensitivity is the share of all test "
        "nodules found; a false positive is a predicted connected region touching no nodule. Synthetic data "
        "stands in for real data where the synthetic arm reaches the real arm, and helps where the combined arm "
        "lies above it; two arms differ credibly only where their intervals (bootstrap over test volumes) do not "
        "overlap.",
    ]
    if not first["n_nodules"]:
        parts.append("The held-out volumes hold no nodule at this grid: sensitivity is undefined and Dice measures "
                     "only whether a segmenter stays silent on clean scans.")
    parts += verdicts(records)
    return " ".join(parts)


def downstream_section(records: Sequence[dict[str, Any]]) -> Section:
    """The "Downstream use" section: how to read it, then one row per arm."""
    return Section("Downstream use", text=downstream_text(records),
                   tables=(table(HEADER, downstream_rows(records), id="downstream"),))
