"""The LIDC-IDRI annotation XML: read one file into marks per reader, and write one (the phantom's readers).

The format (one file per CT series, e.g. ``069.xml`` beside the slices; namespace ``http://www.nih.gov``)::

    LidcReadMessage
      ResponseHeader / SeriesInstanceUid, StudyInstanceUID, ...
      readingSession                              one per reader, up to four
        unblindedReadNodule                       one reader's mark of one nodule
          noduleID
          characteristics                         subtlety ... malignancy (1-5); absent for nodules < 3 mm
          roi                                     one outline on one slice (several per nodule)
            imageZposition, imageSOP_UID, inclusion (TRUE / FALSE = an exclusion: a hole)
            edgeMap / xCoord, yCoord              pixel column and row, (0, 0) the upper-left pixel
        nonNodule                                 a lesion >= 3 mm that is not a nodule
          nonNoduleID, imageZposition, imageSOP_UID, locus / xCoord, yCoord

A nodule < 3 mm is an ``unblindedReadNodule`` whose every ``roi`` holds a single ``edgeMap`` point.
Radiograph folders hold XML of another kind (root ``IdriReadMessage``), which :func:`read_header` tells
apart so that callers can ignore it.

Parsing uses ``defusedxml``'s ElementTree, which refuses entity expansion, external entities and DTDs (the
"billion laughs" and external-entity attacks the standard library's parser is open to); LIDC's files use
none of them. Elements are matched by local name, so a file that omits the namespace is read as well.
Writing uses the standard library's ElementTree (no untrusted input).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, iterparse
from defusedxml.ElementTree import parse as _parse

#: The namespace of LIDC's annotation XML.
NAMESPACE = "http://www.nih.gov"
#: Root element of a CT reading (radiograph readings have another, e.g. ``IdriReadMessage``).
LIDC_ROOT = "LidcReadMessage"
#: The nine characteristics a reader gives a nodule >= 3 mm, in LIDC's order (all rated 1-5 or 1-6).
CHARACTERISTICS = ("subtlety", "internalStructure", "calcification", "sphericity", "margin", "lobulation",
                   "spiculation", "texture", "malignancy")


#: Why the parser refuses a file as a whole: each is the category that opens an :class:`AnnotationError`'s
#: reason (``'malformed XML: no element found: line 12, column 4'``).
MALFORMED = "malformed XML"
UNREADABLE = "unreadable"
NOT_CT = "not a CT reading"
NO_SERIES_UID = "no ResponseHeader/SeriesInstanceUid"
REJECTIONS = (MALFORMED, UNREADABLE, NOT_CT, NO_SERIES_UID)


class AnnotationError(ValueError):
    """A file that cannot be read as an annotation XML.

    ``reason`` is ``'category: detail'`` (or the category alone), the category one of :data:`REJECTIONS`;
    the message is ``'{path}: {reason}'``.
    """

    def __init__(self, path, category: str, detail: str = ""):
        if category not in REJECTIONS:
            raise ValueError(f"unknown rejection {category!r}; one of {REJECTIONS}")
        self.reason = f"{category}: {detail}" if detail else category
        super().__init__(f"{path}: {self.reason}")


@dataclass(frozen=True)
class Roi:
    """One outline (or one point) on one slice: ``points`` ``[n, 2]`` float (column x, row y)."""

    z: float | None
    sop_uid: str
    inclusion: bool
    points: np.ndarray


@dataclass(frozen=True)
class Mark:
    """One reader's mark of one nodule: its outlines, or one point for a nodule < 3 mm (``small``)."""

    reader: int                      # 1-based index of the readingSession in the file
    nodule_id: str
    rois: tuple[Roi, ...]
    characteristics: dict[str, int] = field(default_factory=dict)

    @property
    def small(self) -> bool:
        """A nodule < 3 mm: every roi is a single point (and there is no outline to fill)."""
        return all(len(r.points) == 1 for r in self.rois)


@dataclass(frozen=True)
class NonNodule:
    """One reader's non-nodule: one locus point on one slice."""

    reader: int
    nodule_id: str
    roi: Roi


