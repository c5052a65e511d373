"""The phantom's nodules recovered through the pipeline's own path: phantom DICOM + LIDC XML -> discover ->
convert (mask and table) -> preprocess (resampled mask)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctdiff.config import from_dict
from ctdiff.ingest.annotations.resample import resample_nodules
from ctdiff.ingest.convert import convert_or_reject
from ctdiff.ingest.discover import discover
from ctdiff.ingest.preprocess import preprocess
from ctdiff.phantom import write_patient
from ctdiff.phantom.dicom import _draw_acquisition
from ctdiff.phantom.nodules import GROUND_GLASS_HU, READER_SCALE, READER_SHIFT_PX, SOLID_HU
from ctdiff.phantom.scan import phantom_scan

MATRIX, SEED, PATIENTS = 192, 7, (0, 1)


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Two phantom patients through discover and convert; their drawn nodules and acquisitions."""
    tmp = tmp_path_factory.mktemp("nodules")
    root, drawn = tmp / "dicom", {}
    for i in PATIENTS:
        pid = f"PHANTOM-{i + 1:04d}"
        write_patient(root, pid, np.random.default_rng([SEED, i]), matrix=MATRIX)
        rng = np.random.default_rng([SEED, i])
        acq = _draw_acquisition(rng, MATRIX)
        volume, nodules, _ = phantom_scan(rng, acq.shape, acq.spacing, body_scale=acq.body_scale)
        drawn[pid] = (acq, nodules, volume)
    items = discover(root, tmp / "inv.tsv", tmp / "series.json", annotations_tsv=tmp / "ann.tsv")
    for item in items:
        convert_or_reject(root, tmp / "series.json", item, tmp / "nifti" / item, tmp / "qc" / f"{item}.tsv")
    return tmp, items, drawn


def test_every_ct_series_has_its_reading_and_radiographs_are_ignored(pipeline):
    tmp, items, _ = pipeline
    rows = rows_of(tmp / "ann.tsv")
    assert sorted(r["item"] for r in rows if r["decision"] == "matched") == items == ["PHANTOM-0001", "PHANTOM-0002"]
    # patient 1 has a radiograph series (numbers 1, 5, 9, ...) with a radiograph reading beside it
    assert [r["root_element"] for r in rows if r["decision"] == "ignored"] == ["IdriReadMessage"]
    assert len(rows) == 3


def test_nodules_are_painted_in_the_lungs(pipeline):
    _, _, drawn = pipeline
    for acq, nodules, volume in drawn.values():
        dz, dy, dx = acq.spacing
        outlined = [n for n in nodules if n.kind == "nodule"]
        assert outlined
        for n in outlined:
            k = int(round(n.centre[2] / dz))
            j = int(round(n.centre[1] / dy + (MATRIX - 1) / 2))
            i = int(round(n.centre[0] / dx + (MATRIX - 1) / 2))
            centre_hu = float(volume[k, j, i])
            assert centre_hu > -700, (n, centre_hu)       # lung is -860 HU, noise sd <= 20 HU
            # the voxel nearest the centre lies within half a voxel diagonal of it: inside the solid part
            # when that part is wider than the diagonal
            if n.core * min(n.radii) > np.sqrt(dx * dx + dy * dy + dz * dz) / 2:
                assert abs(centre_hu - SOLID_HU) < 100, (n, centre_hu)


def test_nodules_recovered_with_their_centroid_and_diameter(pipeline):
    """Each drawn outlined nodule is a table row within the voxelisation bound of its centre and size.

    Every reader's outline is the true cross-section scaled by 1 +/- READER_SCALE and shifted by up to
    READER_SHIFT_PX pixel, traced on the pixels just outside it (whole pixels: half a pixel of rounding per
    axis); the filled pixels are those whose centres lie inside. So the consensus lies between the
    ellipsoid scaled by 1 - READER_SCALE and shrunk by (shift + one pixel diagonal) and the one scaled by
    1 + READER_SCALE and grown by as much; counting whole voxels adds half a voxel diagonal more. With h
    the largest voxel diagonal, |d - d_true| <= 2 (READER_SCALE r + 2 h) and the centroid moves by at most
    the shift plus h."""
    tmp, _, drawn = pipeline
    for pid, (acq, nodules, _) in drawn.items():
        dz, dy, dx = acq.spacing
        h = float(np.sqrt(dx * dx + dy * dy + dz * dz))
        shift = READER_SHIFT_PX * float(np.hypot(dx, dy))
        rows = [r for r in rows_of(tmp / "nifti" / pid / "nodules.tsv") if r["kind"] == "nodule"]
        centres = np.array([[float(r[c]) for c in ("centroid_x_mm", "centroid_y_mm", "centroid_z_mm")] for r in rows])
        outlined = [n for n in nodules if n.kind == "nodule"]
        for n in outlined:
            others = [m for m in outlined if m is not n]
            if any(np.linalg.norm(np.subtract(m.centre, n.centre)) < max(m.radii) + max(n.radii) + 2 * h
                   for m in others):
                continue                                         # two nodules that touch are one mark
            truth = np.array([n.centre[0], n.centre[1], acq.z0 + n.centre[2]])
            distance = np.linalg.norm(centres - truth, axis=1)
            best = int(np.argmin(distance))
            assert distance[best] <= shift + h, (pid, n, rows[best])
            r = n.diameter_mm / 2
            assert abs(float(rows[best]["diameter_mm"]) - n.diameter_mm) <= 2 * (READER_SCALE * r + 2 * h), \
                (pid, n, rows[best])
            assert 1 <= int(rows[best]["n_readers"]) <= 4


