"""The run's report: metrics with bootstrap intervals beside the paper's and the real-vs-real floor, the
sampler comparison (when configured), the memorisation audit, Figure 1, the learning curve, QC summary and
config.

Two renderings of the same content: ``report.md`` for terminals and diffs, and a self-contained
``report.html`` (images embedded as base64) for a browser.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from ctdiff.io import atomic_path  # noqa: E402
from ctdiff.metrics.compare import read_sampler_table  # noqa: E402
from ctdiff.metrics.evaluate import PAPER  # noqa: E402


def _with_ci(text: str, interval: dict | None, level: float | None) -> str:
    """``text`` followed by the bootstrap interval, e.g. '12.345 [95 % CI 10.100 to 14.800]'."""
    if interval:
        text += f" [{round(100 * level)} % CI {interval['low']:.3f} to {interval['high']:.3f}]"
    return text


def metrics_rows(metrics: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Rows (metric, this run, paper, note) of the metrics table: values with their bootstrap intervals where
    present, then the real-vs-real floor."""
    net = metrics.get("feature_network", {})
    fid_note = "" if net.get("pretrained") else "seeded random feature network: not comparable to the paper"
    if metrics.get("fid_rank_deficient"):
        fid_note = "; ".join(filter(None, [fid_note, "fewer volumes than feature dimensions: covariance rank-deficient"]))
    paired, diversity = metrics["msssim_nearest_real"], metrics["msssim_diversity"]
    boot = metrics.get("bootstrap", {})
    level = boot.get("level")
    rows = [
        ("FID (Med3D features)", _with_ci(f"{metrics['fid']:.3f}", boot.get("fid"), level),
         f"{PAPER['fid']:.2f}", fid_note),
        ("MS-SSIM, synthetic vs nearest real (higher = closer; mean ± sd)",
         _with_ci(f"{paired['mean']:.3f} ± {paired['std']:.3f}", boot.get("msssim_nearest_real"), level),
         f"{PAPER['msssim']:.3f}", "paper's protocol; the interval is for the mean"),
        ("MS-SSIM, synthetic vs synthetic (lower = more diverse)",
         _with_ci(f"{diversity['mean']:.3f} ± {diversity['std']:.3f}", boot.get("msssim_diversity"), level),
         "—", "diversity, as WDM-3D reports it; the interval is for the mean"),
    ]
    floor = metrics.get("floor")
    if floor is not None:
        if floor.get("fid") is None:
            value, note = "—", f"not computed: {floor.get('reason', 'no reason recorded')}"
        else:
            value = f"FID {floor['fid']:.3f}; MS-SSIM {floor['msssim_nearest_real']:.3f}"
            note = (f"two halves of the test set ({len(floor['half_a'])} vs {len(floor['half_b'])} volumes), "
                    "what real data scores against real data")
        rows.append(("Floor: real vs real (FID; nearest-real MS-SSIM)", value, "—", note))
    if boot.get("n_boot"):
        methods = "; ".join(f"{name}: {boot[key]['method']}" for name, key in
                            (("FID", "fid"), ("MS-SSIM", "msssim_nearest_real"), ("diversity", "msssim_diversity"))
                            if "method" in boot.get(key, {}))
        rows.append(("Intervals", f"{boot['n_boot']} bootstrap replicates, seed {boot['seed']}", "—", methods))
    elif boot:
        rows.append(("Intervals", "none (evaluate.bootstrap is 0)", "—", ""))
    return rows


def _value_ci(value: float, low: float, high: float) -> str:
    """'12.345 [10.100, 14.800]', or the value alone where the interval is missing (NaN)."""
    text = f"{value:.3f}"
    if pd.notna(low) and pd.notna(high):
        text += f" [{low:.3f}, {high:.3f}]"
    return text


