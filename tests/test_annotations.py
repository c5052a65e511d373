"""Tests for ctdiff.ingest.annotations: LIDC annotation XML read, placed on the converted volume's voxels,
grouped into nodules with a consensus, matched to series at discovery."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from ctdiff.ingest.annotations.ingest import annotate
from ctdiff.ingest.annotations.lidc_xml import AnnotationError, Mark, NonNodule, Roi, lidc_xml, parse, read_header
from ctdiff.ingest.annotations.nodules import nodules
from ctdiff.ingest.annotations.rasterise import SliceGrid, interior
from ctdiff.ingest.convert import convert_item
from ctdiff.ingest.discover import discover
from test_convert import C20, S20, write_series

# A reading as LIDC writes it (namespace, element order, whitespace in numbers), typed by hand: reader 1
# outlines nodule N1 on two slices with a hole on the first, marks a < 3 mm nodule by one point and a
# non-nodule; reader 2 outlines N1 on one slice.
LITERAL = """<?xml version="1.0" encoding="UTF-8"?>
<LidcReadMessage xmlns="http://www.nih.gov" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" uid="1.1">
  <ResponseHeader>
    <Version>1.8.1</Version>
    <SeriesInstanceUid>{series}</SeriesInstanceUid>
    <StudyInstanceUID>1.2.3</StudyInstanceUID>
  </ResponseHeader>
  <readingSession>
    <annotationVersion>3.12</annotationVersion>
    <servicingRadiologistID>anon-1</servicingRadiologistID>
    <unblindedReadNodule>
      <noduleID>N1</noduleID>
      <characteristics>
        <subtlety>5</subtlety><internalStructure>1</internalStructure><calcification>6</calcification>
        <sphericity>4</sphericity><margin>4</margin><lobulation>2</lobulation><spiculation>1</spiculation>
        <texture>5</texture><malignancy>3</malignancy>
      </characteristics>
      <roi>
        <imageZposition>{z0} </imageZposition>
        <imageSOP_UID>{sop0}</imageSOP_UID>
        <inclusion>TRUE</inclusion>
        {outer}
      </roi>
      <roi>
        <imageZposition>{z0}</imageZposition>
        <imageSOP_UID>{sop0}</imageSOP_UID>
        <inclusion>FALSE</inclusion>
        {hole}
      </roi>
      <roi>
        <imageZposition>{z1}</imageZposition>
        <imageSOP_UID>{sop1}</imageSOP_UID>
        <inclusion>TRUE</inclusion>
        {outer}
      </roi>
    </unblindedReadNodule>
    <unblindedReadNodule>
      <noduleID>S1</noduleID>
      <roi>
        <imageZposition>{z1}</imageZposition>
        <imageSOP_UID>{sop1}</imageSOP_UID>
        <inclusion>TRUE</inclusion>
        <edgeMap><xCoord>60</xCoord><yCoord>90</yCoord></edgeMap>
      </roi>
    </unblindedReadNodule>
    <nonNodule>
      <nonNoduleID>X1</nonNoduleID>
      <imageZposition>{z0}</imageZposition>
      <imageSOP_UID>{sop0}</imageSOP_UID>
      <locus><xCoord>100</xCoord><yCoord>20</yCoord></locus>
    </nonNodule>
  </readingSession>
  <readingSession>
    <annotationVersion>3.12</annotationVersion>
    <servicingRadiologistID>anon-2</servicingRadiologistID>
    <unblindedReadNodule>
      <noduleID>IL057_1</noduleID>
      <characteristics><malignancy>4</malignancy><texture>4</texture></characteristics>
      <roi>
        <imageZposition>{z1}</imageZposition>
        <imageSOP_UID>{sop1}</imageSOP_UID>
        <inclusion>TRUE</inclusion>
        {outer}
      </roi>
    </unblindedReadNodule>
  </readingSession>
