"""Anatomical plausibility in HU: phantoms whose lungs and tissue fractions are known by construction, the
DICOM phantom, pydicom's real CT slice, diverged (all-air, all-bone) volumes, and W1 against closed forms."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import wasserstein_distance

from ctdiff.phantom.scan import phantom_volume
from ctdiff.metrics.anatomy import CLASSES, class_slices, hu_bins, sphericity, volume_anatomy, voxel_ml
from ctdiff.metrics import anatomy_compare
from ctdiff.metrics.anatomy_compare import QUANTITIES, anatomy_rows, evaluate_anatomy, hist_w1

WINDOW = (-1000.0, 400.0)
SPACING = 5.0  # mm: 0.125 mL per voxel
SHAPE = (48, 40, 24)  # [X, Y, Z]
LABEL_HU = {"outside": -1000, "fat": -100, "soft": 40, "lung": -850, "bone": 700, "air": -1000}


def _ellipsoid(centre, axes, shape=SHAPE) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    return sum(((g - c) / a) ** 2 for g, c, a in zip(grid, centre, axes)) <= 1.0


def _chest(*, join: bool = False, left_axes=(4, 6, 7), right_axes=(5, 6, 8), fat_shift: int = 0):
    """(labels [X, Y, Z], HU [X, Y, Z]): a fat-covered soft-tissue ellipsoid with two lungs (the smaller at low
    x, the patient's left with a RAS+ affine), a bone cylinder, a small air pocket; ``join`` adds a 3×3-voxel
    airway between the lungs."""
    c = (23.5, 19.5, 11.5)
    labels = np.full(SHAPE, "outside", dtype=object)
    labels[_ellipsoid(c, (21, 17, 11))] = "fat"
    labels[_ellipsoid(c, (19, 15, 10))] = "soft"
    labels[_ellipsoid((c[0] - 9, c[1] - 2, c[2]), left_axes)] = "lung"
    labels[_ellipsoid((c[0] + 9, c[1] - 2, c[2]), right_axes)] = "lung"
    if join:
        labels[14:34, 16:19, 11:14] = np.where(labels[14:34, 16:19, 11:14] == "soft", "lung",
                                               labels[14:34, 16:19, 11:14])
    x, y = np.indices(SHAPE[:2])
    spine = ((x - c[0]) ** 2 + (y - c[1] - 10) ** 2 <= 4)[..., None] & (labels == "soft")
    labels[spine] = "bone"
    labels[_ellipsoid((c[0], c[1] + 4, c[2] - 6), (1.5, 1.5, 1.5))] = "air"
    hu = np.vectorize(LABEL_HU.get)(labels).astype(float)
    hu[labels == "fat"] += fat_shift
    return labels, hu


def _scaled(hu: np.ndarray) -> np.ndarray:
    lo, hi = WINDOW
    return np.clip((hu - lo) / (hi - lo), 0, 1).astype(np.float32)


def _ras(spacing=SPACING) -> np.ndarray:
    return np.diag([spacing, spacing, spacing, 1.0])


def test_known_phantom_lungs_and_fractions():
    labels, hu = _chest()
    row, hist = volume_anatomy(_scaled(hu), _ras(), WINDOW)
    ml = SPACING ** 3 / 1000
    left = _ellipsoid((14.5, 17.5, 11.5), (4, 6, 7)).sum()
    right = _ellipsoid((32.5, 17.5, 11.5), (5, 6, 8)).sum()
    assert row["status"] == "two lungs" and row["n_lungs"] == 2
    # integer voxel counts times the voxel volume: equal up to float round-off
    assert row["left_lung_ml"] == pytest.approx(left * ml, rel=1e-12)
    assert row["right_lung_ml"] == pytest.approx(right * ml, rel=1e-12)
    assert row["lung_ml"] == pytest.approx((left + right) * ml, rel=1e-12)
    assert row["lung_balance"] == pytest.approx(left / right, rel=1e-12)
    body = labels != "outside"
    assert row["body_ml"] == pytest.approx(body.sum() * ml, rel=1e-12)
    expected = {"air": (labels == "air").sum(), "lung": (labels == "lung").sum(), "fat": (labels == "fat").sum(),
                "soft_tissue": (labels == "soft").sum(), "bone": (labels == "bone").sum()}
    for name, count in expected.items():  # fractions are ratios of integer counts
        assert row["fractions"][name] == pytest.approx(count / body.sum(), rel=1e-12), name
    assert sum(row["fractions"].values()) == pytest.approx(1.0, abs=1e-12)
    first, n = hu_bins(WINDOW)
    assert (first, n) == (-1000, 1401) and hist.sum() == body.sum()
    assert hist[400 - first] == (labels == "bone").sum()  # bone at 700 HU reads as 400 through the window


def test_left_and_right_follow_the_affine():
    _, hu = _chest()
    flipped = _ras()
    flipped[0, 0], flipped[0, 3] = -SPACING, SPACING * (SHAPE[0] - 1)  # index x now runs toward the Left
    a, _ = volume_anatomy(_scaled(hu), _ras(), WINDOW)
    b, _ = volume_anatomy(_scaled(hu), flipped, WINDOW)
    assert (b["left_lung_ml"], b["right_lung_ml"]) == (a["right_lung_ml"], a["left_lung_ml"])


def test_lungs_joined_by_an_airway_are_split():
    labels, hu = _chest(join=True)
    row, _ = volume_anatomy(_scaled(hu), _ras(), WINDOW)
    ml = SPACING ** 3 / 1000
    assert row["n_lungs"] == 2 and row["lung_ml"] == pytest.approx((labels == "lung").sum() * ml, rel=1e-12)
    airway = (labels == "lung").sum() - _ellipsoid((14.5, 17.5, 11.5), (4, 6, 7)).sum() - \
        _ellipsoid((32.5, 17.5, 11.5), (5, 6, 8)).sum()
    # each lung gets its own ellipsoid and at most the whole airway
    assert 0 <= row["left_lung_ml"] - _ellipsoid((14.5, 17.5, 11.5), (4, 6, 7)).sum() * ml <= airway * ml + 1e-9


def _stored(hu: np.ndarray, flips: tuple[int, ...], order: tuple[int, int, int] = (0, 1, 2)):
    """The RAS volume ``hu`` as it would be stored with the array axes in ``flips`` reversed and then the axes
    permuted to ``order``, and the affine that keeps every voxel at its world position."""
    affine = _ras()
    for ax in flips:
        hu = np.flip(hu, ax)
        affine[:3, 3] += affine[:3, ax] * (SHAPE[ax] - 1)
        affine[:3, ax] *= -1
    affine[:3, :3] = affine[:3, list(order)]
    return np.ascontiguousarray(np.transpose(hu, order)), affine


def test_the_airway_split_does_not_depend_on_how_the_volume_is_stored():
    """Airway voxels at equal distance from both lungs go to a lung by their world position, so the left and
    right lung volumes of one chest are the same whether it is stored RAS, LPS, or with its axes in another
    order."""
    _, hu = _chest(join=True)
    ras, _ = volume_anatomy(_scaled(hu), _ras(), WINDOW)
    assert ras["status"] == "two lungs"
    for flips, order in [((0, 1), (0, 1, 2)), ((0,), (0, 1, 2)), ((2,), (0, 1, 2)), ((0, 1, 2), (0, 1, 2)),
                         ((), (2, 1, 0)), ((0, 1), (1, 0, 2))]:
        volume, affine = _stored(hu, flips, order)
        row, _ = volume_anatomy(_scaled(volume), affine, WINDOW)
        assert (row["left_lung_ml"], row["right_lung_ml"]) == (ras["left_lung_ml"], ras["right_lung_ml"]), \
            (flips, order, row["left_lung_ml"], ras["left_lung_ml"])


def test_dicom_phantom_has_two_lungs():
    shape, spacing = (48, 64, 64), (7.0, 6.0, 6.0)
    hu = phantom_volume(np.random.default_rng(0), shape, spacing)  # [Z, Y, X] LPS
    ras = hu.transpose(2, 1, 0)[::-1, ::-1, :].astype(float)
    row, _ = volume_anatomy(_scaled(ras), np.diag([spacing[2], spacing[1], spacing[0], 1.0]), WINDOW)
    assert row["status"] == "two lungs"
    assert 500 < row["left_lung_ml"] < 4000 and 500 < row["right_lung_ml"] < 4000
    assert 0.7 < row["lung_balance"] <= 1
    assert 0.1 < row["fractions"]["lung"] < 0.5 and 0.02 < row["fractions"]["bone"] < 0.2


def _ct_small(pad: int) -> tuple[np.ndarray, np.ndarray]:
    """pydicom's CT_small.dcm (a paravertebral crop, lungs at the top corners) as 4 identical slices, padded
    in-plane with ``pad`` pixels of soft tissue (40 HU) that close the body around the crop; RAS+ [X, Y, Z]."""
    pydicom = pytest.importorskip("pydicom")
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)  # [row = P, column = L]
    hu = np.pad(hu, pad, constant_values=40.0)
    ras = hu.T[::-1, ::-1, None].repeat(4, axis=2)
    dx = float(ds.PixelSpacing[0])
    return _scaled(ras), np.diag([dx, dx, float(ds.SliceThickness), 1.0])


def test_pydicom_ct_slice():
    vol, affine = _ct_small(16)
    row, hist = volume_anatomy(vol, affine, WINDOW, min_body_ml=1.0, min_lung_ml=1.0)
    assert row["status"] == "two lungs"
    assert row["lung_balance"] > 0.3  # the two paravertebral lung regions, of similar size
    assert row["fractions"]["bone"] > 0.05 and row["fractions"]["soft_tissue"] > 0.3  # the vertebra, muscle
    # open to the edge of the crop, the lung regions are outside air, not lungs
    row, _ = volume_anatomy(*_ct_small(0), WINDOW, min_body_ml=1.0, min_lung_ml=1.0)
    assert row["status"] == "no lungs" and row["body_ml"] > 0


@pytest.mark.parametrize("value, status, reason", [(0.0, "no body", "no connected component above -500 HU"),
                                                   (1.0, "no lungs", "no air-like component")])
def test_diverged_volumes(value, status, reason):
    row, hist = volume_anatomy(np.full(SHAPE, value, np.float32), _ras(), WINDOW)
    assert row["status"] == status and row["n_lungs"] == 0 and row["lung_ml"] == 0.0 and row["lung_balance"] is None
    assert row["reason"].startswith(reason)
    if value == 0.0:
        assert row["fractions"] == {c: None for c in CLASSES} and hist.sum() == 0
    else:
        assert row["fractions"]["bone"] == 1.0 and row["body_ml"] == pytest.approx(np.prod(SHAPE) * 0.125)


def test_w1_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 50, 200).astype(float)
    assert hist_w1(a, a) == 0.0
    padded = np.pad(a, (0, 7))
    assert hist_w1(padded, np.roll(padded, 7)) == pytest.approx(7.0, rel=1e-12)
    v = rng.normal(size=50)
    assert wasserstein_distance(v, v + 3.0) == pytest.approx(3.0, rel=1e-12)


def test_set_comparison_fat_shift_and_diverged_synthetic():
    _, hu = _chest()
    _, shifted = _chest(fat_shift=10)  # every fat voxel 10 HU higher, still fat
    real = np.stack([_scaled(hu)] * 4)
    syn = np.stack([_scaled(shifted)] * 3 + [np.zeros(SHAPE, np.float32), np.ones(SHAPE, np.float32)])
    affines = [_ras()] * 5
    out = evaluate_anatomy(real, affines[:4], [f"r{k}" for k in range(4)], syn[:3], affines[:3],
                           ["s0", "s1", "s2"], hu_window=WINDOW, seed=0, n_boot=20, level=0.9)
    assert out["classes"]["fat"]["w1_hu"] == pytest.approx(10.0, rel=1e-12)
    for name in ("air", "lung", "soft_tissue", "bone"):
        assert out["classes"][name]["w1_hu"] == pytest.approx(0.0, abs=1e-9)
        assert out["classes"][name]["floor"]["w1_hu"] == pytest.approx(0.0, abs=1e-9)
    assert out["quantities"]["lung_ml"]["w1"] == pytest.approx(0.0, abs=1e-9)
    assert out["summary"]["two_lungs_share_synthetic"] == 1.0 and out["summary"]["lung_volume_ratio"] == 1.0

    # a diverged set: all air and all bone volumes give a complete, JSON-clean table
    out = evaluate_anatomy(real, affines[:4], [f"r{k}" for k in range(4)], syn[3:], affines[3:], ["air", "bone"],
                           hu_window=WINDOW, seed=0, n_boot=20, level=0.9)
    text = json.dumps(out, allow_nan=False)  # no NaN anywhere
    assert "NaN" not in text
    assert out["counts"]["synthetic"] == {"no_body": 1, "0_lungs": 1, "1_lungs": 0, "2_lungs": 0}
    assert [r["status"] for r in out["per_volume"]["synthetic"]] == ["no body", "no lungs"]
    assert out["summary"]["two_lungs_share_synthetic"] == 0.0 and out["summary"]["lung_volume_ratio"] == 0.0
    assert set(out["quantities"]) == set(QUANTITIES)
    balance = out["quantities"]["lung_balance"]
    assert balance["w1"] is None and "no synthetic volume" in balance["reason"] and balance["interval"] is None
    assert out["classes"]["lung"]["w1_hu"] is None and "no synthetic voxel" in out["classes"]["lung"]["reason"]
    assert out["classes"]["bone"]["w1_hu"] == pytest.approx(0.0, abs=1e-9)  # real bone reads 400 too
    ci = out["classes"]["fat"]
    assert ci["w1_hu"] is None
    assert out["quantities"]["n_lungs"]["w1"] == pytest.approx(2.0)


def test_class_bins_cover_the_window():
    s = class_slices(WINDOW)
    first, n = hu_bins(WINDOW)
    covered = np.concatenate([np.arange(n)[v] for v in s.values()])
    assert np.array_equal(covered, np.arange(n))
    assert s["fat"] == slice(-190 - first, -30 - first)
    assert voxel_ml(np.diag([2.0, 3.0, 4.0, 1.0])) == pytest.approx(0.024)


def test_anatomy_figure(tmp_path):
    from ctdiff.report.plots import anatomy_figure

    _, hu = _chest()
    real = np.stack([_scaled(hu)] * 2)
    syn = np.stack([_scaled(hu), np.zeros(SHAPE, np.float32)])  # one diverged volume: no body, nothing to plot
    out = evaluate_anatomy(real, [_ras()] * 2, ["r0", "r1"], syn, [_ras()] * 2, ["s0", "s1"], hu_window=WINDOW,
                           seed=0, n_boot=5, level=0.95)
    (tmp_path / "metrics.json").write_text(json.dumps({"anatomy": out}))
    anatomy_figure(tmp_path / "metrics.json", tmp_path / "anatomy.png")
    assert (tmp_path / "anatomy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "old.json").write_text(json.dumps({"fid": 1.0}))
    with pytest.raises(ValueError, match="records no anatomy"):
        anatomy_figure(tmp_path / "old.json", tmp_path / "x.png")


def test_sphericity_closed_forms():
    spacing = np.array([1.0, 2.0, 3.0])
    box = np.zeros((9, 8, 7), bool)
    box[1:5, 2:8, 3:5] = True  # a 4 × 12 × 6 mm box: V = 288 mm³, A = 2 (48 + 24 + 72) = 288 mm²
    assert sphericity(box, spacing) == pytest.approx(np.pi ** (1 / 3) * (6 * 288) ** (2 / 3) / 288, rel=1e-12)
    cube = np.ones((5, 5, 5), bool)  # a cube of any size: (π/6)^(1/3)
    assert sphericity(cube, np.ones(3)) == pytest.approx((np.pi / 6) ** (1 / 3), rel=1e-12)
    ball = _ellipsoid((20, 20, 20), (15, 15, 15), shape=(41, 41, 41))
    assert 0.6 < sphericity(ball, np.ones(3)) < 0.75  # faces overestimate a sphere's area by 1.5 on average


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mean, sd", [(0.5, 0.5), (0.5, 0.25), (0.3, 0.3), (0.7, 0.3)])
def test_noise_has_no_lungs(seed, mean, sd):
    """White noise through the window (N(0.5, 0.5) is N(0, 1) in the model's range) is no chest: its air-like
    and its solid voxels form sponges, not a body with two lungs, whatever their share."""
    rng = np.random.default_rng(seed)
    noise = np.clip(rng.normal(mean, sd, (64, 64, 64)), 0, 1).astype(np.float32)
    row, _ = volume_anatomy(noise, _ras(6.0), WINDOW)
    assert row["n_lungs"] == 0 and row["status"] in ("no body", "no lungs") and row["lung_ml"] == 0.0
    assert isinstance(row["reason"], str) and row["reason"]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mean, sd", [(0.5, 0.5), (0.5, 0.25), (0.3, 0.3), (0.7, 0.3)])
def test_noise_on_the_demo_grid_has_not_two_lungs(seed, mean, sd):
    """On the demo's 24³ grid (16 mm) a lung is a few voxels across and noise's air-like sponge only a few
    voxels thick, so the shape checks are weaker: noise may show one lung there, never two."""
    noise = np.clip(np.random.default_rng(seed).normal(mean, sd, (24, 24, 24)), 0, 1).astype(np.float32)
    row, _ = volume_anatomy(noise, _ras(16.0), WINDOW)
    assert row["n_lungs"] < 2 and isinstance(row["reason"], str)


def test_known_lung_volumes_within_the_voxelisation_bound():
    """Ellipsoidal lungs of known volume V = 4/3·π·abc, off the voxel grid. A voxel whose centre lies inside
    an ellipsoid E has its cube inside E ⊕ B_r and one whose cube reaches outside E has its centre outside
    E ⊖ B_r, r = half the voxel diagonal = √3/2 voxels; E contains the ball of radius a_min, so with
    t = r / a_min: (1 − t)·E ⊆ E ⊖ B_r and E ⊕ B_r ⊆ (1 + t)·E, and the voxel count lies in
    [(1 − t)³, (1 + t)³] · V / v."""
    shape, mm = (96, 72, 48), 4.0
    lungs = {"left": ((30.3, 33.6, 24.2), (12.0, 16.5, 19.0)), "right": ((65.7, 33.4, 23.9), (13.5, 17.0, 20.5))}
    hu = np.full(shape, -1000.0)
    hu[_ellipsoid((47.5, 35.5, 23.5), (44, 34, 30), shape)] = 40.0
    for centre, axes in lungs.values():
        hu[_ellipsoid(centre, axes, shape)] = -850.0
    row, _ = volume_anatomy(_scaled(hu), _ras(mm), WINDOW)
    assert row["status"] == "two lungs" and row["reason"] is None
    for side, (_, axes) in lungs.items():
        exact = 4 / 3 * np.pi * np.prod(axes) * mm ** 3 / 1000  # mL
        t = np.sqrt(3) / 2 / min(axes)
        assert (1 - t) ** 3 * exact <= row[f"{side}_lung_ml"] <= (1 + t) ** 3 * exact, side


@pytest.mark.parametrize("seed", range(3))
def test_phantom_cohort_keeps_its_lungs(seed):
    """The demo's phantom chests (384 mm field, 6 mm voxels), as preprocessing writes them."""
    hu = phantom_volume(np.random.default_rng(seed), (64, 64, 64), (6.0, 6.0, 6.0))  # [Z, Y, X] LPS
    ras = hu.transpose(2, 1, 0)[::-1, ::-1, :].astype(float)
    row, _ = volume_anatomy(_scaled(ras), _ras(6.0), WINDOW)
    assert row["status"] == "two lungs" and row["reason"] is None
    assert 0.5 < row["lung_balance"] <= 1 and 1000 < row["lung_ml"] < 10000


def test_a_gas_pocket_is_not_a_second_lung():
    """A joined pair of lungs and a small gas pocket (under 1 % of the body): the pocket is not the second
    lung, the pair is split in two."""
    labels, hu = _chest(join=True)
    hu[_ellipsoid((20.5, 8.5, 11.5), (2.5, 2.5, 2.5))] = -900.0  # ~65 voxels, 8 mL, in the soft tissue
    row, _ = volume_anatomy(_scaled(hu), _ras(), WINDOW, min_lung_ml=5.0)
    assert row["status"] == "two lungs"
    assert row["lung_ml"] == pytest.approx((labels == "lung").sum() * SPACING ** 3 / 1000, rel=1e-12)


def test_workers_do_not_change_the_anatomy(monkeypatch):
    monkeypatch.setattr(anatomy_compare, "VOXELS_PER_WORKER", 1)  # a process per volume, however small
    _, hu = _chest()
    _, joined = _chest(join=True)
    rng = np.random.default_rng(0)
    vols = [_scaled(hu), _scaled(joined), np.clip(rng.normal(0.5, 0.5, SHAPE), 0, 1).astype(np.float32),
            np.zeros(SHAPE, np.float32), np.ones(SHAPE, np.float32)]
    affines = [_ras()] * len(vols)
    serial = anatomy_rows(vols, affines, WINDOW, workers=1)
    for workers in (2, 3):
        pooled = anatomy_rows(vols, affines, WINDOW, workers=workers)
        assert [r for r, _ in pooled] == [r for r, _ in serial]
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(pooled, serial))
    names = [f"v{k}" for k in range(len(vols))]
    one = evaluate_anatomy(np.stack(vols[:2]), affines[:2], names[:2], np.stack(vols[2:]), affines[2:], names[2:],
                           hu_window=WINDOW, seed=0, n_boot=5, level=0.9)
    two = evaluate_anatomy(np.stack(vols[:2]), affines[:2], names[:2], np.stack(vols[2:]), affines[2:], names[2:],
                           hu_window=WINDOW, seed=0, n_boot=5, level=0.9, workers=2)
    assert json.dumps(one, sort_keys=True) == json.dumps(two, sort_keys=True)
