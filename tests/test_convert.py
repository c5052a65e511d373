"""Tests for ctdiff.ingest.convert on small series built from pydicom's real CT slice (CT_small.dcm)."""

from __future__ import annotations

import copy
import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut
from dicom2nifti.convert_dicom import dicom_array_to_nifti
from pydicom.uid import generate_uid

from ctdiff.ingest.convert import (VOLUME_NAME, _dicom2nifti_las, _dicom2nifti_settings, convert_item,
                                 convert_or_reject)

COLS = 120  # CT_small is 128x128; a narrower image catches swapped row/column axes
ROW_SPACING, COL_SPACING = 0.6, 0.8  # PixelSpacing = [between rows, between columns] (mm)


def write_series(folder: Path, z: list[float], *, iop=(1, 0, 0, 0, 1, 0), thickness=5.0,
                 patient="LIDC-IDRI-0001", pad_slice: int | None = None) -> tuple[str, list[str]]:
    """Write one CT series with slice k at position ``z[k]`` along its normal; return (uid, files).

    Files are named so that file-name order is the reverse of position order, and InstanceNumber runs
    backwards too; ``SliceThickness`` is deliberately unrelated to the real spacing.
    """
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    folder.mkdir(parents=True, exist_ok=True)
    uid, files = generate_uid(), []
    row, col = np.array(iop[:3], float), np.array(iop[3:], float)
    normal = np.cross(row, col)
    origin = np.array([-40.0, -50.0, 0.0])
    for k, zk in enumerate(z):
        ds = copy.deepcopy(base)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID = patient
        ds.InstanceNumber = len(z) - k
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.ImagePositionPatient = [round(float(v), 6) for v in origin + zk * normal]
        ds.PixelSpacing = [ROW_SPACING, COL_SPACING]
        ds.SliceThickness = thickness
        pixels = base.pixel_array[:, :COLS].astype(np.int16) + 7 * k  # slices differ
        if pad_slice == k:
            pixels[:10, :10] = -1000  # stored -1000 -> -2024 HU, below the padding floor
        ds.Columns = COLS
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        name = f"{len(z) - 1 - k:03d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
        files.append(f"{folder.name}/{name}")
    return uid, sorted(files)


def series_table(tmp_path: Path, uid: str, files: list[str], item="LIDC-IDRI-0001") -> Path:
    """The discover-stage JSON for one item."""
    path = tmp_path / "series.json"
    path.write_text(json.dumps({item: {"patient": item, "series_uid": uid, "files": files}}))
    return path


def expected_from_dicom(folder: Path, img: nib.Nifti1Image) -> np.ndarray:
    """HU of every output voxel looked up in the DICOM slices through the output affine.

    Each voxel's RAS position is turned into LPS, matched to the slice at that position along the
    normal and to the (row, column) pixel there; values come from pydicom's own modality LUT.
    """
    slices = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    iop = np.array(slices[0].ImageOrientationPatient, float)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    ipp = np.array([s.ImagePositionPatient for s in slices], float)
    hu = np.stack([apply_modality_lut(s.pixel_array, s) for s in slices])
    ijk = np.indices(img.shape).reshape(3, -1)
    ras = img.affine[:3, :3] @ ijk + img.affine[:3, 3:]
    lps = ras * np.array([[-1.0], [-1.0], [1.0]])
    s = np.abs((lps.T @ normal)[:, None] - (ipp @ normal)[None, :]).argmin(axis=1)
    rel = lps.T - ipp[s]
    c = np.rint(rel @ row / COL_SPACING).astype(int)
    r = np.rint(rel @ col / ROW_SPACING).astype(int)
    assert np.allclose(rel @ normal, 0, atol=1e-3)
    assert c.min() == 0 and c.max() == COLS - 1 and r.min() == 0 and r.max() == 127
    return hu[s, r, c].reshape(img.shape)


