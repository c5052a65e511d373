"""Find the CT series to convert in a tree of DICOM files.

The tree may be any LIDC-IDRI download layout (``LIDC-IDRI-0001/<study>/<series>/*.dcm``, the NBIA
retriever's layout, the embedded phantom cohort, ...). Folder and file names are never parsed: every
file's header is read and files are grouped by ``SeriesInstanceUID``.

A series is usable when it is ``Modality == 'CT'``, every file has ``ImagePositionPatient`` and
``ImageOrientationPatient``, no file is a ``LOCALIZER``, its folder holds no broken DICOM file (preamble
and ``DICM`` marker, unreadable header: most likely one of its slices) and it has at least
:data:`MIN_SLICES` distinct slice positions. Per patient, ``series='largest'`` keeps the usable series with the most slice positions
(the item id is the ``PatientID``); ``series='all'`` keeps every usable series as its own item
``f'{patient}_{k}'`` (``k = 0`` is the largest).

Outputs (written atomically):

- inventory TSV, one row per series: every series found, chosen or rejected, with the reason;
- series JSON, ``{item_id: {patient, series_uid, study_uid, n_files, n_positions, rows, columns, folder,
  files, annotations}}`` with ``files`` relative to ``root``, sorted (``rows`` x ``columns``: the largest
  image matrix of the series; with ``n_files`` it sizes the memory of the item's jobs, see
  :mod:`ctdiff.plan`); ``annotations``: the LIDC annotation XML files naming the series;
- annotation TSV (optional), one row per ``.xml`` file: matched to an item by its SeriesInstanceUid (never
  by folder), ignored (a radiograph reading), unmatched or rejected (malformed), with the reason. Only each
  file's header is read here; :mod:`ctdiff.ingest.cohort` turns this table into the final one.

What was read and skipped is logged (``ctdiff.ingest.discover`` logger, INFO): files read, DICOM files per
series modality, files skipped by kind (not DICOM by file extension, e.g. LIDC's ``.xml`` annotations;
broken DICOM; DICOM without a series, e.g. a ``DICOMDIR``) and the series decisions by reason.

Only ``PatientID`` (the LIDC identifier) and UIDs are written; no name, birth date or other identifying
attribute is read at all.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom

from ctdiff.ingest.annotations.ingest import XML_COLUMNS, assign_xml
from ctdiff.files import atomic_path, write_tsv

log = logging.getLogger(__name__)

#: Fewest distinct slice positions a CT series needs to count as a volume.
MIN_SLICES = 10

#: Positions along the slice normal closer than this (mm) count as the same slice.
POSITION_TOLERANCE_MM = 1e-3

#: Header attributes read from each file (pixel data is never read here).
_TAGS = [
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "ImageType",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "Rows",
    "Columns",
]

#: Item ids become file names in the pipeline, so a PatientID must be a plain token.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]+$")

INVENTORY_COLUMNS = [
    "patient",
    "series_uid",
    "study_uid",
    "modality",
    "n_files",
    "n_positions",
    "folder",
    "image_type",
    "decision",
    "reason",
    "item",
]


@dataclass
class _Series:
    """Header facts of one series, gathered file by file."""

    uid: str
    files: list[str] = field(default_factory=list)
    patients: set[str] = field(default_factory=set)
    study_uid: str = ""
    modality: str = ""
    image_type: str = ""
    n_missing_position: int = 0
    n_missing_orientation: int = 0
    n_localizer: int = 0
    n_broken: int = 0  # files in the series' folder(s) that claim to be DICOM but cannot be read
    positions: list[float] = field(default_factory=list)
    rows: int = 0  # the largest Rows and Columns of its files (0 when missing)
    columns: int = 0

    def add(self, rel_path: str, ds: pydicom.Dataset) -> None:
        """Record one file's header (``rel_path`` relative to the tree root)."""
        self.files.append(rel_path)
        self.patients.add(str(ds.get("PatientID", "") or ""))
        if len(self.files) == 1:  # the first file (in walk order) fixes series-level attributes
            self.study_uid = str(ds.get("StudyInstanceUID", "") or "")
            self.modality = str(ds.get("Modality", "") or "")
            image_type = ds.get("ImageType", None)
            self.image_type = "\\".join(str(v) for v in image_type) if image_type else ""
        image_type = ds.get("ImageType", None)
        if image_type and "LOCALIZER" in [str(v).upper() for v in image_type]:
            self.n_localizer += 1
        ipp = ds.get("ImagePositionPatient", None)
        iop = ds.get("ImageOrientationPatient", None)
        if ipp is None or len(ipp) != 3:
            self.n_missing_position += 1
        if iop is None or len(iop) != 6:
            self.n_missing_orientation += 1
        self.rows = max(self.rows, _int(ds.get("Rows", None)))
        self.columns = max(self.columns, _int(ds.get("Columns", None)))
        if ipp is not None and len(ipp) == 3 and iop is not None and len(iop) == 6:
            normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
            self.positions.append(float(np.dot(np.asarray(ipp, float), normal)))

    @property
    def patient(self) -> str:
        """The series' PatientID ('' when missing; several joined by '|' when the files disagree)."""
        return "|".join(sorted(self.patients))

    @property
    def n_positions(self) -> int:
        """Distinct slice positions along the slice normal (mm, merged within the tolerance)."""
        if not self.positions:
            return 0
        pos = np.sort(np.asarray(self.positions))
        return int(1 + np.count_nonzero(np.diff(pos) > POSITION_TOLERANCE_MM))

    @property
    def folder(self) -> str:
        """Folder(s) holding the files, relative to the root ('; '-joined when several)."""
        return "; ".join(sorted({os.path.dirname(f) or "." for f in self.files}))

    def rejection(self) -> str:
        """Why this series cannot be used as a CT volume, or '' when it can."""
        if len(self.patients) > 1:
            return f"files disagree on PatientID ({len(self.patients)} values)"
        if not self.patient:
            return "missing PatientID"
        if not _SAFE_ID.match(self.patient):
            return f"PatientID {self.patient!r} is not usable as a file name"
        if self.modality != "CT":
            return f"modality {self.modality or 'missing'} is not CT"
        if self.n_missing_position:
            return f"missing ImagePositionPatient in {self.n_missing_position} file(s)"
        if self.n_missing_orientation:
            return f"missing ImageOrientationPatient in {self.n_missing_orientation} file(s)"
        if self.n_localizer:
            return "localizer"
        if self.n_broken:
            return f"unreadable DICOM file(s) in the series folder: {self.n_broken}"
        if self.n_positions < MIN_SLICES:
            return f"only {self.n_positions} slice{'' if self.n_positions == 1 else 's'}"
        return ""


