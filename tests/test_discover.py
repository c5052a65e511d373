"""Tests for ctdiff.ingest.discover on a small LIDC-like tree built from pydicom's CT_small.dcm."""

from __future__ import annotations

import copy
import csv
import json
import logging
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from ctdiff.ingest.discover import INVENTORY_COLUMNS, discover

SECRET_NAME = "Doe^Jane"


def write_series(folder: Path, patient: str, n: int, *, modality="CT", localizer=False,
                 drop_position_in: int | None = None, dz=2.0, prefix="") -> str:
    """Write ``n`` single-slice files of one series into ``folder``; return its SeriesInstanceUID."""
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    folder.mkdir(parents=True, exist_ok=True)
    uid, study = generate_uid(), generate_uid()
    for k in range(n):
        ds = copy.deepcopy(base)
        ds.PatientID, ds.PatientName, ds.PatientBirthDate = patient, SECRET_NAME, "19700101"
        ds.SeriesInstanceUID, ds.StudyInstanceUID = uid, study
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.Modality = modality
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-100.0, -100.0, 50.0 - dz * k]
        if localizer:
            ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        if modality != "CT" or drop_position_in == k:
            del ds.ImagePositionPatient
        if modality != "CT":
            del ds.ImageOrientationPatient
        ds.save_as(folder / f"{prefix}{n - k:04d}.dcm", enforce_file_format=True)
    return uid


@pytest.fixture()
def tree(tmp_path) -> tuple[Path, dict[str, str]]:
    """Two patients with distractor series; folder names deliberately mislead."""
    root = tmp_path / "LIDC-IDRI"
    uids = {
        "a_big": write_series(root / "LIDC-IDRI-9999" / "study" / "x", "LIDC-IDRI-0001", 14),
        "a_small": write_series(root / "LIDC-IDRI-0001" / "s1" / "y", "LIDC-IDRI-0001", 11),
        "a_scout": write_series(root / "LIDC-IDRI-0001" / "s1" / "z", "LIDC-IDRI-0001", 12,
                                localizer=True),
        "b_cr": write_series(root / "LIDC-IDRI-0002" / "cr", "LIDC-IDRI-0002", 2, modality="CR"),
        "b_three": write_series(root / "LIDC-IDRI-0002" / "ct", "LIDC-IDRI-0002", 3, prefix="t"),
        # two series in one folder must stay apart
        "b_main": write_series(root / "LIDC-IDRI-0002" / "ct", "LIDC-IDRI-0002", 12, prefix="m"),
        "b_nopos": write_series(root / "LIDC-IDRI-0002" / "np", "LIDC-IDRI-0002", 15,
                                drop_position_in=7),
    }
    (root / "LIDC-IDRI-0002" / "ct" / "069.xml").write_text("<LidcReadMessage/>")
    (root / "metadata.csv").write_text("Subject ID,Modality\nLIDC-IDRI-0003,CT\n")
    (root / "empty").mkdir()
    return root, uids