@pytest.mark.parametrize("iop", [(1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, 1, 0)], ids=["axial", "x-flipped"])
def test_values_and_geometry_follow_dicom(tmp_path, iop):
    dz = 2.5
    z = [dz * k for k in range(12)]
    uid, files = write_series(tmp_path / "s", z, iop=iop, thickness=5.0, pad_slice=3)
    out, qc = tmp_path / "nifti" / "p.nii.gz", tmp_path / "qc" / "p.tsv"

    row = convert_item(tmp_path, series_table(tmp_path, uid, files), "LIDC-IDRI-0001", out, qc)

    img = nib.load(out)
    data = np.asarray(img.dataobj)
    assert img.get_data_dtype() == np.int16 and data.dtype == np.int16
    assert nib.aff2axcodes(img.affine) == ("L", "A", "S")  # dicom2nifti's reorientation
    assert img.shape == (COLS, 128, 12)
    assert np.allclose(img.header.get_zooms(), (COL_SPACING, ROW_SPACING, dz), atol=1e-4)
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1

    expected = expected_from_dicom(tmp_path / "s", img)
    clamped = expected < -1024
    assert clamped.sum() == 100
    assert np.array_equal(data[~clamped], expected[~clamped])
    assert np.all(data[clamped] == -1024)

    # The first stored pixel of the lowest slice sits at ImagePositionPatient (LPS -> RAS).
    first = pydicom.dcmread(tmp_path / "s" / "011.dcm")
    target = np.array(first.ImagePositionPatient, float) * [-1, -1, 1]
    voxel = np.rint(np.linalg.solve(img.affine[:3, :3], target - img.affine[:3, 3])).astype(int)
    assert np.allclose(img.affine[:3, :3] @ voxel + img.affine[:3, 3], target, atol=1e-3)
    assert data[tuple(voxel)] == apply_modality_lut(first.pixel_array, first)[0, 0]

    with open(qc, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert len(rows) == 1 and rows[0]["decision"] == "converted" and rows[0]["reason"] == ""
    assert float(rows[0]["spacing_z_mm"]) == pytest.approx(dz)
    assert int(rows[0]["n_slices"]) == 12 and rows[0]["shape"] == f"{COLS}x128x12"
    assert row["hu_min"] == -1024 and row["n_padding_clamped"] == 100
    assert not list(out.parent.glob("*tmp*"))


C20, S20 = np.cos(np.deg2rad(20.0)), np.sin(np.deg2rad(20.0))


@pytest.mark.parametrize("iop", [(1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, 1, 0), (0, 1, 0, 1, 0, 0),
                                 (1, 0, 0, 0, 0, -1), (0, 1, 0, 0, 0, -1), (C20, S20, 0, -S20, C20, 0)],
                         ids=["axial", "x-flipped", "transposed", "coronal", "sagittal", "oblique-20deg"])
def test_reorientation_equals_dicom2niftis(tmp_path, iop):
    """nibabel's reorientation in memory gives dicom2nifti's ``reorient_nifti=True`` array and affine."""
    write_series(tmp_path / "s", [2.5 * k for k in range(6)], iop=iop)
    datasets = [pydicom.dcmread(f) for f in sorted((tmp_path / "s").glob("*.dcm"))]
    with _dicom2nifti_settings():
        reference = dicom_array_to_nifti(datasets, str(tmp_path / "ref.nii"), reorient_nifti=True)["NII"]
    ours = _dicom2nifti_las("LIDC-IDRI-0001", datasets)
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours.affine, reference.affine, rtol=0, atol=1e-9)
    assert np.array_equal(np.asarray(ours.dataobj), np.asarray(reference.dataobj))


def test_missing_slice_is_refused(tmp_path):
    z = [2.0 * k for k in range(12) if k != 6]
    uid, files = write_series(tmp_path / "s", z)
    with pytest.raises(ValueError, match=r"LIDC-IDRI-0001: missing slice\(s\): 1 gap of 4\.000 mm in a "
                                         r"2\.000 mm stack \(1 slice missing; gaps after 10\.000 mm\)"):
        convert_item(tmp_path, series_table(tmp_path, uid, files), "LIDC-IDRI-0001",
                     tmp_path / "p.nii.gz", tmp_path / "p.tsv")
    assert not (tmp_path / "p.nii.gz").exists() and not (tmp_path / "p.tsv").exists()