def _int(value) -> int:
    """A header number as an int, 0 when missing or not a number."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _read_header(path: str) -> pydicom.Dataset | None:
    """Header of one file with only :data:`_TAGS`, or None if it is not a readable DICOM file."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, force=False, specific_tags=_TAGS)
    except Exception:  # noqa: BLE001 - anything unreadable is "not a DICOM file" for this walk
        return None


def _claims_dicom(path: str) -> bool:
    """Whether a file starts with the DICOM preamble and ``DICM`` marker."""
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _skip_kind(name: str, ds: pydicom.Dataset | None, broken: bool) -> str:
    """How a skipped file is counted in the log: broken DICOM, DICOM without a series, or not DICOM by its
    file extension (lower case, e.g. ``'not DICOM (.xml)'``)."""
    if broken:
        return "broken DICOM"
    if ds is not None:
        return "DICOM without SeriesInstanceUID"
    return f"not DICOM ({os.path.splitext(name)[1].lower() or 'no extension'})"


def _scan(root: Path) -> tuple[dict[str, _Series], Counter[str], list[str]]:
    """Walk ``root`` (sorted, not following links) and group DICOM files by SeriesInstanceUID.

    Returns the series by UID, the skipped files (not DICOM, unreadable, or without a
    SeriesInstanceUID such as a DICOMDIR) counted by :func:`_skip_kind`, and the skipped ``.xml`` files
    (relative to ``root``: LIDC's annotations, matched to series by
    :func:`ctdiff.ingest.annotations.ingest.assign_xml`). A file with the DICOM marker but no
    readable file meta information (pydicom reads garbage after ``DICM`` as an empty dataset) is a broken
    slice, not a stray file: every series in its folder counts it (``n_broken``), because
    dicom2nifti would silently build the volume without it.
    """
    series: dict[str, _Series] = {}
    skipped: Counter[str] = Counter()
    broken: dict[str, int] = defaultdict(int)
    xml: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            ds = _read_header(path)
            uid = str(ds.get("SeriesInstanceUID", "") or "") if ds is not None else ""
            if not uid:
                meta = getattr(ds, "file_meta", None) if ds is not None else None
                is_broken = _claims_dicom(path) and (meta is None or "TransferSyntaxUID" not in meta)
                if is_broken:
                    broken[os.path.relpath(dirpath, root).replace(os.sep, "/")] += 1
                skipped[_skip_kind(name, ds, is_broken)] += 1
                if ds is None and not is_broken and name.lower().endswith(".xml"):
                    xml.append(os.path.relpath(path, root).replace(os.sep, "/"))
                continue
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            series.setdefault(uid, _Series(uid)).add(rel, ds)
    for s in series.values():
        s.n_broken = sum(broken.get(folder, 0) for folder in s.folder.split("; "))
    return series, skipped, xml