def read_inventory(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert list(rows[0]) == INVENTORY_COLUMNS
    return {r["series_uid"]: r for r in rows}


def test_largest_series_per_patient(tree, tmp_path):
    root, uids = tree
    inv, js = tmp_path / "out" / "inventory.tsv", tmp_path / "out" / "series.json"

    items = discover(root, inv, js)

    assert items == ["LIDC-IDRI-0001", "LIDC-IDRI-0002"]
    rows = read_inventory(inv)
    assert set(rows) == set(uids.values())
    decision = {name: (rows[u]["decision"], rows[u]["reason"]) for name, u in uids.items()}
    assert decision == {
        "a_big": ("chosen", ""),
        "a_small": ("rejected", "smaller CT series of the same patient"),
        "a_scout": ("rejected", "localizer"),
        "b_cr": ("rejected", "modality CR is not CT"),
        "b_three": ("rejected", "only 3 slices"),
        "b_main": ("chosen", ""),
        "b_nopos": ("rejected", "missing ImagePositionPatient in 1 file(s)"),
    }
    big = rows[uids["a_big"]]
    assert (big["patient"], big["modality"], big["n_files"], big["n_positions"]) == (
        "LIDC-IDRI-0001", "CT", "14", "14")
    assert big["folder"] == "LIDC-IDRI-9999/study/x" and big["item"] == "LIDC-IDRI-0001"
    assert big["image_type"] == "ORIGINAL\\PRIMARY\\AXIAL"

    table = json.loads(js.read_text())
    assert sorted(table) == items
    entry = table["LIDC-IDRI-0002"]
    assert entry["series_uid"] == uids["b_main"] and entry["patient"] == "LIDC-IDRI-0002"
    assert entry["files"] == sorted(entry["files"]) and len(entry["files"]) == 12
    assert (entry["n_files"], entry["rows"], entry["columns"]) == (12, 128, 128)  # CT_small's matrix
    assert all(f.startswith("LIDC-IDRI-0002/ct/m") for f in entry["files"])
    for f in entry["files"]:
        assert pydicom.dcmread(root / f).SeriesInstanceUID == uids["b_main"]

    for out in (inv, js):
        text = out.read_text()
        assert SECRET_NAME not in text and "19700101" not in text
    assert not list(inv.parent.glob("*.tmp"))


def test_all_series_mode(tree, tmp_path):
    root, uids = tree
    inv, js = tmp_path / "inventory.tsv", tmp_path / "series.json"

    items = discover(root, inv, js, series="all")

    assert items == ["LIDC-IDRI-0001_0", "LIDC-IDRI-0001_1", "LIDC-IDRI-0002_0"]
    table = json.loads(js.read_text())
    assert table["LIDC-IDRI-0001_0"]["series_uid"] == uids["a_big"]
    assert table["LIDC-IDRI-0001_1"]["series_uid"] == uids["a_small"]
    assert table["LIDC-IDRI-0001_1"]["patient"] == "LIDC-IDRI-0001"
    rows = read_inventory(inv)
    assert rows[uids["a_small"]]["decision"] == "chosen"
    assert rows[uids["a_small"]]["item"] == "LIDC-IDRI-0001_1"


def test_counts_of_read_and_skipped_files_are_logged(tree, tmp_path, caplog):
    """What the walk passed over is counted by kind in the log: LIDC's XML annotations and other files that
    are not DICOM (by extension), a broken DICOM file, a DICOM file without a series (a DICOMDIR)."""
    root, _ = tree
    junk = root / "junk"
    junk.mkdir()
    (junk / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x07" * 64)
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.SeriesInstanceUID
    ds.save_as(junk / "DICOMDIR", enforce_file_format=True)
    (junk / "README").write_text("no extension")
    (junk / "annotations.XML").write_text("<LidcReadMessage/>")

    with caplog.at_level(logging.INFO, logger="ctdiff.ingest.discover"):
        discover(root, tmp_path / "inv.tsv", tmp_path / "s.json")
    text = caplog.text
    n_dicom = 14 + 11 + 12 + 2 + 3 + 12 + 15
    assert f"read {n_dicom + 6} files under {root}: {n_dicom} DICOM files in 7 series" in text
    assert "(files per modality: CT 67, CR 2)" in text
    assert ("skipped 6 files: not DICOM (.xml) 2, DICOM without SeriesInstanceUID 1, broken DICOM 1, "
            "not DICOM (.csv) 1, not DICOM (no extension) 1") in text
    assert ("2 series chosen as 2 items; 5 rejected: localizer 1, missing ImagePositionPatient in 1 file(s) 1, "
            "modality CR is not CT 1, only 3 slices 1, smaller CT series of the same patient 1") in text


def test_duplicate_positions_count_once(tmp_path):
    root = tmp_path / "root"
    write_series(root / "a", "P1", 12, prefix="a")
    uid = write_series(root / "b", "P2", 12, dz=0.0)  # 12 files, one position
    discover(root, tmp_path / "inv.tsv", tmp_path / "s.json")
    row = read_inventory(tmp_path / "inv.tsv")[uid]
    assert (row["n_files"], row["n_positions"], row["reason"]) == ("12", "1", "only 1 slice")


def test_no_usable_series_gives_an_empty_table(tmp_path, caplog):
    root = tmp_path / "root"
    write_series(root / "cr", "P1", 2, modality="CR")
    (root / "notes.txt").write_text("not dicom")
    inv = tmp_path / "inv.tsv"
    assert discover(root, inv, tmp_path / "s.json") == []
    assert "no usable CT series" in caplog.text
    assert [r["reason"] for r in read_inventory(inv).values()] == ["modality CR is not CT"]
    assert json.loads((tmp_path / "s.json").read_text()) == {}
    with pytest.raises(ValueError, match="not a folder"):
        discover(tmp_path / "missing", inv, tmp_path / "s.json")
    with pytest.raises(ValueError, match="'largest' or 'all'"):
        discover(root, inv, tmp_path / "s.json", series="biggest")
