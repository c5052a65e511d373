"""Tests for ctdiff.ingest.preprocess against an analytic chest phantom built here.

Phantom (HU): air -1000; an elliptic-cylinder body of +40; a -800 lung sphere on one side only; a +700
bone cylinder (above the window, so it saturates at 1); -3024 padding outside a circular field of view.
Voxels are anisotropic (0.7 x 0.7 x 2.0 mm) and stored in LAS order with an off-centre origin, as the
convert stage writes them.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import ctdiff.ingest.preprocess as pre
from ctdiff.ingest.preprocess import anti_alias_sigma_mm, preprocess

LO, HI = -1000.0, 400.0
SHAPE = (300, 260, 100)
SPACING = np.array([0.7, 0.7, 2.0])
ORIGIN_RAS = np.array([95.0, -110.0, -40.0])  # world position of voxel (0, 0, 0), mm
LUNG_OFFSET = np.array([-45.0, 0.0, 0.0])  # from the body centre, toward the patient's Left (mm)
LUNG_RADIUS = 40.0
BONE_OFFSET_Y = -50.0  # bone cylinder axis, posterior of the body centre (mm)
BONE_RADIUS = 12.0


def scaled(hu: float) -> float:
    return (min(max(hu, LO), HI) - LO) / (HI - LO)


def phantom_affine() -> np.ndarray:
    """LAS voxel axes: index i runs toward the patient's Left (x_RAS decreases)."""
    affine = np.diag([-SPACING[0], SPACING[1], SPACING[2], 1.0])
    affine[:3, 3] = ORIGIN_RAS
    return affine


def world(affine: np.ndarray, shape) -> np.ndarray:
    """RAS world coordinates (mm) of every voxel centre, ``[3, *shape]``."""
    ijk = np.indices(shape).reshape(3, -1).astype(float)
    return (affine[:3, :3] @ ijk + affine[:3, 3:]).reshape(3, *shape)


def body_centre() -> np.ndarray:
    return phantom_affine()[:3, :3] @ ((np.array(SHAPE) - 1) / 2) + ORIGIN_RAS


LUNG_CENTRE = body_centre() + LUNG_OFFSET


def near_bone(xyz: np.ndarray, margin: float = 0.0) -> np.ndarray:
    c = body_centre()
    return (xyz[0] - c[0]) ** 2 + (xyz[1] - c[1] - BONE_OFFSET_Y) ** 2 <= (BONE_RADIUS + margin) ** 2


def in_body(xyz: np.ndarray, margin: float = 0.0) -> np.ndarray:
    c = body_centre()
    dx, dy, dz = xyz[0] - c[0], xyz[1] - c[1], xyz[2] - c[2]
    inside_scan = np.abs(dz) <= SHAPE[2] * SPACING[2] / 2 - margin  # the body fills the scan in z
    return ((dx / (95 - margin)) ** 2 + (dy / (70 - margin)) ** 2 <= 1.0) & inside_scan


def in_lung(xyz, margin: float = 0.0) -> np.ndarray:
    d2 = sum((xyz[a] - LUNG_CENTRE[a]) ** 2 for a in range(3))
    return d2 <= (LUNG_RADIUS - margin) ** 2


def write_phantom(path: Path) -> Path:
    """Write the phantom as an int16 HU NIfTI (qform = sform) and return its path."""
    affine = phantom_affine()
    # The phantom's axes are the world axes, so coordinates broadcast from one axis each.
    xyz = [(affine[a, a] * np.arange(SHAPE[a]) + affine[a, 3]).reshape([-1 if b == a else 1
                                                                      for b in range(3)])
           for a in range(3)]
    c = body_centre()

    def full(mask: np.ndarray) -> np.ndarray:
        return np.broadcast_to(mask, SHAPE)

    hu = np.full(SHAPE, -1000, np.int16)
    hu[full(in_body(xyz))] = 40
    hu[full(in_lung(xyz))] = -800
    hu[full(near_bone(xyz))] = 700
    fov = (xyz[0] - c[0]) ** 2 + (xyz[1] - c[1]) ** 2 <= 104.0**2
    hu[full(~fov)] = -3024
    img = nib.Nifti1Image(hu, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)
    return path


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    return write_phantom(tmp_path_factory.mktemp("phantom") / "in.nii")


def lung_centroid(out: nib.Nifti1Image) -> np.ndarray:
    """World centroid (RAS mm) of output voxels darker than the body, well inside the body."""
    data = np.asarray(out.dataobj)
    xyz = world(out.affine, out.shape)
    dark = (data < (scaled(-800) + scaled(40)) / 2) & in_body(xyz, margin=25.0)
    return xyz[:, dark].mean(axis=1)


