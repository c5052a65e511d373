"""The reader study in the run's report: the text and tables of its section, from ``reader/analysis.json``
(:func:`ctdiff.reader.analysis.analyse`), as a :class:`~ctdiff.report.sections.Section`; with no answers yet the
section says where the study is and where answers go."""

from __future__ import annotations

from typing import Any

from ctdiff.report.sections import Section, table

Tables = list[tuple[str, list[str], list[tuple], str]]  # (caption, header, rows, id)


def _pct(p: dict | None) -> str:
    """'62.5 % [35.4, 84.8] (10/16)' of a proportion; '—' when it has no readings."""
    if not p or p["estimate"] is None:
        return "—"
    return f"{100 * p['estimate']:.1f} % [{100 * p['low']:.1f}, {100 * p['high']:.1f}] ({p['k']}/{p['n']})"


def _p(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def _auc(a: dict) -> str:
    if a["auc"] is None:
        return "—"
    return f"{a['auc']:.3f}" + ("" if a["se"] is None else f" [{a['low']:.3f}, {a['high']:.3f}]")


def _row(name: str, r: dict) -> tuple:
    return (name, r["readings"], _pct(r["accuracy"]), _p(r["p_binomial"]), _p(r["p_fisher"]),
            _pct(r["sensitivity"]), _pct(r["specificity"]), _auc(r["auc"]))


def reader_section(analysis: dict[str, Any], study_folder: str) -> Section:
    """The report's "Reader study" section."""
    text, tables = _text_and_tables(analysis, study_folder)
    return Section("Reader study", text=text, tables=tuple(
        table(header, rows, caption=caption, id=id) for caption, header, rows, id in tables))


def _text_and_tables(analysis: dict[str, Any], study_folder: str) -> tuple[str, Tables]:
    """(text, tables as (caption, header, rows, id)) of the section."""
    a = analysis
    level = round(100 * a["level"])
    intro = (f"Study {a['study']}: {a['n_cases']} cases ({a['n_real']} held-out real, {a['n_synthetic']} synthetic), "
             f"blinded, in {study_folder} (send study.zip beside it; the key stays in key.json).")
    tables: Tables = []
    if a["problems"]:
        tables.append(("Problems with the answer files (the rest is analysed)", ["file", "reader", "problem"],
                       [(p["file"], p["reader"], p["problem"]) for p in a["problems"]], "reader-problems"))
    if not a["readers"]:
        files = len(a["answer_files"])
        found = f" ({files} file(s) found, none usable)" if files else ""
        return (f"{intro} No answers yet{found}: put the readers' exported answer files (JSON or CSV) in "
                f"{a['answers_folder']} and rerun the workflow."), tables
    pooled = a["pooled"]
    syn = [c for c in a["cases"] if c["truth"] == "synthetic" and c["readings"]]
    fooled = sum(c["fooled"] for c in syn)
    readings = sum(c["readings"] for c in syn)
    agree = a["agreement"]
    kappa = (f"Agreement between readers: Fleiss' κ = {agree['kappa']:.3f} over the {agree['cases']} cases all "
             f"{agree['readers']} readers answered." if agree else "Agreement between readers needs two readers.")
    text = (f"{intro} {len(a['readers'])} reader(s), {pooled['readings']} readings: pooled accuracy "
            f"{_pct(pooled['accuracy'])}; synthetic cases were taken for real in {fooled} of {readings} readings. "
            "Positive = synthetic: sensitivity is the share of synthetic cases called synthetic, specificity the "
            f"share of real cases called real, with exact (Clopper–Pearson) {level} % intervals. Against chance: "
            "the binomial test of accuracy against 50 %, and Fisher's exact test of answer against truth, which "
            "stays valid when the mix is not 50/50. AUC: the ratings on 10 levels (real, certain = 1 … synthetic, "
            f"certain = 10), Mann–Whitney estimate with DeLong's {level} % interval. Pooled rows treat every "
            f"reading as independent, so their intervals are too narrow when readers differ. {kappa}")
    header = ["reader", "readings", f"accuracy [{level} % CI]", "p (accuracy vs 50 %)", "p (Fisher, answer vs truth)",
              "sensitivity", "specificity", f"AUC [{level} % CI, DeLong]"]
    rows = [_row(r["reader"], r) for r in a["readers"]] + [_row("pooled", pooled)]
    tables.insert(0, ("Per reader", header, rows, "reader-study"))
    cases = [(c["position"], c["case"], c["truth"], c["source"], c["readings"], c["fooled"],
              "—" if c["fooled_share"] is None else f"{100 * c['fooled_share']:.0f} %",
              "—" if c["mean_score"] is None else f"{c['mean_score']:.1f}") for c in a["cases"]]
    tables.insert(1, ("Per case: synthetic cases most convincing first, then real cases most often doubted first",
                      ["#", "case", "truth", "volume", "readings", "fooled", "fooled share",
                       "mean rating (1 real … 10 synthetic)"], cases, "reader-cases"))
    if a["comments"]:
        tables.append(("Comments", ["reader", "case", "truth", "answer", "comment"],
                       [(c["reader"], c["case"], c["truth"], c["answer"], c["comment"]) for c in a["comments"]],
                       "reader-comments"))
    return text, tables
