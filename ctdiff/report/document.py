"""The run's report: metrics with bootstrap intervals beside the paper's and the real-vs-real floor, how to
read them (``ctdiff.report.guide``), the variants and samplers compared (when configured), the memorisation audits
(voxels and Med3D features), the membership-inference audit ("Privacy", ``ctdiff.report.privacy``), the anatomy in HU,
the downstream use of nodule-conditioned models ("Downstream use", ``ctdiff.report.downstream``), Figure 1, the
reader study (``ctdiff.report.reader``), the learning curve, the data QC summary, provenance and config.

The report is a list of :class:`Section` built once from the run's files (:func:`build_sections`) and
rendered twice, so the two renderings cannot differ in content:

- ``report.md`` (:func:`render_markdown`) for terminals, diffs and GitHub. Its images are links to the
  PNG files the figure rules write beside it (``figures/*.png``, paths relative to the report), not data
  URIs: GitHub does not show data-URI images, and base64 would bury the text a reader of a terminal or a
  diff came for.
- ``report.html`` (:func:`render_html`), one self-contained page with the same images embedded as base64,
  to mail or archive alone.

The paper's numbers are those ``metrics.json`` records under ``"paper"``: ``ctdiff.metrics.evaluate`` has
written them into every ``metrics.json`` since it first wrote one, so a file without them did not come
from this pipeline and is refused (``ValueError``) rather than shown beside guessed numbers.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ctdiff.ingest.cohort import SUMMARY_COLUMNS
from ctdiff.files import atomic_path
from ctdiff.metrics import keys
from ctdiff.metrics.variant_table import read_variant_table
from ctdiff.plan import DOWNSTREAM_ARMS
from ctdiff.report.downstream import downstream_section
from ctdiff.report.privacy import privacy_section
from ctdiff.report.reader import reader_section
from ctdiff.report.sections import Image, Section, Table, table
from ctdiff.report.guide import HEADER as GUIDE_HEADER
from ctdiff.report.guide import guide_rows, guide_text


def _with_ci(text: str, interval: dict | None, level: float | None) -> str:
    """``text`` followed by the bootstrap interval, e.g. '12.345 [95 % CI 10.100 to 14.800]'."""
    if interval:
        text += f" [{round(100 * level)} % CI {interval['low']:.3f} to {interval['high']:.3f}]"
    return text


def metrics_rows(metrics: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Rows (metric, this run, paper, note) of the metrics table: values with their bootstrap intervals where
    present beside the paper's values (``metrics["paper"]``, ``ValueError`` without them), then the real-vs-real
    floor."""
    net = metrics.get(keys.FEATURE_NETWORK, {})
    fid_note = "" if net.get("pretrained") else "seeded random feature network: not comparable to the paper"
    if metrics.get(keys.FID_RANK_DEFICIENT):
        fid_note = "; ".join(filter(None, [fid_note, "fewer volumes than feature dimensions: covariance rank-deficient"]))
    paper = metrics.get(keys.PAPER, {})
    missing = {"fid", "msssim"} - set(paper)
    if missing:
        raise ValueError(f"metrics.json records no paper value for {sorted(missing)} under 'paper'")
    paired, diversity = metrics[keys.MSSSIM_NEAREST_REAL], metrics[keys.MSSSIM_DIVERSITY]
    boot = metrics.get(keys.BOOTSTRAP, {})
    level = boot.get("level")
    rows = [
        ("FID (Med3D features)", _with_ci(f"{metrics[keys.FID]:.3f}", boot.get(keys.FID), level),
         f"{paper['fid']:.2f}", fid_note),
        ("MS-SSIM, synthetic vs nearest real (higher = closer; mean ± sd)",
         _with_ci(f"{paired['mean']:.3f} ± {paired['std']:.3f}", boot.get(keys.MSSSIM_NEAREST_REAL), level),
         f"{paper['msssim']:.3f}", "paper's protocol; the interval is for the mean"),
        ("MS-SSIM, synthetic vs synthetic (lower = more diverse)",
         _with_ci(f"{diversity['mean']:.3f} ± {diversity['std']:.3f}", boot.get(keys.MSSSIM_DIVERSITY), level),
         "—", "diversity, as WDM-3D reports it; the interval is for the mean"),
    ]
    if keys.KID in metrics:
        rows.insert(1, kid_row(metrics[keys.KID], boot.get(keys.KID), level))
    floor = metrics.get(keys.FLOOR)
    if floor is not None:
        if floor.get(keys.FID) is None:
            value, note = "—", f"not computed: {floor.get('reason', 'no reason recorded')}"
        else:
            value = f"FID {floor[keys.FID]:.3f}; MS-SSIM {floor[keys.MSSSIM_NEAREST_REAL]:.3f}"
            note = (f"two halves of the test set ({len(floor['half_a'])} vs {len(floor['half_b'])} volumes), "
                    "what real data scores against real data")
        rows.append(("Floor: real vs real (FID; nearest-real MS-SSIM)", value, "—", note))
        if keys.KID in floor:
            rows.append(kid_floor_row(floor))
    if boot.get("n_boot"):
        methods = "; ".join(f"{name}: {boot[key]['method']}" for name, key in
                            (("FID", keys.FID), ("MS-SSIM", keys.MSSSIM_NEAREST_REAL),
                             ("diversity", keys.MSSSIM_DIVERSITY), ("KID", keys.KID))
                            if "method" in boot.get(key, {}))
        rows.append(("Intervals", f"{boot['n_boot']} bootstrap replicates, seed {boot['seed']}", "—", methods))
    elif boot:
        rows.append(("Intervals", "none (evaluate.bootstrap is 0)", "—", ""))
    return rows