def test_points_and_non_nodules_reach_the_table(pipeline):
    tmp, _, drawn = pipeline
    for pid, (acq, nodules, _) in drawn.items():
        rows = rows_of(tmp / "nifti" / pid / "nodules.tsv")
        dx = acq.spacing[2]
        for kind in ("small", "non-nodule"):
            points = [n for n in nodules if n.kind == kind]
            got = [r for r in rows if r["kind"] == kind]
            assert len(got) >= len(points) and all(r["label"] == "0" and r["voxels"] == "0" for r in got)
            for n in points:            # a reader's point is within one pixel per axis and half a slice
                truth = np.array([n.centre[0], n.centre[1], acq.z0 + n.centre[2]])
                d = min(np.linalg.norm(np.array([float(r[c]) for c in ("centroid_x_mm", "centroid_y_mm",
                                                                       "centroid_z_mm")]) - truth) for r in got)
                assert d <= np.sqrt(2 * (1.5 * dx) ** 2 + (acq.spacing[0] / 2) ** 2), (pid, n)


def test_preprocessed_mask_keeps_position_and_size(pipeline, tmp_path):
    """Resampled to 5 mm voxels: each nodule at least three output voxels across keeps its centroid within
    half an output voxel diagonal plus one input voxel, and its equivalent diameter within two output
    voxels (the 0.5 level of the blurred indicator lies within half a voxel of the boundary, and whole
    voxels add half a voxel per side)."""
    tmp, items, _ = pipeline
    size, spacing, checked = 80, 5.0, 0
    for item in items:
        rows = resample_nodules(tmp / "nifti" / item, tmp_path / f"{item}.nii.gz", tmp_path / f"{item}.tsv",
                                size=size, spacing_mm=spacing)
        mask = nib.load(tmp_path / f"{item}.nii.gz")
        assert mask.shape == (size,) * 3 and mask.get_data_dtype() == np.uint8
        assert np.allclose(np.abs(np.diag(mask.affine)[:3]), spacing)
        data = np.asarray(mask.dataobj)
        converted = {r["label"]: r for r in rows_of(tmp / "nifti" / item / "nodules.tsv")}
        hu = nib.load(tmp / "nifti" / item / "hu.nii.gz")
        h_in = float(np.linalg.norm(hu.header.get_zooms()))
        for row in rows:
            if row["kind"] != "nodule" or float(converted[row["label"]]["diameter_mm"]) < 3 * spacing:
                continue
            ijk = np.argwhere(data == int(row["label"]))
            assert len(ijk) == row["voxels"] > 0
            ras = mask.affine[:3, :3] @ ijk.mean(axis=0) + mask.affine[:3, 3]
            lps = ras * [-1, -1, 1]
            truth = [float(converted[row["label"]][c]) for c in ("centroid_x_mm", "centroid_y_mm", "centroid_z_mm")]
            assert np.linalg.norm(lps - truth) <= np.sqrt(3) * spacing / 2 + h_in
            d = (6 * len(ijk) * spacing ** 3 / np.pi) ** (1 / 3)
            assert abs(d - float(converted[row["label"]]["diameter_mm"])) <= 2 * spacing
            checked += 1
    assert checked
    # the mask's grid is the preprocessed volume's; a folder without annotation outputs gives an empty mask
    item = items[0]
    preprocess(tmp / "nifti" / item / "hu.nii.gz", tmp_path / "volume.nii.gz", size=size, spacing_mm=spacing)
    volume = nib.load(tmp_path / "volume.nii.gz")
    assert np.array_equal(volume.affine, nib.load(tmp_path / f"{item}.nii.gz").affine)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tmp / "nifti" / item / "hu.nii.gz", bare / "hu.nii.gz")
    assert resample_nodules(bare, tmp_path / "bare.nii.gz", tmp_path / "bare.tsv", size=size, spacing_mm=spacing) == []
    empty = nib.load(tmp_path / "bare.nii.gz")
    assert np.array_equal(empty.affine, volume.affine) and not np.asarray(empty.dataobj).any()
    assert rows_of(tmp_path / "bare.tsv") == []