def sampler_rows(table: pd.DataFrame) -> tuple[list[str], list[tuple], str]:
    """(header, rows, the sentence that introduces them) of the sampler comparison, from ``samplers.tsv``."""
    level = table["ci_level"].dropna()
    ci = f" [{round(100 * level.iloc[0])} % CI]" if len(level) else ""
    header = ["set", "sampler", "steps", "eta", "network evaluations per volume", f"FID{ci}",
              f"MS-SSIM, nearest real (higher = closer){ci}", f"MS-SSIM, diversity (lower = more diverse){ci}"]
    rows = [
        (r.set, r.sampler, int(r.steps), "—" if pd.isna(r.eta) else f"{r.eta:g}", int(r.network_evaluations),
         _value_ci(r.fid, r.fid_low, r.fid_high),
         _value_ci(r.msssim_nearest_real, r.msssim_nearest_real_low, r.msssim_nearest_real_high),
         _value_ci(r.msssim_diversity, r.msssim_diversity_low, r.msssim_diversity_high))
        for r in table.itertuples(index=False)
    ]
    first = table.iloc[0]
    sentence = (f"Every row draws its {int(first.n_synthetic)} volumes from the same checkpoint (step "
                f"{int(first.checkpoint_step)}) with the same seeds (sample.seed = {int(first.sample_seed)}: sample i "
                f"starts from the same noise x_T in every row) and is scored against the same {int(first.n_real)} "
                "held-out real volumes; 'main' is the sample section's set used above, and network evaluations per "
                "volume are the cost, whatever the machine.")
    return header, rows, sentence


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


def memorisation_png(memorisation: dict[str, Any]) -> bytes:
    """PNG bytes of a histogram of synthetic-to-train against test-to-train L2 distances, with the threshold."""
    syn = [p["distance"] for p in memorisation["per_sample"]]
    test = [p["distance"] for p in memorisation["test_to_train"]["per_sample"]]
    fig, ax = plt.subplots(figsize=(5.0, 3.0), constrained_layout=True)
    bins = np.histogram_bin_edges(np.concatenate([syn, test]), bins=min(30, max(5, len(syn) + len(test))))
    ax.hist(test, bins=bins, alpha=0.6, label=f"test → nearest train ({len(test)})")
    ax.hist(syn, bins=bins, alpha=0.6, label=f"synthetic → nearest train ({len(syn)})")
    ax.axvline(memorisation["threshold"], color="k", linestyle="--", linewidth=1, label="near-copy threshold")
    ax.set_xlabel("L2 distance to the nearest training volume")
    ax.set_ylabel("volumes")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


QC_COLUMNS = ["stage", "decision", "reason", "count"]


def qc_summary(summary_tsv: Path) -> pd.DataFrame:
    """The cohort summary (``qc/summary.tsv``): counts per stage, decision and reason."""
    table = pd.read_csv(summary_tsv, sep="\t", keep_default_na=False, dtype=str)
    missing = set(QC_COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"{summary_tsv} lacks the columns {sorted(missing)}")
    return table[QC_COLUMNS]