@dataclass(frozen=True)
class Reading:
    """What one file says: the series, every reader's marks and non-nodules, and what was skipped."""

    path: str
    series_uid: str
    n_readers: int
    marks: list[Mark]
    non_nodules: list[NonNodule]
    problems: list[str]              # elements skipped, each 'what: why'


def _local(tag: str) -> str:
    """An element's name without its ``{namespace}``."""
    return tag.rsplit("}", 1)[-1]


def _children(element, name: str) -> list:
    return [c for c in element if _local(c.tag) == name]


def _text(element, name: str) -> str:
    found = _children(element, name)
    return (found[0].text or "").strip() if found else ""


def read_header(path: Path) -> tuple[str, str]:
    """``(root element name, SeriesInstanceUid)`` of an XML file, reading only up to the series UID.

    The UID is '' when the file has none (a radiograph reading). Raises :class:`AnnotationError` naming
    the file when it is not well-formed XML.
    """
    root_name, uid = "", ""
    try:
        for event, element in iterparse(str(path), events=("start", "end")):
            name = _local(element.tag)
            if event == "start" and not root_name:
                root_name = name
            elif event == "end" and name == "SeriesInstanceUid":
                uid = (element.text or "").strip()
                break
            elif event == "start" and name in ("readingSession", "CXRreadingSession"):
                break
    except (ParseError, DefusedXmlException) as err:
        raise AnnotationError(path, MALFORMED, str(err)) from None
    except OSError as err:
        raise AnnotationError(path, UNREADABLE, str(err)) from None
    if not root_name:
        raise AnnotationError(path, MALFORMED, "no root element")
    return root_name, uid


def _points(element, tag: str) -> np.ndarray:
    """``[n, 2]`` (x, y) of the ``tag`` children of ``element`` (edgeMap or locus). Raises ValueError."""
    pts = [(float(_text(p, "xCoord")), float(_text(p, "yCoord"))) for p in _children(element, tag)]
    if not pts:
        raise ValueError(f"no {tag} point")
    return np.array(pts, dtype=np.float64)


def _roi(element, points_tag: str, *, inclusion_required: bool) -> Roi:
    """One ``roi`` (or ``nonNodule``) element. Raises ValueError with the reason."""
    z_text = _text(element, "imageZposition")
    z = float(z_text) if z_text else None
    inclusion_text = _text(element, "inclusion").upper()
    if inclusion_text not in ("TRUE", "FALSE"):
        if inclusion_required:
            raise ValueError(f"inclusion is {inclusion_text or 'missing'!r}, not TRUE or FALSE")
        inclusion_text = "TRUE"
    return Roi(z=z, sop_uid=_text(element, "imageSOP_UID"), inclusion=inclusion_text == "TRUE",
               points=_points(element, points_tag))