def test_duplicate_position_is_refused(tmp_path):
    z = [2.0 * k for k in range(12)] + [8.0]
    uid, files = write_series(tmp_path / "s", z)
    with pytest.raises(ValueError, match=r"LIDC-IDRI-0001: duplicate slice position"):
        convert_item(tmp_path, series_table(tmp_path, uid, files), "LIDC-IDRI-0001",
                     tmp_path / "p.nii.gz", tmp_path / "p.tsv")


def store_twice(folder: Path, files: list[str]) -> list[str]:
    """Store every file of a series once more (new SOPInstanceUID) as ``b<name>``; return the copies."""
    copies = []
    for rel in files:
        ds = pydicom.dcmread(folder.parent / rel)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        name = f"b{Path(rel).name}"
        ds.save_as(folder / name, enforce_file_format=True)
        copies.append(f"{folder.name}/{name}")
    return copies


def assert_same_volume(a: Path, b: Path) -> None:
    img_a, img_b = nib.load(a), nib.load(b)
    assert np.array_equal(np.asarray(img_a.dataobj), np.asarray(img_b.dataobj))
    assert np.array_equal(img_a.affine, img_b.affine)


def test_stray_slice_is_rejected_or_dropped(tmp_path):
    """A uniform 12-slice stack and one slice 38 mm beyond its end (file 000.dcm)."""
    item = "LIDC-IDRI-0001"
    uid, files = write_series(tmp_path / "s", [2.0 * k for k in range(12)] + [22.0 + 38.0])
    table = series_table(tmp_path, uid, files)
    where = "38.0 mm beyond the last slice of a uniform 12-slice stack (2.000 mm)"

    row = convert_or_reject(tmp_path, table, item, tmp_path / "off", tmp_path / "off.tsv")
    assert (row["decision"], row["reason"]) == ("rejected", f"stray slice(s): 1 slice {where}")
    assert list((tmp_path / "off").iterdir()) == []

    row = convert_or_reject(tmp_path, table, item, tmp_path / "on", tmp_path / "on.tsv", recover_stacks=True)
    assert (row["decision"], row["reason"]) == ("converted", f"recovered: dropped 1 stray slice {where}")
    assert row["n_slices"] == 12 and row["spacing_z_mm"] == pytest.approx(2.0)
    with open(tmp_path / "on.tsv", newline="") as fh:
        assert next(csv.DictReader(fh, delimiter="\t"))["reason"] == row["reason"]

    clean = series_table(tmp_path, uid, [f for f in files if f != "s/000.dcm"])
    convert_item(tmp_path, clean, item, tmp_path / "clean.nii.gz", tmp_path / "clean.tsv")
    assert_same_volume(tmp_path / "on" / VOLUME_NAME, tmp_path / "clean.nii.gz")


def test_series_stored_twice_is_rejected_or_kept_once(tmp_path):
    item = "LIDC-IDRI-0001"
    uid, files = write_series(tmp_path / "s", [2.0 * k for k in range(12)])
    copies = store_twice(tmp_path / "s", files)
    table = series_table(tmp_path, uid, sorted(files + copies))
    twice = ("duplicate slice position(s): every one of the 12 positions is held by 2 files "
             "(one uniform 2.000 mm stack stored twice)")

    row = convert_or_reject(tmp_path, table, item, tmp_path / "off", tmp_path / "off.tsv")
    assert (row["decision"], row["reason"]) == ("rejected", twice)

    row = convert_or_reject(tmp_path, table, item, tmp_path / "on", tmp_path / "on.tsv", recover_stacks=True)
    assert (row["decision"], row["reason"]) == ("converted", "recovered: kept the first of 2 identical files "
                                                "at each of the 12 positions of one uniform 2.000 mm stack")
    assert row["n_slices"] == 12
    convert_item(tmp_path, series_table(tmp_path, uid, files), item, tmp_path / "once.nii.gz",
                 tmp_path / "once.tsv")
    assert_same_volume(tmp_path / "on" / VOLUME_NAME, tmp_path / "once.nii.gz")

    # One copy differs (the slice at 6 mm is k = 3, file 008.dcm): nothing says which file is right.
    victim = tmp_path / "s" / "b008.dcm"
    ds = pydicom.dcmread(victim)
    ds.PixelData = (ds.pixel_array + 1).astype(np.int16).tobytes()
    ds.save_as(victim)
    table = series_table(tmp_path, uid, sorted(files + copies))
    row = convert_or_reject(tmp_path, table, item, tmp_path / "differ", tmp_path / "differ.tsv",
                            recover_stacks=True)
    assert (row["decision"], row["reason"]) == ("rejected", f"{twice}, but the files differ in pixel data at "
                                                            "1 of them (at 6.000 mm)")
    assert list((tmp_path / "differ").iterdir()) == []