def _kid_text(value: float) -> str:
    """KID to 4 significant digits: its values are small (often below 0.01) and of either sign."""
    return f"{value:.4g}"


def kid_row(kid: dict[str, Any], interval: dict | None, level: float | None) -> tuple[str, str, str, str]:
    """The metrics-table row of KID (``metrics["kid"]``, ``ctdiff.metrics.kid``): mean ± sd over subsets with
    its bootstrap interval; the paper reports none."""
    text = f"{_kid_text(kid['mean'])} ± {_kid_text(kid['std'])}"
    if interval:
        text += f" [{round(100 * level)} % CI {_kid_text(interval['low'])} to {_kid_text(interval['high'])}]"
    note = (f"mean ± sd over {kid['subsets']} subsets of {kid['subset_size']} volumes per set; unbiased, so 0 "
            "for matching distributions at any N (can be negative), unlike FID")
    return ("KID (Med3D features; lower = closer)", text, "—", note)


def kid_floor_row(floor: dict[str, Any]) -> tuple[str, str, str, str]:
    """The metrics-table row of KID's real-vs-real floor (``floor["kid"]``, None where a half is too small)."""
    kid = floor[keys.KID]
    if kid is None:
        return ("Floor: real vs real (KID)", "—", "—",
                f"not computed: {floor.get('reason', 'no reason recorded')}")
    note = "; ".join(filter(None, ["two halves of the test set; its expectation is 0", kid.get("note", "")]))
    return ("Floor: real vs real (KID)", f"{_kid_text(kid['mean'])} ± {_kid_text(kid['std'])}", "—", note)


def _value_ci(value: float, low: float, high: float) -> str:
    """'12.345 [10.100, 14.800]', or the value alone where the interval is missing (NaN)."""
    text = f"{value:.3f}"
    if pd.notna(low) and pd.notna(high):
        text += f" [{low:.3f}, {high:.3f}]"
    return text


def _kid_ci(value: float, low: float, high: float) -> str:
    """KID '0.01234 [0.005, 0.02]' as ``_value_ci`` but to 4 significant digits; '—' where it is missing."""
    if pd.isna(value):
        return "—"
    text = _kid_text(value)
    if pd.notna(low) and pd.notna(high):
        text += f" [{_kid_text(low)}, {_kid_text(high)}]"
    return text


def _flagged(voxels: float, features: float) -> str:
    """'1 / 2' near-copies by the voxel / feature audit, '—' for an audit a set lacks (NaN)."""
    return " / ".join("—" if pd.isna(n) else str(int(n)) for n in (voxels, features))


def _cost(value: float, fmt: str, machine: Any) -> str:
    """A cost cell: ``value`` formatted, with the machine that measured it; '—' where it was not recorded."""
    if pd.isna(value):
        return "—"
    return format(value, fmt) + ("" if pd.isna(machine) or not machine else f" ({machine})")


def _downstream_cell(r: Any, arm: str, key: str) -> str:
    """A downstream arm's value with its interval from a variants-table row (``—`` where the stage did not run)."""
    value = getattr(r, f"downstream_{arm}_{key}")
    if pd.isna(value):
        return "—"
    return _value_ci(value, getattr(r, f"downstream_{arm}_{key}_low"), getattr(r, f"downstream_{arm}_{key}_high"))