def _counts(counter: Counter[str]) -> str:
    """``'a 3, b 1'``: a counter's entries, most common first (ties by name)."""
    return ", ".join(f"{key} {n:,}" for key, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def _log_counts(root: Path, found: dict[str, _Series], skipped: Counter[str],
                decisions: dict[str, tuple[str, str]], n_items: int) -> None:
    """Log what the walk read and skipped and how the series were decided (INFO)."""
    n_dicom = sum(len(s.files) for s in found.values())
    modalities = Counter()
    for s in found.values():
        modalities[s.modality or "no modality"] += len(s.files)
    log.info("read %s files under %s: %s DICOM files in %s series (files per modality: %s)",
             f"{n_dicom + sum(skipped.values()):,}", root, f"{n_dicom:,}", f"{len(found):,}",
             _counts(modalities) or "none")
    log.info("skipped %s files: %s", f"{sum(skipped.values()):,}", _counts(skipped) or "none")
    rejected = Counter(reason.split(":", 1)[0] for decision, reason in decisions.values() if decision == "rejected")
    log.info("%s series chosen as %s items; %s rejected: %s", f"{len(found) - sum(rejected.values()):,}",
             f"{n_items:,}", f"{sum(rejected.values()):,}", _counts(rejected) or "none")


def _choose(
    series: dict[str, _Series], mode: Literal["largest", "all"]
) -> tuple[dict[str, _Series], dict[str, tuple[str, str]]]:
    """Decide every series.

    Returns ``items`` ({item_id: series}) and ``decisions`` ({series_uid: (decision, reason)}).
    """
    decisions: dict[str, tuple[str, str]] = {}
    usable: dict[str, list[_Series]] = defaultdict(list)
    for uid, s in series.items():
        reason = s.rejection()
        if reason:
            decisions[uid] = ("rejected", reason)
        else:
            usable[s.patient].append(s)

    items: dict[str, _Series] = {}
    for patient, group in sorted(usable.items()):
        group.sort(key=lambda s: (-s.n_positions, -len(s.files), s.uid))
        if mode == "largest":
            items[patient] = group[0]
            decisions[group[0].uid] = ("chosen", "")
            for s in group[1:]:
                decisions[s.uid] = ("rejected", "smaller CT series of the same patient")
        else:
            for k, s in enumerate(group):
                items[f"{patient}_{k}"] = s
                decisions[s.uid] = ("chosen", "")
    return items, decisions


def discover(
    root: Path,
    inventory_tsv: Path,
    series_json: Path,
    *,
    series: Literal["largest", "all"] = "largest",
    annotations_tsv: Path | None = None,
) -> list[str]:
    """Inventory every DICOM series under ``root`` and choose the CT volumes to convert.

    Args:
        root: top folder of the DICOM tree (any layout; walked recursively).
        inventory_tsv: written: one row per series with :data:`INVENTORY_COLUMNS`.
        series_json: written: ``{item_id: {patient, series_uid, study_uid, n_files, n_positions, rows,
            columns, folder, files, annotations}}``, ``files`` relative to ``root`` and sorted,
            ``annotations`` the LIDC XML files whose SeriesInstanceUid is the item's series.
        series: ``'largest'`` (one item per patient, id = PatientID) or ``'all'`` (one item per usable
            CT series, id ``f'{patient}_{k}'``).
        annotations_tsv: written when given: one row per XML file found, matched to an item, ignored (a
            radiograph reading), unmatched or rejected (malformed up to its SeriesInstanceUid), with the
            reason (:data:`ctdiff.ingest.annotations.ingest.XML_COLUMNS`); conversion decides the rest
            (:func:`ctdiff.ingest.annotations.ingest.cohort_xml`).

    Returns:
        The sorted item ids; empty (and an empty table written) when no series is usable. Whether an empty
        cohort is an error is decided once, after conversion (see :mod:`ctdiff.ingest.cohort`), so that a
        failing run keeps the inventory that says why.

    Raises:
        ValueError: ``series`` is not an allowed value, or ``root`` is not a folder.
    """
    if series not in ("largest", "all"):
        raise ValueError(f"series must be 'largest' or 'all', got {series!r}")
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"DICOM root {root} is not a folder")

    found, skipped, xml = _scan(root)
    items, decisions = _choose(found, series)
    item_of = {s.uid: item for item, s in items.items()}
    _log_counts(root, found, skipped, decisions, len(items))
    annotations, xml_rows = assign_xml(root, xml, item_of, decisions)
    if annotations_tsv is not None:
        write_tsv(annotations_tsv, xml_rows, XML_COLUMNS)

    rows = []
    for s in sorted(found.values(), key=lambda s: (s.patient, s.uid)):
        decision, reason = decisions[s.uid]
        rows.append(
            {
                "patient": s.patient,
                "series_uid": s.uid,
                "study_uid": s.study_uid,
                "modality": s.modality,
                "n_files": len(s.files),
                "n_positions": s.n_positions,
                "folder": s.folder,
                "image_type": s.image_type,
                "decision": decision,
                "reason": reason,
                "item": item_of.get(s.uid, ""),
            }
        )

    write_tsv(inventory_tsv, rows, INVENTORY_COLUMNS)

    if not items:
        log.warning(
            "no usable CT series under %s: %d series in %d DICOM files (%d other files skipped), none is CT "
            "with positions, orientations and >= %d slices; see %s for the reason per series",
            root, len(found), sum(len(s.files) for s in found.values()), sum(skipped.values()), MIN_SLICES,
            inventory_tsv,
        )

    table = {
        item: {
            "patient": s.patient,
            "series_uid": s.uid,
            "study_uid": s.study_uid,
            "n_files": len(s.files),
            "n_positions": s.n_positions,
            "rows": s.rows,
            "columns": s.columns,
            "folder": s.folder,
            "files": sorted(s.files),
            "annotations": annotations.get(item, []),
        }
        for item, s in sorted(items.items())
    }
    with atomic_path(series_json) as tmp:
        tmp.write_text(json.dumps(table, indent=1), encoding="utf-8")
    return sorted(items)
