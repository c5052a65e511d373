"""Where the annotations enter the pipeline: discovery assigns each XML file to a chosen series, conversion
writes the nodule mask and table beside the volume, preprocessing resamples the mask with the volume.

Files beside the converted volume (``nifti/{item}/``):

- ``nodules.nii.gz``: uint8 labels on the volume's own grid (same array axes and affine as ``hu.nii.gz``):
  0 background, ``n`` the consensus voxels of the table's row with ``label`` ``n``;
- ``nodules.tsv``: the nodule table (:data:`~ctdiff.ingest.annotations.nodules.TABLE_COLUMNS`);
- ``annotations.tsv``: what happened to each XML file and every roi, nodule or point skipped or clipped
  (:data:`~ctdiff.ingest.annotations.nodules.QC_COLUMNS`).

A series without an XML file gets an empty table and an all-zero mask. A file that cannot be parsed is a QC
row with the reason; the rest goes on.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from ctdiff.ingest.annotations.lidc_xml import LIDC_ROOT, AnnotationError, parse, read_header
from ctdiff.ingest.annotations.nodules import QC_COLUMNS, TABLE_COLUMNS, nodules
from ctdiff.ingest.annotations.rasterise import SliceGrid
from ctdiff.files import save_volume, write_tsv

log = logging.getLogger(__name__)

MASK_NAME = "nodules.nii.gz"
TABLE_NAME = "nodules.tsv"
QC_NAME = "annotations.tsv"

#: Columns of discovery's ``qc/annotations.tsv``: one row per XML file found.
DISCOVERY_COLUMNS = ["file", "root_element", "series_uid", "item", "decision", "reason"]


def assign_xml(root: Path, xml_files: list[str], item_of_series: dict[str, str],
               decision_of_series: dict[str, tuple[str, str]]) -> tuple[dict[str, list[str]], list[dict]]:
    """Match annotation files (paths relative to ``root``) to chosen items by their SeriesInstanceUid.

    Returns ``{item: [files]}`` and one row per file (:data:`DISCOVERY_COLUMNS`) whose decision is
    ``matched``, ``ignored`` (a radiograph reading or other XML: root element not ``LidcReadMessage``),
    ``unmatched`` (no chosen series has its UID; the reason says whether a rejected series has it) or
    ``rejected`` (malformed XML). Counts are logged.
    """
    files: dict[str, list[str]] = {}
    rows = []
    for rel in sorted(xml_files):
        row = {"file": rel, "root_element": "", "series_uid": "", "item": ""}
        try:
            name, uid = read_header(Path(root) / rel)
        except AnnotationError as err:
            row.update(decision="rejected", reason=str(err).removeprefix(f"{Path(root) / rel}: "))
            rows.append(row)
            continue
        row.update(root_element=name, series_uid=uid)
        if name != LIDC_ROOT:
            row.update(decision="ignored", reason=f"not a CT reading (root element {name})")
        elif not uid:
            row.update(decision="rejected", reason="no ResponseHeader/SeriesInstanceUid")
        elif uid in item_of_series:
            row.update(item=item_of_series[uid], decision="matched", reason="")
            files.setdefault(item_of_series[uid], []).append(rel)
        elif uid in decision_of_series:
            row.update(decision="unmatched",
                       reason=f"its series was not chosen ({decision_of_series[uid][1] or 'rejected'})")
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
    files (may be empty). Returns the table rows.
    """
    readings, qc = [], []
    for path in xml_paths:
        try:
            reading = parse(path)
        except AnnotationError as err:
            qc.append({"file": str(path), "decision": "rejected", "reason": str(err).removeprefix(f"{path}: ")})
            continue
        if grid.series_uid and reading.series_uid != grid.series_uid:
            qc.append({"file": str(path), "decision": "rejected",
                       "reason": f"SeriesInstanceUid {reading.series_uid} is not this series"})
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
        rows, problems = [], [f"annotations not used: {err}"]
        mask[...] = 0
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


def read_table(path: Path) -> list[dict[str, str]]:
    """The rows of a nodule table (values as strings)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))