def variant_rows(table: pd.DataFrame) -> tuple[list[str], list[tuple], str]:
    """(header, rows, the sentences that introduce and explain them) of the variants table, from
    ``variants.tsv`` (:func:`ctdiff.metrics.variant_table.variant_table`)."""
    level = table["ci_level"].dropna()
    ci = f" [{round(100 * level.iloc[0])} % CI]" if len(level) else ""
    header = ["variant", "set", "sampler", "steps", "eta", "network evaluations per volume",
              "training s/step (machine)", "training hours for its steps", "sampling s/volume, one device (machine)",
              f"FID{ci}", f"MS-SSIM, nearest real (higher = closer){ci}",
              f"MS-SSIM, diversity (lower = more diverse){ci}", f"KID (lower = closer){ci}",
              "two lungs (share of synthetic)", "lung volume, synthetic / real", "near-copies flagged (voxels / features)",
              f"membership AUC, loss attack{ci}", f"membership AUC, SecMI t-error{ci}"]
    rows = [
        (r.variant, r.set, r.sampler, int(r.steps), "—" if pd.isna(r.eta) else f"{r.eta:g}", int(r.network_evaluations),
         _cost(r.train_s_per_step, ".3g", r.train_machine),
         "—" if pd.isna(r.train_hours) else f"{r.train_hours:.3g} h for {int(r.train_steps)} steps",
         _cost(r.sampling_s_per_volume, ".3g", r.sampling_machine),
         _value_ci(r.fid, r.fid_low, r.fid_high),
         _value_ci(r.msssim_nearest_real, r.msssim_nearest_real_low, r.msssim_nearest_real_high),
         _value_ci(r.msssim_diversity, r.msssim_diversity_low, r.msssim_diversity_high),
         _kid_ci(r.kid, r.kid_low, r.kid_high), _number(r.two_lungs_share, ".2f"),
         _number(r.lung_volume_ratio, ".3f"),
         _flagged(r.memorisation_flagged_voxels, r.memorisation_flagged_features),
         *("—" if pd.isna(auc) else _value_ci(auc, low, high) for auc, low, high in (
             (r.mia_loss_auc, r.mia_loss_auc_low, r.mia_loss_auc_high),
             (r.mia_t_error_auc, r.mia_t_error_auc_low, r.mia_t_error_auc_high))))
        for r in table.itertuples(index=False)
    ]
    if table.get("downstream_synthetic_dice", pd.Series(dtype=float)).notna().any():
        # the downstream stage's arms of the conditioned models; the real arm's numbers are the same in every row
        header += [f"downstream Dice, {arm} arm{ci}" for arm in DOWNSTREAM_ARMS]
        header += [f"downstream sensitivity, {arm} arm{ci}" for arm in DOWNSTREAM_ARMS]
        rows = [(*row, *(_downstream_cell(r, arm, key) for key in ("dice", "sensitivity")
                         for arm in DOWNSTREAM_ARMS))
                for row, r in zip(rows, table.itertuples(index=False))]
    first = table.iloc[0]
    sentence = (f"One row per (variant, sampler): '{first.variant}', the main configuration whose metrics are shown "
                f"above, first; 'main' is a variant's own sampler, the other sets are evaluate.compare_samplers entries "
                f"that fit its objective. Every row draws {int(first.n_synthetic)} volumes with the same seeds "
                f"(sample.seed = {int(first.sample_seed)}: sample i starts from the same noise x_T in every row) and is "
                f"scored against the same {int(first.n_real)} held-out real volumes; the rows of one variant share its "
                "checkpoint. How to read it: network evaluations per volume are the sampling cost on any machine; the "
                "seconds are what the named machine measured (training: median seconds per optimizer step after the "
                "first logged interval, and the hours that implies for the variant's train.steps; sampling: one "
                "device's median seconds per volume at the sample batch size), so compare them only between rows "
                "measured on the same machine. A variant is better or worse than the reference row only where its "
                "interval does not overlap the reference's; on a demo-sized set the intervals are wide. The membership "
                "AUCs are the model's (see Privacy; the same for every set of a variant): 0.5 = the attack cannot "
                "tell training scans from held-out ones.")
    return header, rows, sentence


