"""Figure 1: radiological display convention and the written panel figure."""
import matplotlib.image as mpimg
import numpy as np
import pytest

from ctdiff.figure import canonical, closest_pairs, figure1, sample_grid, view
from ctdiff.io import save_volume


def test_radiological_convention():
    # RAS+ volume with a marker at the patient's right (high i), anterior (high j), superior (high k).
    vol = np.zeros((10, 12, 14), np.float32)
    vol[8, 10, 7] = 1.0  # axial plane k = 7
    image, _ = view(vol, np.ones(3), "axial")
    row, col = np.argwhere(image == 1.0)[0]
    assert col < image.shape[1] // 2, "patient's right must appear on the image's left"
    assert row < image.shape[0] // 2, "anterior must appear at the top of an axial image"
    vol[:] = 0
    vol[8, 6, 12] = 1.0  # coronal plane j = 6: right and superior
    image, _ = view(vol, np.ones(3), "coronal")
    row, col = np.argwhere(image == 1.0)[0]
    assert row < image.shape[0] // 2 and col < image.shape[1] // 2
    vol[:] = 0
    vol[5, 11, 12] = 1.0  # sagittal plane i = 5: anterior and superior
    image, _ = view(vol, np.ones(3), "sagittal")
    row, col = np.argwhere(image == 1.0)[0]
    assert row < image.shape[0] // 2 and col < image.shape[1] // 2


def test_aspect_follows_voxel_size():
    _, aspect = view(np.zeros((4, 4, 4)), np.array([1.0, 1.0, 2.5]), "coronal")
    assert aspect == 2.5


def test_canonical_reorients_lps_file(tmp_path):
    # A file stored with the first axis pointing left (LPS-like): canonical() flips it back to RAS+.
    affine = np.diag([-2.0, -2.0, 2.0, 1.0])
    vol = np.zeros((4, 4, 4), np.float32)
    vol[0, 0, 3] = 1.0  # i = 0 is the patient's rightmost column in this file
    save_volume(tmp_path / "lps.nii.gz", vol, affine)
    ras, zooms = canonical(tmp_path / "lps.nii.gz")
    assert ras[3, 3, 3] == 1.0 and np.allclose(zooms, 2.0)


def test_figure1_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("real", "synthetic"):
        save_volume(tmp_path / f"{name}.nii.gz", rng.random((16, 16, 16), dtype=np.float32), np.eye(4))
    out = tmp_path / "fig" / "figure1.png"
    figure1(tmp_path / "real.nii.gz", tmp_path / "synthetic.nii.gz", out)
    image = mpimg.imread(out)
    assert image.shape[0] > image.shape[1] > 300  # three rows of two panels
    assert not list(out.parent.glob(".*tmp*"))


def test_figure1_pdf_and_sample_grid(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i:04d}.nii.gz")
        save_volume(paths[-1], rng.random((8, 8, 8), dtype=np.float32), np.eye(4))
    figure1(paths[0], paths[1], [tmp_path / "f.png", tmp_path / "f.pdf"])
    assert (tmp_path / "f.pdf").read_bytes()[:5] == b"%PDF-"
    sample_grid(paths, tmp_path / "grid.png", columns=4)
    image = mpimg.imread(tmp_path / "grid.png")
    assert image.shape[1] > image.shape[0]  # two rows of four


def test_closest_pairs_figure(tmp_path):
    rng = np.random.default_rng(2)
    pairs = []
    for i in range(2):
        a, b = tmp_path / f"s{i}.nii.gz", tmp_path / f"t{i}.nii.gz"
        save_volume(a, rng.random((8, 8, 8), dtype=np.float32), np.eye(4))
        save_volume(b, rng.random((8, 8, 8), dtype=np.float32), np.eye(4))
        pairs.append((a, b, 1.5 * i))
    closest_pairs(pairs, tmp_path / "pairs.png")
    image = mpimg.imread(tmp_path / "pairs.png")
    assert image.shape[1] > image.shape[0]  # two rows of four panels


def test_chosen_slices(tmp_path):
    vol = np.zeros((10, 12, 14), np.float32)
    vol[:, :, 3] = 1.0  # only axial slice k = 3 is bright
    image, _ = view(vol, np.ones(3), "axial", 3)
    assert image.min() == 1.0
    assert view(vol, np.ones(3), "axial")[0].max() == 0.0  # the middle slice is dark
    save_volume(tmp_path / "v.nii.gz", vol, np.eye(4))
    figure1(tmp_path / "v.nii.gz", tmp_path / "v.nii.gz", tmp_path / "f.png", slices=[3, None, None])
    with pytest.raises(ValueError, match="axial slice 14 is outside"):
        figure1(tmp_path / "v.nii.gz", tmp_path / "v.nii.gz", tmp_path / "g.png", slices=[14, None, None])
