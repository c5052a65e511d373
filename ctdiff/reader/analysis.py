"""The reader study's analysis: the returned answers joined with the key, per reader and pooled.

For each reader and for all readings pooled: accuracy, sensitivity and specificity for detecting synthetic cases
with Clopper–Pearson intervals, the binomial test of accuracy against 50 % and Fisher's exact test of answer
against truth, and the ROC AUC of the 10-level ratings with DeLong's interval (:mod:`ctdiff.reader.stats`).
Agreement: Fleiss' kappa over the cases every counted reader answered. Per case: how many readers it fooled.
Problems with the answer files (:mod:`ctdiff.reader.answers`) are listed by file and reader; the rest is
analysed. With no answer files the analysis says so and the report shows the study waiting for answers.

Pooled intervals treat every reading as independent. Readers share the cases and each reader reads all of
them, so the pooled intervals are too narrow when readers or cases differ; the per-reader rows do not have
that problem.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ctdiff.files import write_json, write_tsv
from ctdiff.reader.answers import Reading, collect
from ctdiff.reader.stats import auc_delong, binomial_p, fisher_p, fleiss_kappa, proportion, score

CASE_COLUMNS = ("case", "position", "truth", "source", "readings", "called_synthetic", "fooled", "fooled_share",
                "mean_score")
READER_COLUMNS = ("reader", "file", "readings", "accuracy", "accuracy_low", "accuracy_high", "p_binomial",
                  "p_fisher", "sensitivity", "sensitivity_low", "sensitivity_high", "specificity",
                  "specificity_low", "specificity_high", "auc", "auc_low", "auc_high")


def summarise(readings: list[tuple[str, str, int]], level: float) -> dict:
    """The statistics of ``(truth, answer, confidence)`` readings (see the module docstring)."""
    truth = [t for t, _, _ in readings]
    answers = [a for _, a, _ in readings]
    right = sum(t == a for t, a in zip(truth, answers))
    syn = [a for t, a in zip(truth, answers) if t == "synthetic"]
    real = [a for t, a in zip(truth, answers) if t == "real"]
    scores = [score(a, c) for _, a, c in readings]
    return {
        "readings": len(readings),
        "accuracy": proportion(right, len(readings), level),
        "p_binomial": binomial_p(right, len(readings)),
        "p_fisher": fisher_p(truth, answers),
        "sensitivity": proportion(syn.count("synthetic"), len(syn), level),
        "specificity": proportion(real.count("real"), len(real), level),
        "auc": auc_delong([s for s, t in zip(scores, truth) if t == "synthetic"],
                          [s for s, t in zip(scores, truth) if t == "real"], level),
    }


def agreement(readings: list[Reading], cases: list[str]) -> dict | None:
    """Fleiss' kappa over the cases every reader answered; None with fewer than two readers or such cases."""
    common = [c for c in cases if all(c in r.answers for r in readings)]
    if len(readings) < 2 or len(common) < 2:
        return None
    ratings = np.array([[r.answers[c][0] == "synthetic" for r in readings] for c in common], dtype=int)
    return {"kappa": fleiss_kappa(ratings), "cases": len(common), "readers": len(readings)}


def case_table(key: dict, readings: list[Reading]) -> list[dict]:
    """One row per case: readings, how many called it synthetic, how many it fooled (a synthetic case called
    real, a real one called synthetic), the mean 10-level rating. Synthetic cases first, most convincing
    (most fooled) first, then real cases, the most often doubted first."""
    rows = []
    for c in key["cases"]:
        got = [r.answers[c["case"]] for r in readings if c["case"] in r.answers]
        called = sum(a == "synthetic" for a, _, _ in got)
        fooled = len(got) - called if c["truth"] == "synthetic" else called
        rows.append({"case": c["case"], "position": c["position"], "truth": c["truth"], "source": c["source"],
                     "readings": len(got), "called_synthetic": called, "fooled": fooled,
                     "fooled_share": fooled / len(got) if got else None,
                     "mean_score": float(np.mean([score(a, k) for a, k, _ in got])) if got else None})
    return sorted(rows, key=lambda r: (r["truth"] != "synthetic", -(r["fooled_share"] or 0), r["position"]))


def analyse(key_json: Path, answer_files: list[Path], answers_folder: str, level: float = 0.95) -> dict:
    """The analysis of ``answer_files`` against the key ``key_json`` (see the module docstring)."""
    key = json.loads(Path(key_json).read_text())
    truth = {c["case"]: c["truth"] for c in key["cases"]}
    readings, problems = collect(key, answer_files)
    readers = []
    for r in readings:
        stats = summarise([(truth[c], a, k) for c, (a, k, _) in r.answers.items()], level)
        readers.append({"reader": r.reader, "file": r.file, **stats})
    pooled = [(truth[c], a, k) for r in readings for c, (a, k, _) in r.answers.items()]
    return {
        "format": "ctdiff-reader-analysis",
        "study": key["study"],
        "level": level,
        "n_cases": len(key["cases"]),
        "n_real": sum(t == "real" for t in truth.values()),
        "n_synthetic": sum(t == "synthetic" for t in truth.values()),
        "answers_folder": str(answers_folder),
        "answer_files": [Path(p).name for p in sorted(answer_files)],
        "problems": problems,
        "readers": readers,
        "pooled": summarise(pooled, level) if pooled else None,
        "agreement": agreement(readings, list(truth)),
        "cases": case_table(key, readings),
        "comments": [{"reader": r.reader, "case": c, "truth": truth[c], "answer": a, "comment": text}
                     for r in readings for c, (a, _, text) in r.answers.items() if text.strip()],
    }


def _flat(name: str, value: dict | None) -> dict:
    if value is None:
        return {}
    est = value.get("estimate", value.get("auc"))
    return {name: est, f"{name}_low": value.get("low"), f"{name}_high": value.get("high")}


def write_analysis(key_json: Path, answers_folder: Path, answer_files: list[Path], out_json: Path,
                   out_cases: Path, out_readers: Path, level: float = 0.95) -> dict:
    """:func:`analyse`, written as ``analysis.json``, the per-case table and the per-reader table (TSV; the
    pooled row last)."""
    result = analyse(key_json, answer_files, str(answers_folder), level)
    write_json(Path(out_json), result)
    write_tsv(Path(out_cases), result["cases"], CASE_COLUMNS)
    rows = [("", r) for r in result["readers"]] + ([("pooled", result["pooled"])] if result["pooled"] else [])
    write_tsv(Path(out_readers), [
        {"reader": name or r["reader"], "file": r.get("file", ""), "readings": r["readings"],
         **_flat("accuracy", r["accuracy"]), "p_binomial": r["p_binomial"], "p_fisher": r["p_fisher"],
         **_flat("sensitivity", r["sensitivity"]), **_flat("specificity", r["specificity"]), **_flat("auc", r["auc"])}
        for name, r in rows], READER_COLUMNS)
    return result