</LidcReadMessage>
"""


def square(x0: int, x1: int, y0: int, y1: int) -> np.ndarray:
    """The closed 8-connected pixel chain around the square x0..x1 by y0..y1 (its border pixels)."""
    pts = ([(x, y0) for x in range(x0, x1)] + [(x1, y) for y in range(y0, y1)]
           + [(x, y1) for x in range(x1, x0, -1)] + [(x0, y) for y in range(y1, y0, -1)])
    return np.array(pts, float)


def edge_map(points: np.ndarray) -> str:
    return "".join(f"<edgeMap><xCoord>{int(x)}</xCoord><yCoord>{int(y)}</yCoord></edgeMap>" for x, y in points)


def sorted_slices(folder: Path) -> list[pydicom.Dataset]:
    slices = [pydicom.dcmread(p) for p in folder.glob("*.dcm")]
    iop = np.array(slices[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(slices, key=lambda ds: float(np.dot(np.array(ds.ImagePositionPatient, float), normal)))


def table_of(series_uid: str, files: list[str], annotations: list[str], path: Path,
             item="LIDC-IDRI-0001") -> Path:
    path.write_text(json.dumps({item: {"patient": item, "series_uid": series_uid, "files": files,
                                       "annotations": annotations}}))
    return path


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


# ---- the XML ----------------------------------------------------------------------------------------------

def test_literal_reading_is_parsed(tmp_path):
    text = LITERAL.format(series="9.9", z0="-12.5", z1="-10.000000", sop0="1.1", sop1="1.2",
                          outer=edge_map(square(10, 20, 30, 40)), hole=edge_map(square(13, 17, 33, 37)))
    path = tmp_path / "069.xml"
    path.write_text(text)
    assert read_header(path) == ("LidcReadMessage", "9.9")
    reading = parse(path)
    assert reading.series_uid == "9.9" and reading.n_readers == 2 and reading.problems == []
    n1, s1, n1b = reading.marks
    assert (n1.reader, n1.nodule_id, len(n1.rois), n1.small) == (1, "N1", 3, False)
    assert [r.inclusion for r in n1.rois] == [True, False, True]
    assert n1.rois[0].z == -12.5 and n1.rois[0].sop_uid == "1.1"
    assert n1.rois[0].points[0].tolist() == [10, 30] and len(n1.rois[0].points) == 40
    assert n1.characteristics["malignancy"] == 3 and len(n1.characteristics) == 9
    assert s1.small and s1.characteristics == {} and s1.rois[0].points.tolist() == [[60, 90]]
    assert (n1b.reader, n1b.characteristics) == (2, {"texture": 4, "malignancy": 4})
    (non,) = reading.non_nodules
    assert (non.reader, non.nodule_id, non.roi.points.tolist()) == (1, "X1", [[100, 20]])


def test_writer_round_trips_through_the_parser(tmp_path):
    mark = Mark(1, "A", (Roi(-3.25, "1.5", True, square(1, 5, 2, 6)), Roi(-3.25, "1.5", False, square(2, 4, 3, 5))),
                {"malignancy": 2, "texture": 1})
    point = Mark(2, "B", (Roi(0.0, "1.6", True, np.array([[7.0, 8.0]])),))
    non = NonNodule(2, "C", Roi(1.0, "1.7", True, np.array([[3.0, 4.0]])))
    path = tmp_path / "a.xml"
    path.write_bytes(lidc_xml("7.7", "7.6", [([mark], []), ([point], [non])]))
    assert b'xmlns="http://www.nih.gov"' in path.read_bytes() and b"<LidcReadMessage" in path.read_bytes()
    reading = parse(path)
    a, b = reading.marks
    assert (a.reader, a.nodule_id, a.characteristics) == (1, "A", {"texture": 1, "malignancy": 2})
    assert [r.inclusion for r in a.rois] == [True, False] and a.rois[0].z == -3.25
    assert np.array_equal(a.rois[1].points, square(2, 4, 3, 5))
    assert b.small and reading.non_nodules[0].roi.points.tolist() == [[3, 4]]


def test_malformed_and_radiograph_files(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<LidcReadMessage><ResponseHeader>")
    with pytest.raises(AnnotationError, match="bad.xml: malformed XML"):
        parse(bad)
    with pytest.raises(AnnotationError, match="malformed XML"):
        read_header(bad)
    cxr = tmp_path / "cxr.xml"
    cxr.write_text('<IdriReadMessage xmlns="http://www.nih.gov"><ResponseHeader/></IdriReadMessage>')
    assert read_header(cxr) == ("IdriReadMessage", "")
    with pytest.raises(AnnotationError, match="not a CT reading"):
        parse(cxr)
    bomb = tmp_path / "bomb.xml"
    bomb.write_text('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
                    "<LidcReadMessage>&b;</LidcReadMessage>")
    with pytest.raises(AnnotationError, match="malformed XML"):     # defusedxml refuses entities
        parse(bomb)


# ---- filling outlines ---------------------------------------------------------------------------------------

def test_interior_excludes_the_traced_pixels():
    x, y = interior(square(10, 20, 30, 40), 128, 128)
    assert len(x) == 9 * 9 and x.min() == 11 and x.max() == 19 and y.min() == 31 and y.max() == 39
    # a diamond through pixel centres: centres strictly inside |x - 50| + |y - 50| < 5, the traced ring off
    diamond = np.array([(50 + 5 * np.cos(t), 50 + 5 * np.sin(t)) for t in np.linspace(0, 2 * np.pi, 4, endpoint=False)])
    chain = np.concatenate([np.linspace(a, b, 6)[:-1] for a, b in zip(diamond, np.roll(diamond, -1, 0))])
    x, y = interior(chain, 128, 128)
    assert len(x) == sum(1 for i in range(-4, 5) for j in range(-4, 5) if abs(i) + abs(j) < 5)
    # clipped at the image's edge: only pixels inside the image
    x, y = interior(square(-5, 4, -5, 4), 128, 128)
    assert len(x) == 4 * 4 and x.min() == 0 and y.min() == 0


def grid_2d(shape=(64, 64, 8), spacing=(0.5, 0.5, 2.0)) -> SliceGrid:
    """An axial stack whose converted volume is the stack itself: column -> i (L), row -> j (P -> A flip)."""
    cols, rows, n = shape
    index_to_lps = np.array([[spacing[0], 0, 0, 10.0], [0, spacing[1], 0, 20.0], [0, 0, spacing[2], -30.0]])
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-spacing[0], -spacing[1], spacing[2]])
    affine[:3, 3] = [-10.0, -20.0, -30.0]
    return SliceGrid(tuple(f"1.{k}" for k in range(n)), -30.0 + spacing[2] * np.arange(n), cols, rows,
                     index_to_lps, affine, shape, "9")


def reading(marks, non=()) -> object:
    from ctdiff.ingest.annotations.lidc_xml import Reading
    return Reading("x.xml", "9", 4, list(marks), list(non), [])


def test_consensus_threshold_on_a_hand_computed_case():
    """Three readers' squares on one slice: A 10..20, B 12..22, C 14..24 (interiors 11..19, 13..21, 15..23
    in x and y). Voxels counted by 1, 2 or 3 readers: a hand count of the overlaps."""
    grid = grid_2d()
    marks = [Mark(r, f"n{r}", (Roi(None, "1.3", True, square(lo, lo + 10, lo, lo + 10)),))
             for r, lo in ((1, 10), (2, 12), (3, 14))]
    union = 3 * 81 - 49 - 49 - 25 + 25          # |A|+|B|+|C| - |AB| - |BC| - |AC| + |ABC|
    expected = {1 / 3: union, 0.5: 49 + 49 - 25, 2 / 3: 49 + 49 - 25, 1.0: 25}   # >= 1, >= 2, >= 2, 3 readers
    for consensus, n in expected.items():
        rows, masks, problems = nodules([reading(marks)], grid, consensus)
        assert len(rows) == 1 and rows[0]["n_readers"] == 3 and rows[0]["readers"] == "1;2;3"
        assert rows[0]["voxels"] == n == len(masks[0]), consensus
        assert rows[0]["volume_mm3"] == pytest.approx(n * 0.5 * 0.5 * 2.0)
    rows, masks, _ = nodules([reading(marks)], grid, 1.0)
    assert rows[0]["centroid_x_mm"] == pytest.approx(10 + 17 * 0.5) and rows[0]["centroid_i"] == 17
    assert rows[0]["diameter_mm"] == pytest.approx((6 * 25 * 0.5 / np.pi) ** (1 / 3), abs=1e-3)
    assert rows[0]["max_axial_diameter_mm"] == pytest.approx(np.hypot(2, 2) + 0.5, abs=1e-3)


def test_four_readers_exclusions_points_and_one_mark_per_reader():
    """Four readers outline one nodule across three slices (one slice found by z only, one outline with a
    hole); reader 1 outlines a second, touching nodule; two readers mark a small nodule by points 1 px
    apart and one reader a non-nodule. A contour crossing the image edge is clipped and reported."""
    grid = grid_2d()
    hole = Roi(None, "1.3", False, square(14, 16, 14, 16))
    marks = []
    for r in (1, 2, 3, 4):
        rois = [Roi(None, "1.3", True, square(10, 20, 10, 20)), Roi(-22.0, "unknown", True, square(10, 20, 10, 20)),
                Roi(None, "1.5", True, square(11, 19, 11, 19))]
        if r == 2:
            rois.append(hole)
        marks.append(Mark(r, f"r{r}", tuple(rois), {"malignancy": r, "texture": 5}))
    marks.append(Mark(1, "second", (Roi(None, "1.3", True, square(17, 28, 10, 20)),)))  # overlaps reader 1's first
    marks.append(Mark(2, "edge", (Roi(None, "1.6", True, square(58, 70, 0, 8)),)))
    marks.append(Mark(3, "far", (Roi(-10.0, "missing", True, square(40, 50, 40, 50)),)))
    marks.append(Mark(3, "small", (Roi(None, "1.2", True, np.array([[40.0, 40.0]])),)))
    marks.append(Mark(4, "small", (Roi(None, "1.2", True, np.array([[41.0, 40.0]])),)))
    non = [NonNodule(1, "x", Roi(None, "1.1", True, np.array([[5.0, 5.0]])))]
    rows, masks, problems = nodules([reading(marks, non)], grid, 0.5)
    kinds = [r["kind"] for r in rows]
    assert kinds == ["nodule", "nodule", "nodule", "small", "non-nodule"]
    first, second, edge = rows[:3]
    assert first["readers"] == "1;2;3;4" and first["n_readers"] == 4
    # slices 3 and 4 (4 by z = -22.0 mm): 9 x 9 each, minus reader 2's hole (one reader of four: kept);
    # slice 5: 7 x 7
    assert first["voxels"] == 81 + 81 + 49
    assert first["malignancy"] == 2.5 and first["texture"] == 5.0
    assert second["readers"] == "1" and second["voxels"] == 10 * 9     # interior 18..27 x 11..19
    assert edge["voxels"] == 5 * 7                                     # columns 59..63 kept of 59..69
    assert rows[3]["readers"] == "3;4" and rows[3]["centroid_i"] == 40.5 and rows[3]["voxels"] == 0
    assert any("contour outside the image" in p and "edge" in p for p in problems)
    assert any("far" in p and "roi skipped" in p for p in problems)
    assert len(np.intersect1d(masks[0], masks[1])) == 2 * 9            # consensus regions may overlap...
    grid_mask = np.zeros(grid.shape, np.uint8)
    from ctdiff.ingest.annotations.ingest import _label
    _label([reading(marks, non)], grid, 0.5, grid_mask)
    assert np.count_nonzero(grid_mask == 1) == 211 and np.count_nonzero(grid_mask == 2) == 90 - 2 * 9  # first keeps them


# ---- on the converted volume -------------------------------------------------------------------------------

SENTINEL = 3000  # stored value far above CT_small's (max 2191): the pixels a reader outlines


@pytest.mark.parametrize("iop", [(1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, 1, 0), (0, 1, 0, 1, 0, 0),
                                 (1, 0, 0, 0, 0, -1), (0, 1, 0, 0, 0, -1), (C20, S20, 0, -S20, C20, 0)],
                         ids=["axial", "x-flipped", "transposed", "coronal", "sagittal", "oblique-20deg"])
def test_mask_lands_on_the_outlined_voxels_in_every_orientation(tmp_path, iop):
    """The outlined pixels hold a sentinel value in the DICOM slices; after conversion, the nodule mask
    must be exactly where the converted HU volume holds it (dicom2nifti's own placement of those pixels)."""
    uid, files = write_series(tmp_path / "s", [2.5 * k for k in range(6)], iop=iop)
    slices = sorted_slices(tmp_path / "s")
    rois = []
    for k, (x0, y0) in ((1, (30, 40)), (2, (31, 42)), (3, (33, 41))):      # a nodule over three slices
        ds = slices[k]
        pixels = ds.pixel_array.copy()
        pixels[y0 + 1:y0 + 12, x0 + 1:x0 + 8] = SENTINEL                    # interior of the outline below
        ds.PixelData = pixels.tobytes()
        ds.save_as(ds.filename, enforce_file_format=True)
        rois.append(Roi(float(ds.ImagePositionPatient[2]), ds.SOPInstanceUID, True, square(x0, x0 + 8, y0, y0 + 12)))
    (tmp_path / "s" / "069.xml").write_bytes(lidc_xml(uid, "1", [([Mark(1, "N", tuple(rois))], [])]))
    table = table_of(uid, files, ["s/069.xml"], tmp_path / "series.json")
    convert_item(tmp_path, table, "LIDC-IDRI-0001", tmp_path / "out" / "hu.nii.gz", tmp_path / "qc.tsv")
    hu = nib.load(tmp_path / "out" / "hu.nii.gz")
    mask = nib.load(tmp_path / "out" / "nodules.nii.gz")
    assert np.array_equal(mask.affine, hu.affine) and mask.shape == hu.shape
    assert mask.get_data_dtype() == np.uint8
    expected = np.asarray(hu.dataobj) == SENTINEL + int(slices[0].RescaleIntercept)
    assert expected.sum() == 3 * 11 * 7
    assert np.array_equal(np.asarray(mask.dataobj) == 1, expected)
    (row,) = rows_of(tmp_path / "out" / "nodules.tsv")
    ijk = np.argwhere(expected).mean(axis=0)
    assert [float(row[c]) for c in ("centroid_i", "centroid_j", "centroid_k")] == pytest.approx(ijk, abs=1e-3)
    ras = hu.affine[:3, :3] @ ijk + hu.affine[:3, 3]
    lps = ras * [-1, -1, 1]
    assert [float(row[c]) for c in ("centroid_x_mm", "centroid_y_mm", "centroid_z_mm")] == pytest.approx(lps, abs=1e-3)


def test_discovery_matches_ignores_and_reports_xml(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    """Beside a CT series: its reading, a radiograph reading, a malformed file and a reading of a series
    that is not there. Only the first reaches the item; the others are QC rows; conversion goes on."""
    root = tmp_path / "tree"
    uid, files = write_series(root / "ct", [2.5 * k for k in range(12)])
    slices = sorted_slices(root / "ct")
    mark = Mark(1, "N", (Roi(None, slices[4].SOPInstanceUID, True, square(20, 30, 20, 30)),))
    (root / "ct" / "069.xml").write_bytes(lidc_xml(uid, "1", [([mark], [])]))
    (root / "ct" / "other.xml").write_bytes(lidc_xml("1.2.3.4", "1", [([mark], [])]))
    (root / "ct" / "broken.xml").write_text("<LidcReadMessage")
    (root / "cxr").mkdir()
    (root / "cxr" / "cxr.xml").write_text('<?xml version="1.0"?><IdriReadMessage xmlns="http://www.nih.gov">'
                                         "<ResponseHeader/></IdriReadMessage>")
    items = discover(root, tmp_path / "inv.tsv", tmp_path / "series.json", annotations_tsv=tmp_path / "ann.tsv")
    assert items == ["LIDC-IDRI-0001"]
    decisions = {r["file"]: (r["decision"], r["item"], r["reason"]) for r in rows_of(tmp_path / "ann.tsv")}
    assert decisions["ct/069.xml"] == ("matched", "LIDC-IDRI-0001", "")
    assert decisions["ct/other.xml"][0] == "unmatched" and "no series" in decisions["ct/other.xml"][2]
    assert decisions["ct/broken.xml"][0] == "rejected" and "malformed XML" in decisions["ct/broken.xml"][2]
    assert decisions["cxr/cxr.xml"][:2] == ("ignored", "")
    assert "4 found, 1 matched to chosen series, 1 ignored" in caplog.text
    entry = json.loads((tmp_path / "series.json").read_text())["LIDC-IDRI-0001"]
    assert entry["annotations"] == ["ct/069.xml"]
    convert_item(root, tmp_path / "series.json", "LIDC-IDRI-0001", tmp_path / "o" / "hu.nii.gz", tmp_path / "qc.tsv")
    (row,) = rows_of(tmp_path / "o" / "nodules.tsv")
    assert row["voxels"] == "81"


def test_series_without_xml_and_broken_xml_keep_the_volume(tmp_path):
    uid, files = write_series(tmp_path / "s", [2.5 * k for k in range(4)])
    (tmp_path / "s" / "x.xml").write_text("not xml at all")
    for annotations, out in (([], "none"), (["s/x.xml"], "broken")):
        table = table_of(uid, files, annotations, tmp_path / f"{out}.json")
        row = convert_item(tmp_path, table, "LIDC-IDRI-0001", tmp_path / out / "hu.nii.gz", tmp_path / f"{out}.tsv")
        assert row["decision"] == "converted"
        assert rows_of(tmp_path / out / "nodules.tsv") == []
        mask = nib.load(tmp_path / out / "nodules.nii.gz")
        assert mask.shape == nib.load(tmp_path / out / "hu.nii.gz").shape and not np.asarray(mask.dataobj).any()
    qc = rows_of(tmp_path / "broken" / "annotations.tsv")
    assert qc[0]["decision"] == "rejected" and "malformed XML" in qc[0]["reason"] and qc[0]["file"].endswith("x.xml")


def test_real_dicom_slice_with_its_own_sop_uid(tmp_path):
    """pydicom's CT_small.dcm (a real scanner's slice): an outline named by its SOPInstanceUID lands on its
    pixels, and the centroid in mm is ImagePositionPatient + column x row spacing along its axes."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    iop = np.array(ds.ImageOrientationPatient, float)
    (row_mm, col_mm), ipp = (float(v) for v in ds.PixelSpacing), np.array(ds.ImagePositionPatient, float)
    index_to_lps = np.column_stack([iop[:3] * col_mm, iop[3:] * row_mm, np.cross(iop[:3], iop[3:]) * 5.0, ipp])
    affine = np.eye(4)
    affine[:3, :] = np.diag([-1.0, -1.0, 1.0]) @ index_to_lps      # the stack itself as the converted volume
    grid = SliceGrid((ds.SOPInstanceUID,), np.array([ipp[2]]), int(ds.Columns), int(ds.Rows), index_to_lps,
                     affine, (int(ds.Columns), int(ds.Rows), 1), str(ds.SeriesInstanceUID))
    path = tmp_path / "069.xml"
    path.write_bytes(lidc_xml(str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID),
                              [([Mark(1, "N", (Roi(float(ipp[2]), ds.SOPInstanceUID, True, square(40, 60, 50, 64)),))], [])]))
    rows = annotate(grid, [path], tmp_path / "out")
    assert rows[0]["voxels"] == 19 * 13
    centre = ipp + 50 * col_mm * iop[:3] + 57 * row_mm * iop[3:]
    assert [rows[0][c] for c in ("centroid_x_mm", "centroid_y_mm", "centroid_z_mm")] == pytest.approx(centre, abs=1e-3)
    mask = np.asarray(nib.load(tmp_path / "out" / "nodules.nii.gz").dataobj)
    assert np.array_equal(np.argwhere(mask[..., 0]).min(0), [41, 51]) and mask.sum() == 19 * 13
    foreign = tmp_path / "foreign.xml"
    foreign.write_bytes(lidc_xml("1.2.3", "1", []))
    assert annotate(grid, [foreign], tmp_path / "out2") == []
    assert "is not this series" in rows_of(tmp_path / "out2" / "annotations.tsv")[0]["reason"]
