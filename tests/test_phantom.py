"""Tests for ctdiff.phantom: determinism, DICOM round trip, dicom2nifti conversion, anatomy, distractors.

Cohorts are written at a 48-pixel matrix to stay fast; the anatomy is checked on a 128-pixel volume.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import dicom2nifti.convert_dicom
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_rescale
from scipy import ndimage

from ctdiff.phantom import HU_RANGE, PADDING_HU, PADDING_RAW, phantom_volume, write_cohort, write_patient
from ctdiff.phantom.dicom import _draw_acquisition

MATRIX, SEED = 48, 3


def digests(root: Path) -> dict[str, str]:
    """{path relative to root: sha256 of the file's bytes} for every file under root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def series_of(patient_dir: Path) -> dict[str, list[tuple[Path, pydicom.Dataset]]]:
    """Every file of one patient, grouped by SeriesInstanceUID from the headers."""
    groups = defaultdict(list)
    for path in sorted(patient_dir.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        groups[ds.SeriesInstanceUID].append((path, ds))
    return dict(groups)


def main_series(patient_dir: Path) -> list[tuple[Path, pydicom.Dataset]]:
    """The largest series, sorted by ImagePositionPatient z (never by file name)."""
    largest = max(series_of(patient_dir).values(), key=len)
    return sorted(largest, key=lambda item: float(item[1].ImagePositionPatient[2]))


def regenerate(seed: int, index: int) -> tuple[np.ndarray, object]:
    """Redraw patient ``index`` of a cohort exactly as write_cohort/write_patient do."""
    rng = np.random.default_rng([seed, index])
    acq = _draw_acquisition(rng, MATRIX)
    return phantom_volume(rng, acq.shape, acq.spacing, body_scale=acq.body_scale, nodules=True), acq


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("cohort")
    return root, write_cohort(root, 2, SEED, matrix=MATRIX)


def test_tree_layout_and_file_format(cohort):
    root, ids = cohort
    assert ids == ["PHANTOM-0001", "PHANTOM-0002"]
    for path in root.rglob("*.dcm"):
        patient, study, series, name = path.relative_to(root).parts
        raw = path.read_bytes()
        assert raw[128:132] == b"DICM" and raw[:128] == bytes(128)
        ds = pydicom.dcmread(path)
        assert (ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID) == (patient, study, series)
        assert ds.PatientName == patient.replace("-", "^")
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert name == f"{int(ds.InstanceNumber):04d}.dcm"
        assert ds.Manufacturer == "ctdiff phantom"
        for keyword in ("PixelSpacing", "ImagePositionPatient", "SliceThickness", "RescaleIntercept"):
            for value in np.atleast_1d(ds.get(keyword, [])):
                assert len(str(value)) <= 16, (keyword, value)


def test_writing_is_deterministic_and_independent_of_cohort_size(cohort, tmp_path):
    root, _ = cohort
    first = digests(root)
    write_cohort(tmp_path / "again", 2, SEED, matrix=MATRIX)
    assert digests(tmp_path / "again") == first
    write_cohort(tmp_path / "three", 3, SEED, matrix=MATRIX)
    three = digests(tmp_path / "three")
    assert {k: v for k, v in three.items() if not k.startswith("PHANTOM-0003")} == first
    write_cohort(tmp_path / "other", 1, SEED + 1, matrix=MATRIX)
    other = digests(tmp_path / "other")
    assert not set(other.values()) & set(first.values())


def test_main_series_round_trips_hu_and_geometry(cohort):
    root, _ = cohort
    series = main_series(root / "PHANTOM-0002")
    volume, acq = regenerate(SEED, 1)
    assert len(series) == acq.shape[0]
    numbers = [int(ds.InstanceNumber) for _, ds in series]
    assert numbers in (list(range(1, len(series) + 1)), list(range(len(series), 0, -1)))
    hu = np.stack([apply_rescale(ds.pixel_array, ds) for _, ds in series])
    np.testing.assert_array_equal(hu, volume)
    z = np.array([float(ds.ImagePositionPatient[2]) for _, ds in series])
    np.testing.assert_allclose(np.diff(z), acq.spacing[0], atol=1e-3)
    first = series[0][1]
    assert [float(v) for v in first.PixelSpacing] == pytest.approx(acq.spacing[1:])
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    # Padding exactly outside the reconstruction circle (diameter = matrix * pixel spacing), from headers.
    dy, dx = (float(v) for v in first.PixelSpacing)
    x = float(first.ImagePositionPatient[0]) + dx * np.arange(first.Columns)
    y = float(first.ImagePositionPatient[1]) + dy * np.arange(first.Rows)
    centre_x, centre_y = x.mean(), y.mean()
    outside = np.hypot(x[None, :] - centre_x, y[:, None] - centre_y) > first.Columns * dx / 2
    assert first.PixelPaddingValue == PADDING_RAW and float(first.RescaleIntercept) == -1024
    assert np.all((hu == PADDING_HU) == outside[None])
    assert np.all(first.pixel_array[outside] == PADDING_RAW)
    assert HU_RANGE[0] <= hu[:, ~outside].min() and hu[:, ~outside].max() <= HU_RANGE[1]


def test_dicom2nifti_converts_main_series(cohort, tmp_path):
    root, _ = cohort
    series = main_series(root / "PHANTOM-0001")
    volume, acq = regenerate(SEED, 0)
    result = dicom2nifti.convert_dicom.dicom_array_to_nifti([ds for _, ds in series], str(tmp_path / "p.nii.gz"),
                                                            reorient_nifti=True)
    image = result["NII"]
    assert image.shape == (MATRIX, MATRIX, acq.shape[0])
    np.testing.assert_allclose(image.header.get_zooms(), (acq.spacing[2], acq.spacing[1], acq.spacing[0]),
                               rtol=1e-4)
    # Map every NIfTI voxel back to (slice, row, column) of the phantom through the affine (RAS -> LPS).
    first = series[0][1]
    origin = np.array([float(v) for v in first.ImagePositionPatient])
    ijk = np.stack(np.meshgrid(*map(np.arange, image.shape), indexing="ij"), -1).reshape(-1, 3)
    lps = (ijk @ image.affine[:3, :3].T + image.affine[:3, 3]) * [-1, -1, 1]
    k, r, c = (np.rint((lps - origin) / [acq.spacing[2], acq.spacing[1], acq.spacing[0]]).astype(int).T)[::-1]
    expected = volume[k, r, c].reshape(image.shape)
    np.testing.assert_array_equal(np.asarray(image.dataobj), expected)


@pytest.mark.parametrize("patient_id, localizer, radiograph", [
    ("PHANTOM-0001", True, True), ("PHANTOM-0002", False, False),
    ("PHANTOM-0004", True, False), ("PHANTOM-0005", False, True)])
def test_distractor_series(tmp_path, cohort, patient_id, localizer, radiograph):
    root, _ = cohort
    if not (root / patient_id).exists():
        root = tmp_path
        write_patient(root, patient_id, np.random.default_rng([SEED, 99]), matrix=MATRIX)
    groups = series_of(root / patient_id)
    kinds = sorted((ds.Modality, ds.get("ImageType", ["", "", ""])[-1], len(items)) for items in groups.values()
                   for ds in [items[0][1]])
    main = max(groups.values(), key=len)
    assert main[0][1].Modality == "CT" and list(main[0][1].ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert len(main) >= 100 and sum(len(items) == len(main) for items in groups.values()) == 1
    assert (("CT", "LOCALIZER", 3) in kinds) == localizer
    cr = [items for items in groups.values() if items[0][1].Modality == "CR"]
    assert bool(cr) == radiograph
    assert len(kinds) == 1 + localizer + radiograph
    if radiograph:
        (path, ds), = cr[0]
        assert "ImagePositionPatient" not in ds and ds.SOPClassUID == pydicom.uid.ComputedRadiographyImageStorage
        assert ds.StudyInstanceUID != main[0][1].StudyInstanceUID and ds.pixel_array.ndim == 2
    if localizer:
        scout = next(items for items in groups.values() if len(items) == 3)
        assert scout[0][1].StudyInstanceUID == main[0][1].StudyInstanceUID
        assert scout[0][1].SeriesInstanceUID != main[0][1].SeriesInstanceUID


def test_acquisition_ranges():
    acqs = [_draw_acquisition(np.random.default_rng([0, i]), 512) for i in range(300)]
    fov = np.array([a.spacing[1] * 512 for a in acqs])
    dz = np.array([a.spacing[0] for a in acqs])
    n = np.array([a.shape[0] for a in acqs])
    assert 320 - 1e-3 <= fov.min() and fov.max() <= 460 + 1e-3 and np.ptp(fov) > 80
    assert 0.62 <= fov.min() / 512 and fov.max() / 512 <= 0.9
    assert 1.25 <= dz.min() and dz.max() <= 2.5 and np.ptp(dz) > 1.0
    assert 100 <= n.min() and n.max() <= 290 and np.ptp(n) > 120
    assert 0.2 < np.mean([a.descending for a in acqs]) < 0.8
    assert 0.15 < np.mean([a.thickness != a.spacing[0] for a in acqs]) < 0.5


@pytest.fixture(scope="module")
def chest() -> np.ndarray:
    """A 128-pixel phantom: 3 mm pixels (384 mm field of view), 3.5 mm slices, 311 mm long."""
    return phantom_volume(np.random.default_rng(0), (90, 128, 128), (3.5, 3.0, 3.0))


def body_and_lungs(slice_hu: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Body mask (the largest tissue component, holes filled) and the air pockets inside it, largest first."""
    labels, n = ndimage.label(slice_hu > -500)
    if n == 0:
        return np.zeros_like(slice_hu, bool), []
    body = ndimage.binary_fill_holes(labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    pockets, m = ndimage.label(body & (slice_hu < -400))
    sizes = np.bincount(pockets.ravel())[1:]
    return body, [pockets == i + 1 for i in np.argsort(sizes)[::-1]]


def test_lungs_two_dark_fields_either_side(chest):
    body, pockets = body_and_lungs(chest[int(0.6 * len(chest))])
    right, left = sorted(pockets[:2], key=lambda m: np.argwhere(m)[:, 1].mean())
    for lung in (right, left):
        assert chest[int(0.6 * len(chest))][lung].mean() < -700
        assert lung.sum() > 0.1 * body.sum()
    centre = np.argwhere(body)[:, 1].mean()
    assert np.argwhere(right)[:, 1].mean() < centre < np.argwhere(left)[:, 1].mean()


def mediastinum(right: np.ndarray, left: np.ndarray) -> np.ndarray:
    """Pixels between the medial edges of the two lungs, row by row, where both lungs are present."""
    region = np.zeros_like(right)
    for r in np.flatnonzero(right.any(1) & left.any(1)):
        region[r, np.flatnonzero(right[r]).max() + 1:np.flatnonzero(left[r]).min()] = True
    return region


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_heart_is_on_the_patients_left_of_the_spine(seed):
    chest = phantom_volume(np.random.default_rng(seed), (90, 128, 128), (3.5, 3.0, 3.0))
    # Heart level: the slice with most soft tissue in the mediastinum, among slices below the middle whose
    # lungs hold at least 75% of the largest lung area (this leaves out the diaphragm domes).
    lungs = [sorted(body_and_lungs(s)[1][:2], key=lambda m: np.argwhere(m)[:, 1].mean()) for s in chest]
    area = np.array([sum(m.sum() for m in pair) for pair in lungs])
    best = None
    for k in np.flatnonzero(area[:len(chest) // 2] >= 0.75 * area.max()):
        region = mediastinum(*lungs[k])
        soft = region & (chest[k] > -30) & (chest[k] < 100)
        if best is None or soft.sum() > best[0].sum():
            best = soft, region & (chest[k] > 300), k
    soft, bone, k = best
    heart_x, spine_x = np.argwhere(soft)[:, 1].mean(), np.argwhere(bone)[:, 1].mean()
    assert heart_x - spine_x > 3, (k, heart_x, spine_x)      # > 9 mm toward the patient's left (column +)
    assert np.median(chest[k][soft]) == pytest.approx(40, abs=25)
    right, left = lungs[k]
    assert left.sum() < right.sum()                          # the heart takes room from the left lung


def test_lungs_taper_and_body_is_longer(chest):
    lung_area = np.array([sum(m.sum() for m in body_and_lungs(s)[1][:2]) for s in chest])
    body_area = np.array([body_and_lungs(s)[0].sum() for s in chest])
    mid = lung_area[int(0.6 * len(chest))]
    assert lung_area[0] == 0 and lung_area[-1] < 0.05 * mid
    assert lung_area[int(0.85 * len(chest))] < 0.8 * mid
    assert body_area.min() > 0.7 * body_area.max()


def test_bone_air_noise_and_table(chest):
    k = int(0.6 * len(chest))
    slice_hu = chest[k]
    body, _ = body_and_lungs(slice_hu)
    rows = np.flatnonzero(body[:, 64])
    column = slice_hu[:, 62:66].max(axis=1)
    assert column[rows[0]:rows[-1]].max() > 350                         # vertebra on the midline
    assert column[rows[-1] + 1:rows[-1] + 12].max() > 150                # table under the back
    air = slice_hu[5:20, 50:78]
    assert abs(air.mean() + 1000) < 10 and 8 < air.std() < 25
    bony = (chest > 300).mean(axis=(1, 2))
    assert (bony > 0).all()


def test_body_scale_scales_the_body():
    small, large = (phantom_volume(np.random.default_rng(5), (20, 64, 64), (15.0, 7.0, 7.0), body_scale=s)
                    for s in (0.85, 1.15))
    area = [np.mean([body_and_lungs(s)[0].sum() for s in v[5:15]]) for v in (small, large)]
    assert area[1] / area[0] == pytest.approx((1.15 / 0.85) ** 2, rel=0.15)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="n_patients"):
        write_cohort(tmp_path, 0, 0)
    with pytest.raises(ValueError, match="matrix"):
        write_patient(tmp_path, "PHANTOM-0001", np.random.default_rng(0), matrix=8)
    with pytest.raises(ValueError, match="body_scale"):
        phantom_volume(np.random.default_rng(0), (4, 32, 32), (2.0, 1.0, 1.0), body_scale=0)