def _number(value: float | None, fmt: str) -> str:
    """``value`` formatted, or '—' where it is missing (None or NaN)."""
    return "—" if value is None or pd.isna(value) else format(value, fmt)


# Anatomy in HU (ctdiff.metrics.anatomy_compare): text and tables of the "Anatomy (HU)" section.

ANATOMY_QUANTITIES = {"body_ml": ("body volume (mL)", ".0f"), "n_lungs": ("lungs found per volume", ".2f"),
                      "lung_ml": ("total lung volume (mL)", ".0f"),
                      "lung_balance": ("lung balance, smaller / larger (two lungs only)", ".3f")}


def _w1_cell(entry: dict, key: str, level: float | None, fmt: str) -> str:
    """'W1 [95 % CI low to high]', or 'absent: reason' where a set had nothing to compare."""
    if entry[key] is None:
        return f"absent: {entry.get('reason', 'no value')}"
    ci = entry.get("interval")
    text = format(entry[key], fmt)
    return text + (f" [{round(100 * level)} % CI {format(ci['low'], fmt)} to {format(ci['high'], fmt)}]"
                   if ci else "")


def _mean_sd(summary: dict, fmt: str) -> str:
    if summary["mean"] is None:
        return "— (n = 0)"
    return f"{format(summary['mean'], fmt)} ± {format(summary['sd'], fmt)} (n = {summary['n']})"


def anatomy_text(anatomy: dict[str, Any]) -> str:
    """The section's introduction: how many volumes have a body and two, one or no lungs, and what the
    window's clipping does to the numbers."""
    def counts(kind: str) -> str:
        c = anatomy["counts"][kind]
        n = sum(c.values())
        return (f"{kind}: {c['2_lungs']} of {n} volumes with two lungs, {c['1_lungs']} with one, {c['0_lungs']} "
                f"with none, {c['no_body']} without a body")
    return (f"Body, lungs and tissue classes measured in HU on every volume; {counts('real')}; "
            f"{counts('synthetic')}. {anatomy['clipping']}. W1 is the Wasserstein-1 distance between the real and "
            "synthetic distributions (lower = closer; 0 = equal); the floor is the same distance between two "
            "halves of the real volumes.")


def anatomy_tables(anatomy: dict[str, Any]) -> tuple[Table, Table]:
    """(per-volume quantities, tissue classes) of the anatomy comparison."""
    level = anatomy["bootstrap"]["level"]
    rows = []
    for key, (label, fmt) in ANATOMY_QUANTITIES.items():
        q = anatomy["quantities"][key]
        rows.append((label, _mean_sd(q["real"], fmt), _mean_sd(q["synthetic"], fmt), _w1_cell(q, "w1", level, fmt),
                     _w1_cell(q["floor"], "w1", None, fmt)))
    quantities = table(["per volume", "real (mean ± sd)", "synthetic (mean ± sd)", "W1", "floor W1 (real vs real)"],
                        rows, caption="Per volume", id="anatomy-volumes")
    rows = []
    for name, c in anatomy["classes"].items():
        low, high = c["hu_range"]
        span = f"< {high:g}" if low is None else f">= {low:g}" if high is None else f"{low:g} to {high:g}"
        share = anatomy["quantities"][f"fraction_{name}"]
        rows.append((f"{name.replace('_', ' ')} ({span} HU)", _number(share["real"]["mean"], ".3f"),
                     _number(share["synthetic"]["mean"], ".3f"), _w1_cell(c, "w1_hu", level, ".1f"),
                     _w1_cell(c["floor"], "w1_hu", None, ".1f")))
    classes = table(["tissue class", "share of body, real", "share of body, synthetic", "W1 of HU (HU)",
                      "floor W1 (HU)"], rows, caption="Tissue classes (voxels pooled per set)", id="anatomy-classes")
    misses = anatomy_misses(anatomy)
    return (quantities, classes) if misses is None else (quantities, classes, misses)


#: Rows of the "without two lungs" table; the count of the rest is said in its caption.
MAX_MISS_ROWS = 20


