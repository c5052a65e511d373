"""Where the annotations enter the pipeline: discovery assigns each XML file to a chosen series, conversion
writes the nodule mask and table beside the volume, the cohort stage gathers what became of every file,
preprocessing resamples the mask with the volume.

Files beside the converted volume (``nifti/{item}/``):

- ``nodules.nii.gz``: uint8 labels on the volume's own grid (same array axes and affine as ``hu.nii.gz``):
  0 background, ``n`` the consensus voxels of the table's row with ``label`` ``n``;
- ``nodules.tsv``: the nodule table (:data:`~ctdiff.ingest.annotations.nodules.TABLE_COLUMNS`);
- ``annotations.tsv``: what happened to each XML file and every roi, nodule or point skipped or clipped
  (:data:`~ctdiff.ingest.annotations.nodules.QC_COLUMNS`).

A series without an XML file gets an empty table and an all-zero mask. A file that cannot be parsed is a QC
row with the reason; the rest goes on. Discovery reads each file only up to its SeriesInstanceUid, so a file
cut off after its header is matched there and rejected only when conversion parses it whole:
:func:`cohort_xml` puts the final decision of every file in one table (``qc/annotations.tsv``).
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ctdiff.ingest.annotations.lidc_xml import (LIDC_ROOT, NO_SERIES_UID, REJECTIONS, AnnotationError, parse,
                                                read_header)
from ctdiff.ingest.annotations.nodules import QC_COLUMNS, TABLE_COLUMNS, nodules
from ctdiff.ingest.annotations.rasterise import SliceGrid
from ctdiff.files import save_volume, write_tsv

log = logging.getLogger(__name__)

MASK_NAME = "nodules.nii.gz"
TABLE_NAME = "nodules.tsv"
QC_NAME = "annotations.tsv"

#: Columns of the XML tables, one row per XML file found: discovery's (``discover/annotations.tsv``) and
#: the cohort's (``qc/annotations.tsv``, :func:`cohort_xml`).
XML_COLUMNS = ["file", "root_element", "series_uid", "item", "decision", "reason"]

#: Why conversion refuses a whole file besides the parser's :data:`~ctdiff.ingest.annotations.lidc_xml.REJECTIONS`:
#: its SeriesInstanceUid is another series', or its nodules cannot be placed on the volume.
NOT_THIS_SERIES = "SeriesInstanceUid is not this series"
NOT_USED = "annotations not used"
#: Every category of reason for which a file matched at discovery is rejected at conversion.
FILE_REJECTIONS = (*REJECTIONS, NOT_THIS_SERIES, NOT_USED)
#: Reason category of a file whose series discovery chose but conversion rejected.
SERIES_NOT_CONVERTED = "its series was rejected at conversion"
#: Reason category of a matched file that was read with some of its elements skipped.
SKIPPED = "some elements skipped"


def assign_xml(root: Path, xml_files: list[str], item_of_series: dict[str, str],
               decision_of_series: dict[str, tuple[str, str]]) -> tuple[dict[str, list[str]], list[dict]]:
    """Match annotation files (paths relative to ``root``) to chosen items by their SeriesInstanceUid.

    Returns ``{item: [files]}`` and one row per file (:data:`XML_COLUMNS`) whose decision is
    ``matched``, ``ignored`` (a radiograph reading or other XML: root element not ``LidcReadMessage``),
    ``unmatched`` (no chosen series has its UID; the reason says whether a rejected series has it) or
    ``rejected`` (malformed XML up to the UID, or no UID). Only the header is read: a file broken after it
    is matched here and rejected by :func:`annotate`. Counts are logged.
    """
    files: dict[str, list[str]] = {}
    rows = []
    for rel in sorted(xml_files):
        row = {"file": rel, "root_element": "", "series_uid": "", "item": ""}
        try:
            name, uid = read_header(Path(root) / rel)
        except AnnotationError as err:
            row.update(decision="rejected", reason=err.reason)
            rows.append(row)
            continue
        row.update(root_element=name, series_uid=uid)
        if name != LIDC_ROOT:
            row.update(decision="ignored", reason=f"not a CT reading (root element {name})")
        elif not uid:
            row.update(decision="rejected", reason=NO_SERIES_UID)
        elif uid in item_of_series:
            row.update(item=item_of_series[uid], decision="matched", reason="")
            files.setdefault(item_of_series[uid], []).append(rel)
        elif uid in decision_of_series:
            row.update(decision="unmatched",
                       reason=f"its series was not chosen: {decision_of_series[uid][1] or 'rejected'}")
        else:
            row.update(decision="unmatched", reason="no series with this SeriesInstanceUid was found")
        rows.append(row)
    counts = Counter(r["decision"] for r in rows)
    log.info("annotation XML files: %d found, %d matched to chosen series, %d ignored (not CT readings), "
             "%d unmatched, %d rejected", len(rows), counts["matched"], counts["ignored"],
             counts["unmatched"], counts["rejected"])
    for r in rows:
        if r["decision"] in ("unmatched", "rejected"):
            log.warning("annotation file %s %s: %s", r["file"], r["decision"], r["reason"])
    return files, rows


def annotate(grid: SliceGrid, xml_paths: list[Path], out_dir: Path, *, consensus: float = 0.5) -> list[dict]:
    """Write the nodule mask, table and annotation QC of one converted series into ``out_dir``.

    ``grid`` describes the sorted slices and the written volume; ``xml_paths`` are the series' annotation
    files (may be empty). Each file gets one row ``read`` or ``rejected`` (the reason's category one of
    :data:`FILE_REJECTIONS`), then its ``skipped`` elements; a file read but whose nodules cannot be placed
    gets a second row, ``rejected`` (:data:`NOT_USED`). Returns the table rows.
    """
    readings, qc = [], []
    for path in xml_paths:
        try:
            reading = parse(path)
        except AnnotationError as err:
            qc.append({"file": str(path), "decision": "rejected", "reason": err.reason})
            continue
        if grid.series_uid and reading.series_uid != grid.series_uid:
            qc.append({"file": str(path), "decision": "rejected",
                       "reason": f"{NOT_THIS_SERIES}: {reading.series_uid}"})
            continue
        readings.append(reading)
        qc.append({"file": str(path), "decision": "read",
                   "reason": f"{reading.n_readers} reader(s), {len(reading.marks)} nodule mark(s), "
                             f"{len(reading.non_nodules)} non-nodule(s)"})
        qc += [{"file": str(path), "decision": "skipped", "reason": p} for p in reading.problems]
    source = ";".join(str(p) for p in xml_paths)
    mask = np.zeros(grid.shape, np.uint8)
    try:
        rows, problems = _label(readings, grid, consensus, mask)
    except ValueError as err:  # annotations that cannot be placed never cost the volume
        rows, problems = [], []
        mask[...] = 0
        qc += [{"file": r.path, "decision": "rejected", "reason": f"{NOT_USED}: {err}"} for r in readings]
    qc += [{"file": source, "decision": "note", "reason": p} for p in problems]
    out_dir = Path(out_dir)
    save_volume(out_dir / MASK_NAME, mask, grid.affine)
    write_tsv(out_dir / TABLE_NAME, rows, TABLE_COLUMNS)
    write_tsv(out_dir / QC_NAME, qc, QC_COLUMNS)
    return rows


def _label(readings, grid: SliceGrid, consensus: float, mask: np.ndarray) -> tuple[list[dict], list[str]]:
    """Paint the consensus of each nodule of ``readings`` into ``mask`` (uint8, the volume's grid) with its
    table label; a voxel in two nodules' consensus keeps the lower label. Returns rows and problems."""
    rows, masks, problems = nodules(readings, grid, consensus)
    if len(masks) > np.iinfo(mask.dtype).max:
        raise ValueError(f"{len(masks)} outlined nodules do not fit a uint8 mask")
    overlap = 0
    for label, voxels in enumerate(masks, start=1):
        i, j, k = grid.to_volume(voxels)
        free = mask[i, j, k] == 0
        overlap += int(np.count_nonzero(~free))
        mask[i[free], j[free], k[free]] = label
    if overlap:
        problems.append(f"{overlap} voxel(s) in the consensus of two nodules keep the lower label")
    return rows, problems


def cohort_xml(found: list[dict[str, str]], convert_rows: Mapping[str, Mapping[str, str]],
               item_qc: Mapping[str, list[dict[str, str]]], root: Path) -> list[dict[str, str]]:
    """The final decision of every XML file: discovery's rows with each matched file's decision replaced
    by what conversion made of it.

    Args:
        found: discovery's rows (:data:`XML_COLUMNS`, from :func:`assign_xml`).
        convert_rows: ``{item: convert QC row}`` of every chosen item (its ``decision`` and ``reason``).
        item_qc: ``{item: rows of the item's annotations.tsv}`` (:func:`annotate`) of the converted items.
        root: the DICOM tree root that ``file`` is relative to (conversion names a file ``root / file``).

    Returns:
        Rows with :data:`XML_COLUMNS`, in ``found``'s order. A matched file stays ``matched`` when
        conversion read it (reason ``''``, or :data:`SKIPPED` with the count when some of its elements were
        skipped); it becomes ``rejected`` with conversion's reason (category one of :data:`FILE_REJECTIONS`)
        when conversion refused it, and ``unmatched`` (:data:`SERIES_NOT_CONVERTED`) when its series was
        rejected at conversion. Other rows are discovery's.

    Raises:
        ValueError: a matched file's item has no convert row, or its annotation table no row for the file.
    """
    rows = []
    for row in found:
        row = dict(row)
        rows.append(row)
        if row["decision"] != "matched":
            continue
        item = row["item"]
        if item not in convert_rows:
            raise ValueError(f"{row['file']} is matched to {item}, which has no convert QC row")
        converted = convert_rows[item]
        if converted["decision"] != "converted":
            row.update(decision="unmatched", reason=f"{SERIES_NOT_CONVERTED}: {converted['reason']}")
            continue
        name = str(Path(root) / row["file"])
        mine = [r for r in item_qc.get(item, []) if r["file"] == name]
        rejected = [r for r in mine if r["decision"] == "rejected"]
        if rejected:
            row.update(decision="rejected", reason=rejected[0]["reason"])
        elif any(r["decision"] == "read" for r in mine):
            skipped = sum(r["decision"] == "skipped" for r in mine)
            row["reason"] = f"{SKIPPED}: {skipped}, named in the item's {QC_NAME}" if skipped else ""
        else:
            raise ValueError(f"the annotation table of {item} has no row for {name}")
    late = [r for r, before in zip(rows, found) if r["decision"] != before["decision"]]
    for r in late:
        log.warning("annotation file %s %s at conversion: %s", r["file"], r["decision"], r["reason"])
    return rows


def read_table(path: Path) -> list[dict[str, str]]:
    """The rows of a nodule table (values as strings)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))
