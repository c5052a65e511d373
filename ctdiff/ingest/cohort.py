"""The cohort after ingestion: which items made it, and why the others did not.

Inputs are the discovery inventory (one row per DICOM series, see :mod:`ctdiff.ingest.discover`) and the
convert stage's one-row QC tables (one per chosen item, see
:func:`ctdiff.ingest.convert.convert_or_reject`). Outputs, both tab-separated and written atomically:

- the cohort table: every convert QC row in one file, sorted by item; downstream stages use the items
  whose ``decision`` is ``'converted'`` (read by :func:`ctdiff.plan.converted_items`, which the workflow
  calls when it parses);
- the summary: counts per ``(stage, decision, reason)``. Stage ``discover`` counts series, stage
  ``convert`` counts items, stage ``cohort`` counts the usable items and patients. A reason is reduced to
  its category, the text before the first ``':'`` (``'missing slice(s): spacing ...'`` ->
  ``'missing slice(s)'``), so that equal faults add up.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from ctdiff.ingest.convert import QC_COLUMNS
from ctdiff.files import write_tsv

SUMMARY_COLUMNS = ["stage", "decision", "reason", "count"]


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def reason_category(reason: str) -> str:
    """The category of a reason: its text before the first ':' (the whole reason if it has none)."""
    return reason.split(":", 1)[0].strip()


def summarise(inventory_tsv: Path, convert_qc: Iterable[Path], cohort_tsv: Path,
              summary_tsv: Path) -> dict[str, str]:
    """Gather the convert QC rows into the cohort table and count decisions and reasons.

    Args:
        inventory_tsv: the discovery inventory.
        convert_qc: the one-row QC table of every chosen item.
        cohort_tsv: written: all QC rows, :data:`ctdiff.ingest.convert.QC_COLUMNS`, sorted by item.
        summary_tsv: written: :data:`SUMMARY_COLUMNS`, one row per (stage, decision, reason category).

    Returns:
        ``{item: patient}`` of the converted items (possibly empty: the caller decides whether a cohort
        without a usable scan is an error, after both tables are written to show why).
    """
    qc_rows = sorted((row for path in convert_qc for row in _read_tsv(path)), key=lambda r: r["item"])
    write_tsv(cohort_tsv, qc_rows, QC_COLUMNS)

    series = Counter((r["decision"], reason_category(r["reason"])) for r in _read_tsv(inventory_tsv))
    items = Counter((r["decision"], reason_category(r["reason"])) for r in qc_rows)
    usable = {r["item"]: r["patient"] for r in qc_rows if r["decision"] == "converted"}
    summary = [
        {"stage": stage, "decision": decision, "reason": reason, "count": n}
        for stage, counts in (("discover", series), ("convert", items))
        for (decision, reason), n in sorted(counts.items())
    ]
    summary += [
        {"stage": "cohort", "decision": "usable", "reason": "items", "count": len(usable)},
        {"stage": "cohort", "decision": "usable", "reason": "patients", "count": len(set(usable.values()))},
    ]
    write_tsv(summary_tsv, summary, SUMMARY_COLUMNS)
    return usable