def test_kinds_sizes_and_part_solid_rims():
    """Over a few small phantoms: every kind is drawn, diameters lie in 3-30 mm, some nodules touch the
    pleura, and a part-solid nodule is ground glass between its core and its edge."""
    shape, spacing = (60, 96, 96), (5.0, 4.0, 4.0)
    seen, rims = [], 0
    for seed in range(8):
        volume, nodules, _ = phantom_scan(np.random.default_rng(seed), shape, spacing)
        seen += nodules
        for n in nodules:
            if n.kind != "nodule" or n.core >= 1 or n.juxtapleural:
                continue
            # voxels on the centre's slice and row: rho (the ellipsoid's normalised radius) at their centres
            k, j = int(round(n.centre[2] / spacing[0])), int(round(n.centre[1] / spacing[1] + 47.5))
            i = np.arange(96)
            rho = np.sqrt(((i - 47.5) * spacing[2] - n.centre[0]) ** 2 / n.radii[0] ** 2
                          + ((j - 47.5) * spacing[1] - n.centre[1]) ** 2 / n.radii[1] ** 2
                          + (k * spacing[0] - n.centre[2]) ** 2 / n.radii[2] ** 2)
            for rim in np.flatnonzero((rho > n.core + 0.05) & (rho < 0.95)):
                assert abs(float(volume[k, j, rim]) - GROUND_GLASS_HU) < 100
                rims += 1
            for core in np.flatnonzero(rho < n.core - 0.05):
                assert abs(float(volume[k, j, core]) - SOLID_HU) < 100
    assert rims
    outlined = [n for n in seen if n.kind == "nodule"]
    assert {n.kind for n in seen} == {"nodule", "small", "non-nodule"}
    assert any(n.core < 1 for n in outlined) and any(n.juxtapleural for n in outlined)
    assert all(3 <= n.diameter_mm <= 30 for n in outlined)
    assert all(2 <= n.diameter_mm <= 3 for n in seen if n.kind == "small")


def test_another_diameter_range_changes_only_the_nodules():
    """``data.phantom_nodule_mm``: outlined nodules drawn in the range asked for, from the same draws, so the
    anatomy and noise are the default cohort's wherever neither cohort painted a nodule; the config refuses an
    empty or non-positive range by its key."""
    shape, spacing = (60, 96, 96), (5.0, 4.0, 4.0)
    k, j, i = np.meshgrid(np.arange(60) * 5.0, (np.arange(96) - 47.5) * 4.0, (np.arange(96) - 47.5) * 4.0,
                          indexing="ij")
    big_seen = 0
    for seed in range(4):
        base, base_nodules, _ = phantom_scan(np.random.default_rng(seed), shape, spacing)
        big, big_nodules, _ = phantom_scan(np.random.default_rng(seed), shape, spacing, nodule_mm=(15.0, 30.0))
        outlined = [n for n in big_nodules if n.kind == "nodule"]
        assert all(15 <= n.diameter_mm <= 30 for n in outlined)
        big_seen += len(outlined)
        painted = np.zeros(shape, bool)
        for n in base_nodules + big_nodules:
            if n.kind != "non-nodule":
                r = np.array(n.radii) + 4.0     # a voxel's half-diagonal of margin
                painted |= (((i - n.centre[0]) / r[0]) ** 2 + ((j - n.centre[1]) / r[1]) ** 2
                            + ((k - n.centre[2]) / r[2]) ** 2) <= 1
        assert painted.any() and np.array_equal(base[~painted], big[~painted])
    assert big_seen
    for bad in ([20, 10], [0, 30]):
        with pytest.raises(ValueError, match="data.phantom_nodule_mm"):
            from_dict({"data": {"phantom_nodule_mm": bad}})
    assert from_dict({}).data.phantom_nodule_mm == (3.0, 30.0)