def parse(path: Path) -> Reading:
    """Read a CT annotation file (root ``LidcReadMessage``) into marks per reader.

    An roi, nodule or non-nodule that cannot be read (missing coordinates, a bad inclusion value) is
    skipped and named in ``Reading.problems``; the rest of the file is kept. Raises
    :class:`AnnotationError` naming the file when it is not well-formed XML, not a CT reading, or has no
    ``SeriesInstanceUid``.
    """
    try:
        root = _parse(str(path)).getroot()
    except (ParseError, DefusedXmlException) as err:
        raise AnnotationError(path, MALFORMED, str(err)) from None
    except OSError as err:
        raise AnnotationError(path, UNREADABLE, str(err)) from None
    if _local(root.tag) != LIDC_ROOT:
        raise AnnotationError(path, NOT_CT, f"root element {_local(root.tag)!r}, not {LIDC_ROOT!r}")
    headers = _children(root, "ResponseHeader")
    uid = _text(headers[0], "SeriesInstanceUid") if headers else ""
    if not uid:
        raise AnnotationError(path, NO_SERIES_UID)
    marks, non_nodules, problems = [], [], []
    sessions = _children(root, "readingSession")
    for reader, session in enumerate(sessions, start=1):
        for n, nodule in enumerate(_children(session, "unblindedReadNodule"), start=1):
            nodule_id = _text(nodule, "noduleID") or f"#{n}"
            rois = []
            for j, element in enumerate(_children(nodule, "roi"), start=1):
                try:
                    rois.append(_roi(element, "edgeMap", inclusion_required=True))
                except ValueError as err:
                    problems.append(f"reader {reader} nodule {nodule_id} roi {j}: {err}")
            if not rois:
                problems.append(f"reader {reader} nodule {nodule_id}: no readable roi")
                continue
            chars = {}
            for block in _children(nodule, "characteristics"):
                for name in CHARACTERISTICS:
                    value = _text(block, name)
                    if value.isdigit():
                        chars[name] = int(value)
            marks.append(Mark(reader, nodule_id, tuple(rois), chars))
        for n, element in enumerate(_children(session, "nonNodule"), start=1):
            nodule_id = _text(element, "nonNoduleID") or f"#{n}"
            try:
                non_nodules.append(NonNodule(reader, nodule_id,
                                             _roi(element, "locus", inclusion_required=False)))
            except ValueError as err:
                problems.append(f"reader {reader} non-nodule {nodule_id}: {err}")
    return Reading(str(path), uid, len(sessions), marks, non_nodules, problems)


# ---- writing ----------------------------------------------------------------------------------------------

def _sub(parent, name: str, text=None):
    element = ET.SubElement(parent, f"{{{NAMESPACE}}}{name}")
    if text is not None:
        element.text = str(text)
    return element


def _write_roi(parent, roi: Roi, points_tag: str, *, with_inclusion: bool) -> None:
    if roi.z is not None:
        _sub(parent, "imageZposition", f"{roi.z:.6f}")
    _sub(parent, "imageSOP_UID", roi.sop_uid)
    if with_inclusion:
        _sub(parent, "inclusion", "TRUE" if roi.inclusion else "FALSE")
    for x, y in np.asarray(roi.points):
        point = _sub(parent, points_tag)
        _sub(point, "xCoord", int(round(x)))
        _sub(point, "yCoord", int(round(y)))


def lidc_xml(series_uid: str, study_uid: str, sessions: list[tuple[list[Mark], list[NonNodule]]]) -> bytes:
    """An LIDC annotation file (UTF-8 bytes) holding one ``readingSession`` per entry of ``sessions``
    (``(marks, non_nodules)`` of one reader), in LIDC's element order; coordinates are written as whole
    pixels, as in LIDC's files."""
    ET.register_namespace("", NAMESPACE)
    root = ET.Element(f"{{{NAMESPACE}}}{LIDC_ROOT}", {"uid": f"{series_uid}.0"})
    header = _sub(root, "ResponseHeader")
    for name, value in (("Version", "1.8.1"), ("TaskDescription", "Second unblinded read"),
                        ("SeriesInstanceUid", series_uid), ("ResponseDescription", "1 - Reading complete"),
                        ("StudyInstanceUID", study_uid)):
        _sub(header, name, value)
    for reader, (marks, non_nodules) in enumerate(sessions, start=1):
        session = _sub(root, "readingSession")
        _sub(session, "annotationVersion", "3.12")
        _sub(session, "servicingRadiologistID", f"reader-{reader}")
        for mark in marks:
            nodule = _sub(session, "unblindedReadNodule")
            _sub(nodule, "noduleID", mark.nodule_id)
            if mark.characteristics:
                block = _sub(nodule, "characteristics")
                for name in CHARACTERISTICS:
                    if name in mark.characteristics:
                        _sub(block, name, mark.characteristics[name])
            for roi in mark.rois:
                _write_roi(_sub(nodule, "roi"), roi, "edgeMap", with_inclusion=True)
        for non in non_nodules:
            element = _sub(session, "nonNodule")
            _sub(element, "nonNoduleID", non.nodule_id)
            _write_roi(element, non.roi, "locus", with_inclusion=False)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)