def learning_curve_png(log_csv: Path) -> bytes:
    """PNG bytes of the training loss against the step (log scale)."""
    log = pd.read_csv(log_csv)
    fig, ax = plt.subplots(figsize=(5.0, 3.0), constrained_layout=True)
    ax.plot(log["step"], log["loss"])
    ax.set_xlabel("step")
    ax.set_ylabel("ε-MSE loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def _markdown_table(header: list[str], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[tuple]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(
    metrics_json: Path,
    figure_png: Path,
    log_csv: Path,
    qc_summary_tsv: Path,
    config: dict[str, Any],
    out_md: Path,
    out_html: Path,
    pairs_png: Path | None = None,
    samplers_tsv: Path | None = None,
) -> None:
    """Write ``report.md`` and the self-contained ``report.html``; ``pairs_png`` (the closest
    synthetic/training pairs as images) goes into the memorisation section, ``samplers_tsv`` (the sampler
    comparison, ``ctdiff.metrics.compare.sampler_table``) into a section after the metrics."""
    metrics = json.loads(Path(metrics_json).read_text())
    rows = metrics_rows(metrics)
    qc = qc_summary(qc_summary_tsv)
    qc_rows = list(qc.itertuples(index=False, name=None))
    header = ["metric", "this run", "paper", "note"]
    provenance = {k: metrics[k] for k in ("n_real", "n_synthetic", "n_train", "volume_shape", "feature_network")
                  if k in metrics}
    provenance.update(metrics.get("provenance", {}))
    config_yaml = yaml.safe_dump(config, sort_keys=False)
    provenance_yaml = yaml.safe_dump(provenance, sort_keys=False)

    samplers_md, samplers_html = [], ""
    if samplers_tsv is not None:
        s_header, s_rows, s_sentence = sampler_rows(read_sampler_table(samplers_tsv))
        samplers_md = ["## Samplers\n\n" + s_sentence + "\n\n" + _markdown_table(s_header, s_rows)]
        samplers_html = (f'<h2>Samplers</h2>\n<p id="samplers-note">{html.escape(s_sentence)}</p>\n'
                         f'<div id="samplers">{_html_table(s_header, s_rows)}</div>\n')

    memorisation = metrics.get("memorisation")
    mem_header = ["synthetic", "nearest training volume", "L2 distance"]
    mem_md, mem_html = [], ""
    if memorisation:
        mem_rows = memorisation_rows(memorisation)
        mem_md = ["## Memorisation\n\n" + memorisation_summary(memorisation)
                  + " The histogram is in report.html.\n\nClosest pairs:\n\n" + _markdown_table(mem_header, mem_rows)]
        mem_b64 = base64.b64encode(memorisation_png(memorisation)).decode()
        mem_html = f"""<h2>Memorisation</h2>
<p id="memorisation">{html.escape(memorisation_summary(memorisation))}</p>
<img id="memorisation-histogram" alt="L2 distance to the nearest training volume: synthetic and test volumes"
 src="data:image/png;base64,{mem_b64}" style="max-width:100%">
<h3>Closest pairs</h3>
{_html_table(mem_header, mem_rows)}
"""
        if pairs_png is not None:
            pairs_b64 = base64.b64encode(Path(pairs_png).read_bytes()).decode()
            mem_html += (f'<img id="closest-pairs" alt="closest synthetic and training volumes" '
                         f'src="data:image/png;base64,{pairs_b64}" style="max-width:100%">\n')
            mem_md[0] += "\n\n![closest synthetic/training pairs](figures/closest_pairs.png)"

    md = "\n\n".join([
        "# ctdiff report",
        "## Metrics\n\n" + _markdown_table(header, rows),
        *samplers_md,
        *mem_md,
        "## Figure 1\n\n![Figure 1: real (a) and synthetic (b)](figures/figure1.png)",
        "## Data QC (series found, items converted, usable cohort)\n\n" + _markdown_table(QC_COLUMNS, qc_rows),
        "## Provenance\n\n```yaml\n" + provenance_yaml + "```",
        "## Config\n\n```yaml\n" + config_yaml + "```",
    ]) + "\n"
    with atomic_path(Path(out_md)) as tmp:
        tmp.write_text(md)

    figure_b64 = base64.b64encode(Path(figure_png).read_bytes()).decode()
    curve_b64 = base64.b64encode(learning_curve_png(log_csv)).decode()
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ctdiff report</title>
<style>body{{font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}}
pre{{background:#f6f6f6;padding:.6rem;overflow:auto}}</style></head><body>
<h1>ctdiff report</h1>
<h2>Metrics</h2>
<div id="metrics">{_html_table(header, rows)}</div>
{samplers_html}{mem_html}<h2>Figure 1</h2>
<img id="figure1" alt="Figure 1: axial, coronal and sagittal slices, real (a) and synthetic (b)"
 src="data:image/png;base64,{figure_b64}" style="max-width:100%">
<h2>Learning curve</h2>
<img id="learning-curve" alt="training loss" src="data:image/png;base64,{curve_b64}" style="max-width:100%">
<h2>Data QC</h2>
{_html_table(QC_COLUMNS, qc_rows)}
<h2>Provenance</h2><pre>{html.escape(provenance_yaml)}</pre>
<h2>Config</h2><pre>{html.escape(config_yaml)}</pre>
</body></html>
"""
    with atomic_path(Path(out_html)) as tmp:
        tmp.write_text(page)