def anatomy_misses(anatomy: dict[str, Any]) -> Table | None:
    """The volumes without a body or without two lungs, each with what the plausibility checks found
    (``ctdiff.metrics.anatomy``: the criteria each rejected component missed), real ones first; None when every
    volume has two lungs (or ``metrics.json`` predates the per-volume rows)."""
    rows = [(kind, v["volume"], v["status"], v.get("reason") or "")
            for kind in ("real", "synthetic") for v in anatomy.get("per_volume", {}).get(kind, ())
            if v["status"] != "two lungs"]
    if not rows:
        return None
    more = len(rows) - MAX_MISS_ROWS
    caption = "Volumes without two lungs, and why" + (f" (first {MAX_MISS_ROWS}; {more} more in metrics.json)"
                                                      if more > 0 else "")
    return table(["set", "volume", "found", "why"], rows[:MAX_MISS_ROWS], caption=caption, id="anatomy-misses")


def memorisation_rows(memorisation: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows (synthetic, nearest training volume, L2 distance) of the closest synthetic-to-train pairs."""
    return [(p["synthetic"], p["train"], f"{p['distance']:.4g}") for p in memorisation["closest_pairs"]]


def memorisation_summary(memorisation: dict[str, Any]) -> str:
    """One paragraph: flagged count, the rule and the held-out reference distances."""
    ref = memorisation["test_to_train"]
    n = len(memorisation["per_sample"])
    flagged = ", ".join(memorisation["flagged"]) or "none"
    return (f"{memorisation['n_flagged']} of {n} synthetic volumes flagged as near-copies of a training volume "
            f"({flagged}); rule: {memorisation['rule']} ({memorisation['threshold']:.4g}). Held-out "
            f"test-to-train L2 distances over {ref['n']} volumes: min {ref['min']:.4g}, 5th percentile "
            f"{ref['p05']:.4g}, median {ref['median']:.4g}, max {ref['max']:.4g}.")


def memorisation_comparison(memorisation: dict[str, Any]) -> tuple[list[str], list[tuple[str, ...]]]:
    """(header, rows) of the voxel and the feature-space audit side by side: flagged count and volumes, the
    threshold, the held-out distances and the closest pair of each (``memorisation['features']``)."""
    audits = [memorisation, memorisation["features"]]
    n = len(memorisation["per_sample"])

    def closest(a: dict) -> str:
        if not a["closest_pairs"]:
            return "—"
        p = a["closest_pairs"][0]
        return f"{p['synthetic']} – {p['train']} ({p['distance']:.4g})"

    rows = [
        ("near-copies flagged", *(f"{a['n_flagged']} of {n}" for a in audits)),
        ("flagged volumes", *(", ".join(a["flagged"]) or "none" for a in audits)),
        ("threshold: closest held-out volume to the training set", *(f"{a['threshold']:.4g}" for a in audits)),
        ("held-out to training, median", *(f"{a['test_to_train']['median']:.4g}" for a in audits)),
        ("closest synthetic–training pair", *(closest(a) for a in audits)),
    ]
    net = memorisation["features"].get(keys.FEATURE_NETWORK, {})
    name = f"Med3D ResNet-{net['depth']} features" if "depth" in net else "Med3D features"
    if net and not net.get("pretrained", True):
        name += " (random weights)"
    return ["", "voxels (L2)", f"{name} (L2)"], rows


def qc_summary(summary_tsv: Path) -> pd.DataFrame:
    """The cohort summary (``qc/summary.tsv``, :data:`ctdiff.ingest.cohort.SUMMARY_COLUMNS`): counts per
    stage, decision and reason."""
    summary = pd.read_csv(summary_tsv, sep="\t", keep_default_na=False, dtype=str)
    missing = set(SUMMARY_COLUMNS) - set(summary.columns)
    if missing:
        raise ValueError(f"{summary_tsv} lacks the columns {sorted(missing)}")
    return summary[SUMMARY_COLUMNS]


def nodule_section(nodules: dict[str, Any], png: Path | None) -> Section:
    """The "Nodule control" section: synthetic against real (``ctdiff.metrics.nodule_control``)."""
    def cell(v, fmt):
        return "—" if v is None else format(v, fmt)

    measures = [("requested nodules", "n_nodules", "d"), ("LoG detection rate inside the mask", "detection_rate", ".2f"),
            ("contrast vs lung shell (HU, mean)", "contrast_hu_mean", ".0f"),
            ("blob / mask diameter (median, detected)", "size_ratio_median", ".2f"),
            ("spurious blobs in the lungs per volume", "spurious_per_volume", ".1f")]
    rows = [(name, cell(nodules["synthetic"][k], f), cell(nodules["real"][k], f)) for name, k, f in measures]
    text = ("Each synthetic volume was drawn with the nodule mask of a held-out real volume; both are measured "
            "alike on that mask: mean HU inside each nodule minus the air-like lung within "
            f"{nodules['settings']['shell_mm']:g} mm of it, whether scikit-image's LoG detector finds a blob in it and "
            "its size, and blobs in the lungs away from every nodule (vessels seen end-on count too: compare with "
            "the real column, not with zero).")
    images = () if png is None else (Image(Path(png), "crops through requested nodules, real and synthetic, "
                                           "axial, coronal and sagittal, mask contour in red", "nodules"),)
    return Section("Nodule control", text=text, tables=(table(["", "synthetic", "real"], rows, id="nodules"),),
                   images=images)


def build_sections(
    metrics_json: Path,
    qc_summary_tsv: Path,
    config: dict[str, Any],
    *,
    figure1_png: Path,
    learning_curve_png: Path,
    memorisation_png: Path | None = None,
    pairs_png: Path | None = None,
    variants_tsv: Path | None = None,
    anatomy_png: Path | None = None,
    reader_json: Path | None = None,
    nodules_png: Path | None = None,
    downstream_jsons: Sequence[Path] = (),
) -> list[Section]:
    """The report's sections, in order, from the run's files: the metrics table, then how to read it
    (``ctdiff.report.guide``), then the rest.

    ``variants_tsv`` (the variants table, ``ctdiff.metrics.variant_table.variant_table``) adds a section after
    the metrics; ``memorisation_png`` (the distance histogram) and ``pairs_png`` (the closest pairs as
    images) go into the memorisation section, which exists when ``metrics.json`` records the audit;
    ``anatomy_png`` (``ctdiff.report.plots.anatomy_plot``) goes into the "Anatomy (HU)" section, which exists when
    ``metrics.json`` records the anatomy; ``nodules_png`` (``ctdiff.report.plots.nodule_figure``) goes into the
    "Nodule control" section, which exists when ``metrics.json`` records it (``model.condition: nodules``).
    ``reader_json`` (``ctdiff.reader.analysis``) adds the "Reader study" section after Figure 1, waiting for
    answers until there are some. ``downstream_jsons`` (the downstream stage's arms, the real one first,
    ``ctdiff.downstream.stage``) add the "Downstream use" section after the nodule control.
    """
    metrics = json.loads(Path(metrics_json).read_text())
    sections = [Section("Metrics", tables=(
        table(["metric", "this run", "paper", "note"], metrics_rows(metrics), id="metrics"),))]
    sections.append(Section("How to read the numbers", text=guide_text(metrics), tables=(
        table(GUIDE_HEADER, guide_rows(metrics), id="reading-guide"),)))
    if variants_tsv is not None:
        header, rows, sentence = variant_rows(read_variant_table(variants_tsv))
        sections.append(Section("Variants and samplers", text=sentence, tables=(table(header, rows, id="variants"),)))
    memorisation = metrics.get(keys.MEMORISATION)
    if memorisation:
        pairs = table(["synthetic", "nearest training volume", "L2 distance"], memorisation_rows(memorisation),
                       caption="Closest pairs")
        images = [Image(Path(png), alt, id) for png, alt, id in (
            (memorisation_png, "L2 distance to the nearest training volume: synthetic and test volumes",
             "memorisation-histogram"),
            (pairs_png, "closest synthetic and training volumes", "closest-pairs"),
        ) if png is not None]
        tables = [pairs]
        if "features" in memorisation:  # the feature-space audit, side by side with the voxel audit
            header, rows = memorisation_comparison(memorisation)
            tables = [table(header, rows, caption="Voxels and Med3D features", id="memorisation-audits"), pairs,
                      table(["synthetic", "nearest training volume", "feature distance"],
                             memorisation_rows(memorisation["features"]), caption="Closest pairs in feature space")]
        sections.append(Section("Memorisation", text=memorisation_summary(memorisation), tables=tuple(tables),
                                images=tuple(images)))
    if metrics.get(keys.MEMBERSHIP):  # beside the memorisation audits: the model, not its samples, is audited
        sections.append(privacy_section(metrics[keys.MEMBERSHIP]))
    anatomy = metrics.get(keys.ANATOMY)
    if anatomy:
        images = () if anatomy_png is None else (
            Image(Path(anatomy_png), "anatomy in HU: body HU histogram, lung volumes, per-class W1 with the floor",
                  "anatomy"),)
        sections.append(Section("Anatomy (HU)", text=anatomy_text(anatomy), tables=anatomy_tables(anatomy),
                                images=images))
    if metrics.get(keys.NODULES):
        sections.append(nodule_section(metrics[keys.NODULES], nodules_png))
    if downstream_jsons:
        sections.append(downstream_section([json.loads(Path(p).read_text()) for p in downstream_jsons]))
    figure1 = Image(Path(figure1_png), "Figure 1: axial, coronal and sagittal slices, real (a) and synthetic (b)",
                    "figure1")
    sections.append(Section("Figure 1", images=(figure1,)))
    if reader_json is not None:
        sections.append(reader_section(json.loads(Path(reader_json).read_text()),
                                       str(Path(reader_json).parent / "study")))
    sections.append(Section("Learning curve", images=(Image(Path(learning_curve_png), "training loss",
                                                            "learning-curve"),)))
    qc = qc_summary(qc_summary_tsv)
    sections.append(Section("Data QC", text="Series found, items converted, usable cohort.", tables=(
        table(list(qc.columns), list(qc.itertuples(index=False, name=None))),)))
    provenance = {k: metrics[k] for k in (keys.N_REAL, keys.N_SYNTHETIC, keys.N_TRAIN, keys.VOLUME_SHAPE,
                                          keys.FEATURE_NETWORK) if k in metrics}
    provenance.update(metrics.get(keys.PROVENANCE, {}))
    sections.append(Section("Provenance", code=yaml.safe_dump(provenance, sort_keys=False)))
    sections.append(Section("Config", code=yaml.safe_dump(config, sort_keys=False)))
    return sections


def _markdown_table(t: Table) -> str:
    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [line(t.header), "|" + "---|" * len(t.header), *map(line, t.rows)]
    return (f"{t.caption}:\n\n" if t.caption else "") + "\n".join(lines)


def _markdown_image(i: Image, directory: Path) -> str:
    link = Path(os.path.relpath(i.path.absolute(), Path(directory).absolute())).as_posix()
    return f"![{i.alt}]({link})"


def render_markdown(sections: list[Section], directory: Path) -> str:
    """The report as Markdown; images are links relative to ``directory``, the folder report.md lies in."""
    parts = ["# ctdiff report"]
    for s in sections:
        blocks = [f"## {s.title}", s.text, *map(_markdown_table, s.tables)]
        blocks += [_markdown_image(i, directory) for i in s.images]
        blocks.append(f"```yaml\n{s.code}```" if s.code else "")
        parts.append("\n\n".join(filter(None, blocks)))
    return "\n\n".join(parts) + "\n"


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in t.rows)
    out = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if t.id:
        out = f'<div id="{t.id}">{out}</div>'
    return (f"<h3>{html.escape(t.caption)}</h3>\n" if t.caption else "") + out


def _html_image(i: Image) -> str:
    data = base64.b64encode(i.path.read_bytes()).decode()
    return (f'<img id="{i.id}" alt="{html.escape(i.alt)}" src="data:image/png;base64,{data}" '
            'style="max-width:100%">')


def render_html(sections: list[Section]) -> str:
    """The report as one self-contained HTML page, images embedded as base64."""
    body = []
    for s in sections:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.text:
            body.append(f"<p>{html.escape(s.text)}</p>")
        body += [*map(_html_table, s.tables), *map(_html_image, s.images)]
        if s.code:
            body.append(f"<pre>{html.escape(s.code)}</pre>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ctdiff report</title>
<style>body{{font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}}
pre{{background:#f6f6f6;padding:.6rem;overflow:auto}}</style></head><body>
<h1>ctdiff report</h1>
""" + "\n".join(body) + "\n</body></html>\n"


def write_report(metrics_json: Path, qc_summary_tsv: Path, config: dict[str, Any], out_md: Path, out_html: Path,
                 **files: Any) -> None:
    """Write ``report.md`` and the self-contained ``report.html`` of :func:`build_sections`, which takes
    ``metrics_json``, ``qc_summary_tsv``, ``config`` and the run's other files (``files``, by keyword)."""
    sections = build_sections(metrics_json, qc_summary_tsv, config, **files)
    with atomic_path(Path(out_md)) as tmp:
        tmp.write_text(render_markdown(sections, Path(out_md).parent))
    with atomic_path(Path(out_html)) as tmp:
        tmp.write_text(render_html(sections))