def lung_centroid_rotated(out: nib.Nifti1Image, to_world: np.ndarray) -> np.ndarray:
    """:func:`lung_centroid` of a phantom whose world was moved by the rigid map ``to_world``."""
    data = np.asarray(out.dataobj)
    xyz = world(out.affine, out.shape)
    back = np.linalg.inv(to_world)
    phantom_xyz = (back[:3, :3] @ xyz.reshape(3, -1) + back[:3, 3:]).reshape(xyz.shape)
    dark = (data < (scaled(-800) + scaled(40)) / 2) & in_body(phantom_xyz, margin=25.0)
    return xyz[:, dark].mean(axis=1)


def test_isotropic_spacing_keeps_geometry_and_values(phantom, tmp_path):
    out_path = tmp_path / "out.nii.gz"
    preprocess(phantom, out_path, size=32, spacing_mm=10.0)

    out = nib.load(out_path)
    data = np.asarray(out.dataobj)
    assert out.shape == (32, 32, 32) and data.dtype == np.float32
    assert nib.aff2axcodes(out.affine) == ("R", "A", "S")
    assert np.allclose(out.affine[:3, :3], np.diag([10.0] * 3))
    assert 0.0 <= data.min() and data.max() <= 1.0
    centre_out = out.affine[:3, :3] @ np.full(3, 15.5) + out.affine[:3, 3]
    assert np.allclose(centre_out, body_centre(), atol=1e-3)

    xyz = world(out.affine, out.shape)
    lung = in_lung(xyz, margin=15.0)
    assert lung.sum() > 30
    assert data[lung].mean() == pytest.approx(scaled(-800), abs=0.01)
    body_only = in_body(xyz, margin=25.0) & ~in_lung(xyz, margin=-20.0)
    body_only &= ~near_bone(xyz, margin=20.0)
    assert data[body_only].mean() == pytest.approx(scaled(40), abs=0.02)
    # Left/right is not flipped: the lung is where it was, its mirror image is body.
    assert np.linalg.norm(lung_centroid(out) - LUNG_CENTRE) < 10.0
    mirror = LUNG_CENTRE.copy()
    mirror[0] = 2 * body_centre()[0] - LUNG_CENTRE[0]
    i, j, k = np.rint(np.linalg.solve(out.affine[:3, :3], mirror - out.affine[:3, 3])).astype(int)
    assert data[i, j, k] == pytest.approx(scaled(40), abs=0.02)
    # Outside the scanned volume: air; the cube (320 mm) is larger than the scan.
    assert np.all(data[0] == 0.0) and np.all(data[:, :, -1] == 0.0)


def test_plain_resize_covers_the_whole_scan(phantom, tmp_path):
    out_path = tmp_path / "out.nii"
    preprocess(phantom, out_path, size=32, spacing_mm=None)

    out = nib.load(out_path)
    data = np.asarray(out.dataobj)
    assert out.shape == (32, 32, 32) and data.dtype == np.float32
    extent = np.array(SHAPE) * SPACING
    assert np.allclose(out.header.get_zooms(), extent / 32)
    assert nib.aff2axcodes(out.affine) == ("R", "A", "S")
    centre_out = out.affine[:3, :3] @ np.full(3, 15.5) + out.affine[:3, 3]
    assert np.allclose(centre_out, body_centre(), atol=1e-3)
    assert 0.0 <= data.min() and data.max() <= 1.0
    assert np.linalg.norm(lung_centroid(out) - LUNG_CENTRE) < np.max(extent / 32)
    assert data.max() == pytest.approx(1.0)  # the bone saturates at the window's top


def test_padding_never_bleeds(phantom, tmp_path):
    padded = nib.load(phantom)
    hu = np.asarray(padded.dataobj)
    assert (hu == -3024).sum() > 1000
    air = tmp_path / "air.nii"
    nib.save(nib.Nifti1Image(np.maximum(hu, -1000), padded.affine, padded.header), air)
    for spacing in (10.0, None):
        preprocess(phantom, tmp_path / "a.nii.gz", size=32, spacing_mm=spacing)
        preprocess(air, tmp_path / "b.nii.gz", size=32, spacing_mm=spacing)
        a = np.asarray(nib.load(tmp_path / "a.nii.gz").dataobj)
        b = np.asarray(nib.load(tmp_path / "b.nii.gz").dataobj)
        assert np.allclose(a, b, atol=1e-6)


def test_anti_aliasing_averages_fine_stripes(tmp_path):
    # Stripes of period 2 mm along x (1 mm voxels) downsampled to 4 mm: every output sample falls
    # on a voxel centre, so without smoothing the output would be all one stripe (0 or 1).
    # 65 voxels: the grid centre (voxel 32) and every 4th voxel from it are sampled exactly.
    hu = np.where(np.arange(65) % 2 == 0, LO, HI)[:, None, None] * np.ones((65, 16, 16))
    nib.save(nib.Nifti1Image(hu.astype(np.int16), np.eye(4)), tmp_path / "stripes.nii.gz")
    preprocess(tmp_path / "stripes.nii.gz", tmp_path / "out.nii.gz", size=8, spacing_mm=4.0)
    data = np.asarray(nib.load(tmp_path / "out.nii.gz").dataobj)
    assert np.allclose(data[2:6, 2:6, 2:6], 0.5, atol=0.02)
    assert np.allclose(anti_alias_sigma_mm([1.0, 2.0, 3.0], [4.0, 4.0, 2.0]), [1.5, 1.0, 0.0])