def test_missing_rescale_is_refused(tmp_path):
    uid, files = write_series(tmp_path / "s", [2.0 * k for k in range(12)])
    victim = tmp_path / files[4]
    ds = pydicom.dcmread(victim)
    del ds.RescaleIntercept
    ds.save_as(victim)
    with pytest.raises(ValueError, match="missing RescaleIntercept: in 1 of 12"):
        convert_item(tmp_path, series_table(tmp_path, uid, files), "LIDC-IDRI-0001",
                     tmp_path / "p.nii.gz", tmp_path / "p.tsv")


def test_foreign_file_and_unknown_item_are_refused(tmp_path):
    uid, files = write_series(tmp_path / "a", [2.0 * k for k in range(12)])
    _, other = write_series(tmp_path / "b", [2.0 * k for k in range(12)])
    table = series_table(tmp_path, uid, files + other[:1])
    with pytest.raises(ValueError, match="1 file\\(s\\) do not belong to series"):
        convert_item(tmp_path, table, "LIDC-IDRI-0001", tmp_path / "p.nii.gz", tmp_path / "p.tsv")
    with pytest.raises(ValueError, match="LIDC-IDRI-0002: unknown item"):
        convert_item(tmp_path, table, "LIDC-IDRI-0002", tmp_path / "p.nii.gz", tmp_path / "p.tsv")


def test_unreadable_file_is_named(tmp_path):
    uid, files = write_series(tmp_path / "s", [2.0 * k for k in range(12)])
    (tmp_path / files[2]).write_bytes(b"not a DICOM file")
    with pytest.raises(ValueError, match=f"LIDC-IDRI-0001: unreadable file: {files[2]}"):
        convert_item(tmp_path, series_table(tmp_path, uid, files), "LIDC-IDRI-0001",
                     tmp_path / "p.nii.gz", tmp_path / "p.tsv")


def test_dicom2nifti_settings_are_restored(tmp_path):
    import dicom2nifti.settings as settings

    settings.disable_validate_slice_increment()
    try:
        uid, files = write_series(tmp_path / "s", [2.0 * k for k in range(12)])
        convert_item(tmp_path, series_table(tmp_path, uid, files), "LIDC-IDRI-0001",
                     tmp_path / "p.nii.gz", tmp_path / "p.tsv")
        assert settings.validate_slice_increment is False
    finally:
        settings.enable_validate_slice_increment()


def test_jobs_that_only_read_converted_volumes_do_not_import_dicom2nifti():
    """The preprocess and cohort jobs import this module for VOLUME_NAME and QC_COLUMNS; dicom2nifti (and the
    scipy.ndimage it loads) waits for the convert job, and no ingestion job imports torch or matplotlib."""
    code = ("import sys, ctdiff.logs, ctdiff.config, ctdiff.ingest.convert, ctdiff.ingest.cohort, "
            "ctdiff.ingest.preprocess, ctdiff.ingest.discover; "
            "print(sorted(m for m in ('dicom2nifti', 'scipy.ndimage', 'torch', 'matplotlib', 'pandas') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
