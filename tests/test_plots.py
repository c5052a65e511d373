"""Plots: radiological display convention, Figure 1, the sample grid, the closest pairs, the memorisation
histogram and the learning curve; the figure rules' choice of volumes."""
import json

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from ctdiff.config import FigureConfig
from ctdiff.files import save_volume
from ctdiff.report.plots import (audit_closest_pairs, audit_histogram, canonical, chosen_figures, closest_pairs, figure1,
                          learning_curve, memorisation_histogram, sample_grid, view)


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


def test_memorisation_histogram_is_a_png(tmp_path):
    audit = {"threshold": 2.0, "per_sample": [{"distance": d} for d in (0.0, 3.5, 4.25)],
             "test_to_train": {"per_sample": [{"distance": d} for d in (2.0, 3.0)]}}
    memorisation_histogram(audit, tmp_path / "hist.png")
    png = (tmp_path / "hist.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    (tmp_path / "metrics.json").write_text(json.dumps({"memorisation": audit}))
    audit_histogram(tmp_path / "metrics.json", tmp_path / "audit.png")
    assert (tmp_path / "audit.png").read_bytes() == png  # the same drawing from metrics.json
    (tmp_path / "old.json").write_text(json.dumps({"fid": 1.0}))
    with pytest.raises(ValueError, match="records no memorisation audit"):
        audit_histogram(tmp_path / "old.json", tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_learning_curve_is_a_png(tmp_path):
    pd.DataFrame({"step": [1, 2, 3], "loss": [1.0, 0.5, 0.25]}).to_csv(tmp_path / "log.csv", index=False)
    learning_curve(tmp_path / "log.csv", tmp_path / "curve.png")
    image = mpimg.imread(tmp_path / "curve.png")
    assert image.shape[:2] == (360, 600)  # 5 x 3 inches at 120 dpi


def _volumes(tmp_path, names, seed=3):
    rng = np.random.default_rng(seed)
    for name in names:
        save_volume(tmp_path / f"{name}.nii.gz", rng.random((8, 8, 8), dtype=np.float32), np.eye(4))
    return [tmp_path / f"{name}.nii.gz" for name in names]


def test_chosen_figures_pick_the_configured_volumes(tmp_path):
    real = _volumes(tmp_path, ["A", "B"])
    synthetic = _volumes(tmp_path, [f"{i:04d}" for i in range(6)], seed=4)
    (tmp_path / "test.txt").write_text("A\nB\n")
    chosen_figures(tmp_path / "test.txt", tmp_path, synthetic, FigureConfig(real=1, synthetic=5),
                   [tmp_path / "f.png", tmp_path / "f.pdf"], tmp_path / "grid.png", grid=4)
    figure1(real[1], synthetic[5], tmp_path / "direct.png")
    assert (tmp_path / "f.png").read_bytes() == (tmp_path / "direct.png").read_bytes()
    assert (tmp_path / "f.pdf").read_bytes()[:5] == b"%PDF-"
    sample_grid(synthetic[:4], tmp_path / "first4.png")
    assert (tmp_path / "grid.png").read_bytes() == (tmp_path / "first4.png").read_bytes()
    with pytest.raises(ValueError, match="figure.real=2 but the test set holds 2 volumes"):
        chosen_figures(tmp_path / "test.txt", tmp_path, synthetic, FigureConfig(real=2), tmp_path / "g.png",
                       tmp_path / "g_grid.png", grid=4)
    with pytest.raises(ValueError, match="figure.synthetic=6 but there are 6 synthetic volumes"):
        chosen_figures(tmp_path / "test.txt", tmp_path, synthetic, FigureConfig(synthetic=6), tmp_path / "g.png",
                       tmp_path / "g_grid.png", grid=4)
    assert not (tmp_path / "g.png").exists()


def test_audit_closest_pairs_shows_the_first_n(tmp_path):
    (tmp_path / "samples").mkdir()
    (tmp_path / "train").mkdir()
    _volumes(tmp_path / "samples", ["0000", "0001", "0002"])
    _volumes(tmp_path / "train", ["T1", "T2"], seed=5)
    pairs = [{"synthetic": f"000{k}.nii.gz", "train": f"T{1 + k % 2}.nii.gz", "distance": 1.0 + k} for k in range(3)]
    (tmp_path / "metrics.json").write_text(json.dumps({"memorisation": {"closest_pairs": pairs}}))
    audit_closest_pairs(tmp_path / "metrics.json", tmp_path / "samples", tmp_path / "train", tmp_path / "a.png", n=2)
    closest_pairs([(tmp_path / "samples" / "0000.nii.gz", tmp_path / "train" / "T1.nii.gz", 1.0),
                   (tmp_path / "samples" / "0001.nii.gz", tmp_path / "train" / "T2.nii.gz", 2.0)], tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