@pytest.mark.parametrize("size, spacing", [(32, 10.0), (32, None), (48, 1.5)],
                         ids=["isotropic", "plain-resize", "x-y-down-z-up"])
def test_axis_by_axis_resampling_equals_resampling_at_once(phantom, size, spacing):
    # 10 mm: the 320 mm cube pads every axis with air, so samples outside the scan are compared too.
    # 1.5 mm: x and y (0.7 mm) are smoothed and downsampled, z (2.0 mm) is refined and never smoothed.
    image = pre.read_ras_windowed(phantom, LO, HI)
    assert pre._has_ras_axes(image)
    origin, grid_spacing = pre.output_grid(image, size, spacing)
    by_axis = sitk.GetArrayFromImage(pre._resample_by_axis(image, size, origin, grid_spacing, LO))
    at_once = sitk.GetArrayFromImage(pre._resample_at_once(image, size, origin, grid_spacing, LO))
    assert by_axis.shape == at_once.shape == (size,) * 3
    assert np.ptp(at_once) > 800  # lung and body at least
    np.testing.assert_allclose(by_axis, at_once, rtol=0, atol=1e-3)  # HU: float32 rounding


def test_oblique_input_is_resampled_at_once(tmp_path, monkeypatch):
    """Slices tilted 20 degrees about z: the axis-by-axis path does not apply, the lung still lands where
    the rotated affine puts it."""
    angle = np.deg2rad(20.0)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    centre = np.eye(4)
    centre[:3, 3] = body_centre()
    to_world = centre @ rot @ np.linalg.inv(centre)  # rotation about the body centre
    straight = nib.load(write_phantom(tmp_path / "straight.nii"))
    oblique = tmp_path / "oblique.nii"
    nib.save(nib.Nifti1Image(np.asarray(straight.dataobj), to_world @ straight.affine), oblique)

    def refuse(*args):
        raise AssertionError("an oblique input was resampled axis by axis")

    monkeypatch.setattr(pre, "_resample_by_axis", refuse)
    preprocess(oblique, tmp_path / "out.nii.gz", size=32, spacing_mm=10.0)
    out = nib.load(tmp_path / "out.nii.gz")
    assert nib.aff2axcodes(out.affine) == ("R", "A", "S")
    assert np.linalg.norm(lung_centroid_rotated(out, to_world) - (to_world[:3, :3] @ LUNG_CENTRE
                                                                 + to_world[:3, 3])) < 10.0


def test_bad_arguments_are_refused(phantom, tmp_path):
    out = tmp_path / "x.nii.gz"
    with pytest.raises(ValueError, match="size"):
        preprocess(phantom, out, size=1, spacing_mm=2.0)
    with pytest.raises(ValueError, match="spacing_mm"):
        preprocess(phantom, out, size=8, spacing_mm=0.0)
    with pytest.raises(ValueError, match="hu_window"):
        preprocess(phantom, out, size=8, spacing_mm=2.0, hu_window=(400.0, -1000.0))
    with pytest.raises(ValueError, match=".nii"):
        preprocess(phantom, tmp_path / "x.mha", size=8, spacing_mm=20.0)
    assert not out.exists()


def test_model_range_scaling_is_the_training_and_sampling_arithmetic():
    """[0, 1] <-> [-1, 1]: bit for bit what training (in place on the stacked tensor) and sampling (numpy)
    computed before the pair existed, inverse of each other up to one float32 rounding, float32 kept."""
    import torch

    from ctdiff.ingest.preprocess import from_model_range, to_model_range

    rng = np.random.default_rng(0)
    volume = np.concatenate([rng.random(4096, dtype=np.float32), [0.0, 0.5, 1.0, 1e-9]]).astype(np.float32)
    x = to_model_range(volume)
    assert x.dtype == np.float32
    assert np.array_equal(x, torch.from_numpy(volume.copy()).mul_(2).sub_(1).numpy())
    assert x.min() >= -1 and x.max() <= 1 and x[-4:-1].tolist() == [-1.0, 0.0, 1.0]
    back = from_model_range(x)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, volume, rtol=0, atol=np.finfo(np.float32).eps)

    sample = np.concatenate([rng.normal(0.0, 0.7, 4096), [-1.5, -1.0, 0.0, 1.0, 1.5]]).astype(np.float32)
    unit = from_model_range(sample)
    assert np.array_equal(unit, ((sample + 1.0) / 2.0).clip(0.0, 1.0).astype(np.float32))
    assert unit[-5:].tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]  # overshoot is clipped
    inside = np.abs(sample) <= 1
    np.testing.assert_allclose(to_model_range(unit)[inside], sample[inside], rtol=0, atol=2 * np.finfo(np.float32).eps)
