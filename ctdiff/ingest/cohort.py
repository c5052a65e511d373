"""The cohort after ingestion: which items made it, and why the others did not.

Inputs are the discovery inventory (one row per DICOM series, see :mod:`ctdiff.ingest.discover`),
discovery's table of annotation XML files, the convert stage's one-row QC tables (one per chosen item, see
:func:`ctdiff.ingest.convert.convert_or_reject`) and the annotation QC beside each converted volume
(:func:`ctdiff.ingest.annotations.ingest.annotate`). Outputs, all tab-separated and written atomically:

- the cohort table: every convert QC row in one file, sorted by item; downstream stages use the items
  whose ``decision`` is ``'converted'`` (read by :func:`ctdiff.plan.converted_items`, which the workflow
  calls when it parses);
- the XML table: one row per annotation XML file found, with its final decision: discovery's, or for a
  file matched to an item, what conversion made of it
  (:func:`ctdiff.ingest.annotations.ingest.cohort_xml`);
- the summary: counts per ``(stage, decision, reason)``. Stage ``discover`` counts series, stage
  ``convert`` counts items, stage ``annotations`` counts XML files (the XML table's decisions), stage
  ``cohort`` counts the usable items and patients. A reason is reduced to its category, the text before
  the first ``':'`` (``'missing slice(s): spacing ...'`` -> ``'missing slice(s)'``), so that equal faults
  add up.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from ctdiff.ingest.annotations.ingest import QC_NAME, XML_COLUMNS, cohort_xml
from ctdiff.ingest.convert import QC_COLUMNS
from ctdiff.files import write_tsv

SUMMARY_COLUMNS = ["stage", "decision", "reason", "count"]


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def reason_category(reason: str) -> str:
    """The category of a reason: its text before the first ':' (the whole reason if it has none)."""
    return reason.split(":", 1)[0].strip()


def summarise(inventory_tsv: Path, convert_qc: Iterable[Path], cohort_tsv: Path, summary_tsv: Path, *,
              found_xml_tsv: Path, nifti_dirs: Iterable[Path], root: Path, xml_tsv: Path) -> dict[str, str]:
    """Gather the convert QC rows into the cohort table, the fate of every annotation XML file into the XML
    table, and count decisions and reasons.

    Args:
        inventory_tsv: the discovery inventory.
        convert_qc: the one-row QC table of every chosen item.
        cohort_tsv: written: all QC rows, :data:`ctdiff.ingest.convert.QC_COLUMNS`, sorted by item.
        summary_tsv: written: :data:`SUMMARY_COLUMNS`, one row per (stage, decision, reason category).
        found_xml_tsv: discovery's XML table (:data:`ctdiff.ingest.annotations.ingest.XML_COLUMNS`).
        nifti_dirs: the convert output folder of every chosen item, named by the item; a converted item's
            holds its annotation QC (``annotations.tsv``).
        root: the DICOM tree root that the XML files are named relative to.
        xml_tsv: written: one row per XML file with its final decision
            (:func:`ctdiff.ingest.annotations.ingest.cohort_xml`).

    Returns:
        ``{item: patient}`` of the converted items (possibly empty: the caller decides whether a cohort
        without a usable scan is an error, after the tables are written to show why).
    """
    qc_rows = sorted((row for path in convert_qc for row in _read_tsv(path)), key=lambda r: r["item"])
    write_tsv(cohort_tsv, qc_rows, QC_COLUMNS)
    usable = {r["item"]: r["patient"] for r in qc_rows if r["decision"] == "converted"}

    folders = {Path(d).name: Path(d) for d in nifti_dirs}
    item_qc = {item: _read_tsv(folders[item] / QC_NAME) for item in usable if item in folders}
    xml_rows = cohort_xml(_read_tsv(found_xml_tsv), {r["item"]: r for r in qc_rows}, item_qc, root)
    write_tsv(xml_tsv, xml_rows, XML_COLUMNS)

    def counts(rows):
        return Counter((r["decision"], reason_category(r["reason"])) for r in rows)

    summary = [
        {"stage": stage, "decision": decision, "reason": reason, "count": n}
        for stage, rows in (("discover", _read_tsv(inventory_tsv)), ("convert", qc_rows), ("annotations", xml_rows))
        for (decision, reason), n in sorted(counts(rows).items())
    ]
    summary += [
        {"stage": "cohort", "decision": "usable", "reason": "items", "count": len(usable)},
        {"stage": "cohort", "decision": "usable", "reason": "patients", "count": len(set(usable.values()))},
    ]
    write_tsv(summary_tsv, summary, SUMMARY_COLUMNS)
    return usable
