"""The evaluate stage end to end on tiny NIfTI volumes with a seeded random ResNet-10; bootstrap intervals
(their replicate count and level as given), the real-vs-real floor and KID's refusal of sets smaller than its
subsets."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from ctdiff.config import EvaluateConfig
from ctdiff.metrics.bootstrap import fid_ci, mean_ci, pair_mean_ci
from ctdiff.metrics.evaluate import evaluate, real_floor
from ctdiff.metrics.fid import fid_from_features, fid_sample_space, frechet_distance
from ctdiff.metrics.kid import kid_from_features, polynomial_kernel
from ctdiff.metrics.med3d import extract_features, load_med3d

SHAPE = (16, 16, 16)


def _write(folder: Path, name: str, vol: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(vol.astype(np.float32), np.diag([2.5, 2.5, 2.5, 1.0])), path)
    return path


def _volumes(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = ndimage.gaussian_filter(rng.random((n, *SHAPE)), sigma=(0, 1.5, 1.5, 1.5))
    lo, hi = v.min(axis=(1, 2, 3), keepdims=True), v.max(axis=(1, 2, 3), keepdims=True)
    return ((v - lo) / (hi - lo)).astype(np.float32)


def _run(real, synthetic, out, *, train=None, provenance=None, diversity_pairs=1000, train_chunk=64, **settings):
    """``evaluate`` with the evaluate section's defaults but ResNet-10, 20 replicates and KID subsets of 2
    volumes (the smallest set here); ``settings`` replace section keys."""
    if train is None:
        train = [_write(Path(out).parent / "train", f"T{k}", v) for k, v in enumerate(_volumes(3, 99))]
    section = {"med3d_depth": 10, "bootstrap": 20, "kid_subset_size": 2, **settings}
    return evaluate(real, synthetic, out, EvaluateConfig(**section),
                    train=train, provenance=provenance, diversity_pairs=diversity_pairs, train_chunk=train_chunk)


def test_identical_sets(tmp_path):
    vols = _volumes(6, 0)
    real = [_write(tmp_path / "real", f"LIDC-{k:04d}", v) for k, v in enumerate(vols)]
    order = [2, 5, 0, 1, 4, 3]
    syn = [_write(tmp_path / "samples", f"{k:04d}", vols[j]) for k, j in enumerate(order)]
    out = tmp_path / "metrics" / "metrics.json"
    train = [_write(tmp_path / "train", f"T{k}", v) for k, v in enumerate(_volumes(3, 7))]
    result = _run(real, syn, out, train=train, provenance={"checkpoint": "model.pt", "step": 12}, kid_subset_size=6)
    on_disk = json.loads(out.read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert [p.name for p in out.parent.iterdir()] == ["metrics.json"]  # no temporary file left behind

    assert abs(result["fid"]) < 1e-8 and result["fid_rank_deficient"] is True
    paired = result["msssim_nearest_real"]
    assert paired["mean"] == pytest.approx(1.0, abs=1e-5) and paired["n"] == 6
    assert [p["nearest_real"] for p in paired["per_sample"]] == [f"LIDC-{j:04d}.nii.gz" for j in order]
    div = result["msssim_diversity"]
    assert div["n_pairs"] == 15 and 0 < div["mean"] < 1  # all 6·5/2 pairs of distinct volumes
    assert result["n_real"] == 6 and result["n_synthetic"] == 6 and result["volume_shape"] == [16, 16, 16]
    assert result["msssim"]["window"] == 7 and result["msssim"]["scales"] == 2
    assert result["paper"] == {"fid": 9.70, "msssim": 0.266}
    assert result["provenance"] == {"checkpoint": "model.pt", "step": 12}
    net = result["feature_network"]
    assert net["depth"] == 10 and net["pretrained"] is False and "not comparable" in net["note"]
    assert net["feature_dim"] == 512 and net["normalise"] == "none"

    boot = result["bootstrap"]
    assert boot["n_boot"] == 20 and boot["level"] == 0.95 and boot["seed"] == 0
    assert boot["fid"]["low"] <= result["fid"] <= boot["fid"]["high"]
    assert boot["msssim_nearest_real"]["low"] <= paired["mean"] <= boot["msssim_nearest_real"]["high"]
    assert boot["msssim_diversity"]["low"] <= div["mean"] <= boot["msssim_diversity"]["high"]
    assert boot["msssim_diversity"]["method"] == "percentile interval"
    assert result["real_volumes"] == [f"LIDC-{k:04d}.nii.gz" for k in range(6)]
    floor = result["floor"]  # 6 real volumes: halves of 3, a real floor
    assert len(floor["half_a"]) == len(floor["half_b"]) == 3 and not set(floor["half_a"]) & set(floor["half_b"])
    assert floor["fid"] > 0 and 0 < floor["msssim_nearest_real"] < 1
    mem = result["memorisation"]
    assert result["n_train"] == 3 and mem["n_flagged"] == 0 and mem["flagged"] == []
    assert [p["synthetic"] for p in mem["per_sample"]] == [f"{k:04d}.nii.gz" for k in range(6)]
    assert mem["test_to_train"]["n"] == 6 and {p["nearest_train"] for p in mem["per_sample"]} <= {
        f"T{k}.nii.gz" for k in range(3)}
    assert mem["features"]["n_flagged"] == 0 and mem["features"]["test_to_train"]["n"] == 6
    assert mem["features"]["feature_network"]["depth"] == 10
    assert set(result) >= {"fid", "msssim_nearest_real", "msssim_diversity", "bootstrap", "floor", "memorisation"}
    anatomy = result["anatomy"]  # 16³ voxels of 2.5 mm hold 62.5 mL, less than a body: anatomy absent, not NaN
    assert anatomy["hu_window"] == [-1000.0, 400.0] and anatomy["counts"]["synthetic"]["no_body"] == 6
    assert anatomy["classes"]["lung"]["w1_hu"] is None and "reason" in anatomy["classes"]["lung"]
    assert [r["volume"] for r in anatomy["per_volume"]["synthetic"]] == [f"{k:04d}.nii.gz" for k in range(6)]
    json.dumps(result, allow_nan=False)

    # KID on the same features; subsets of all 6 volumes make every subset value Eq. (4) of ctdiff.metrics.kid
    model, _ = load_med3d(10, None, seed=0)
    feats = extract_features(model, iter(vols), normalise="none")
    K = polynomial_kernel(feats, feats)
    identical = -2.0 / 5 * (np.trace(K) / 6 - K.sum() / 36)
    kid = result["kid"]
    assert kid == kid_from_features(feats, feats[order], subset_size=6, subsets=100, seed=0)
    assert kid["subset_size"] == 6 and kid["subsets"] == 100 and kid["mean"] < 0
    assert kid["mean"] == pytest.approx(identical, rel=1e-9, abs=1e-12)
    assert boot["kid"]["low"] <= kid["mean"] <= boot["kid"]["high"] and "shifted" in boot["kid"]["method"]
    assert floor["kid"]["subset_size"] == 3 and "a half has 3 volumes" in floor["kid"]["note"]


def test_different_sets_and_determinism(tmp_path):
    real = [_write(tmp_path / "real", f"r{k}", v) for k, v in enumerate(_volumes(5, 1))]
    syn = [_write(tmp_path / "syn", f"s{k}", v) for k, v in enumerate(_volumes(4, 2))]
    a = _run(real, syn, tmp_path / "a.json", normalise="zscore", diversity_pairs=3)
    b = _run(real, syn, tmp_path / "b.json", normalise="zscore", diversity_pairs=3)
    assert a["fid"] > 0 and a["fid"] == b["fid"]
    assert a["msssim_nearest_real"]["mean"] < 0.9 and a["msssim_diversity"]["n_pairs"] == 3
    assert a["msssim_diversity"]["mean"] == b["msssim_diversity"]["mean"]
    assert a["provenance"] == {} and a["feature_network"]["normalise"] == "zscore"
    assert a["bootstrap"] == b["bootstrap"] and a["floor"] == b["floor"]
    assert a["kid"] == b["kid"] and a["kid"]["subset_size"] == 2 and a["kid"]["std"] > 0


def test_memorised_training_volume_is_flagged(tmp_path):
    train_vols = _volumes(4, 10)
    train = [_write(tmp_path / "train", f"T{k}", v) for k, v in enumerate(train_vols)]
    real = [_write(tmp_path / "real", f"r{k}", v) for k, v in enumerate(_volumes(4, 11))]
    syn_vols = _volumes(3, 12)
    syn_vols[1] = train_vols[2]
    syn = [_write(tmp_path / "syn", f"s{k}", v) for k, v in enumerate(syn_vols)]
    result = _run(real, syn, tmp_path / "m.json", train=train, train_chunk=3)
    mem = result["memorisation"]
    assert mem["flagged"] == ["s1.nii.gz"]
    assert mem["closest_pairs"][0]["train"] == "T2.nii.gz" and mem["closest_pairs"][0]["distance"] < 1e-5
    features = mem["features"]  # the exact copy is flagged in feature space too
    assert features["flagged"] == ["s1.nii.gz"] and features["closest_pairs"][0]["train"] == "T2.nii.gz"
    # 4 real volumes: halves of 2, the smallest floor that exists
    assert result["floor"]["fid"] is not None and "reason" not in result["floor"]
    assert result["floor"]["kid"]["subset_size"] == 2 and "note" not in result["floor"]["kid"]


def test_feature_audit_end_to_end(tmp_path):
    """The feature audit of evaluate() against its definition recomputed here: the same network and batches
    give the same features, brute-force distances give the nearest training volumes, and the rule is applied
    as stated. The synthetic set holds a copy of a training volume rolled by 2 voxels and an exact copy."""
    train_vols = _volumes(5, 20)
    train = [_write(tmp_path / "train", f"T{k}", v) for k, v in enumerate(train_vols)]
    real_vols = _volumes(4, 21)
    real = [_write(tmp_path / "real", f"r{k}", v) for k, v in enumerate(real_vols)]
    syn_vols = _volumes(4, 22)
    syn_vols[0] = np.roll(train_vols[3], 2, axis=1)
    syn_vols[2] = train_vols[1]
    syn = [_write(tmp_path / "syn", f"s{k}", v) for k, v in enumerate(syn_vols)]
    result = _run(real, syn, tmp_path / "m.json", train=train, train_chunk=2, bootstrap=0)
    voxels, features = result["memorisation"], result["memorisation"]["features"]
    assert "s2.nii.gz" in voxels["flagged"] and "s2.nii.gz" in features["flagged"]
    assert features["feature_network"] == result["feature_network"] and "Med3D" in features["distance"]

    model, _ = load_med3d(10, None, seed=0)
    f_train = np.concatenate([extract_features(model, iter(train_vols[i : i + 2])) for i in range(0, 5, 2)])
    f_syn, f_real = extract_features(model, iter(syn_vols)), extract_features(model, iter(real_vols))
    for feats, records in ((f_syn, features["per_sample"]), (f_real, features["test_to_train"]["per_sample"])):
        brute = np.linalg.norm(feats[:, None] - f_train[None], axis=2)
        assert [r["nearest_train"] for r in records] == [f"T{j}.nii.gz" for j in brute.argmin(1)]
        # both sums of C = 512 squares carry a relative error below (C + 2) u ~ 6e-14 (nearest.py, eq. (2))
        np.testing.assert_allclose([r["distance"] for r in records], brute.min(1), rtol=1e-12)
    threshold = features["threshold"]
    assert threshold == min(r["distance"] for r in features["test_to_train"]["per_sample"])
    assert [p["flagged"] for p in features["per_sample"]] == [p["distance"] < threshold for p in features["per_sample"]]
    assert features["flagged"] == [p["synthetic"] for p in features["per_sample"] if p["flagged"]]


def test_floor_is_null_for_tiny_sets():
    vols = _volumes(3, 4)
    feats = np.random.default_rng(0).random((3, 8))
    for n in (2, 3):
        floor = real_floor(vols[:n], feats[:n], [f"r{k}" for k in range(n)], seed=0, window=7)
        assert floor["fid"] is None and floor["msssim_nearest_real"] is None
        assert f"{n} real volumes" in floor["reason"]


def test_fid_sample_space_equals_covariance_form():
    rng = np.random.default_rng(3)
    for n_a, n_b, c in ((5, 7, 12), (40, 30, 6)):  # rank-deficient and full-rank covariances
        a, b = rng.standard_normal((n_a, c)), 0.5 + 2 * rng.standard_normal((n_b, c))
        covariance_form = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
        assert fid_sample_space(a, b) == pytest.approx(covariance_form, rel=1e-9)
        assert fid_from_features(a, b)["fid"] == pytest.approx(covariance_form, rel=1e-9)
    assert fid_sample_space(a, a) == pytest.approx(0.0, abs=1e-9)


def test_bootstrap_intervals_contain_estimate_and_repeat_for_a_seed():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((30, 4)), 0.3 + rng.standard_normal((25, 4))
    point = fid_from_features(a, b)["fid"]
    first = fid_ci(a, b, point, n_boot=200, seed=1)
    assert first == fid_ci(a, b, point, n_boot=200, seed=1)
    assert first != fid_ci(a, b, point, n_boot=200, seed=2)
    assert first["low"] < point < first["high"] and first["bias"] > 0  # resampling inflates FID
    assert first["n_boot"] == 200 and first["level"] == 0.95 and "shifted" in first["method"]
    same = fid_ci(a, a, 0.0, n_boot=50, seed=0)  # FID(a, a) = 0: the interval starts at 0, never below
    assert same["low"] == 0.0 < same["high"]
    values = rng.random(20)
    ci = mean_ci(values, n_boot=200, seed=0)
    assert ci["low"] < values.mean() < ci["high"] and ci == mean_ci(values, n_boot=200, seed=0)
    assert ci["method"] == "percentile interval" and 0 <= ci["low"] and ci["high"] <= 1
    wide = mean_ci(values, n_boot=200, seed=0, level=0.99)
    assert wide["low"] <= ci["low"] and wide["high"] >= ci["high"]
    with pytest.raises(ValueError, match="n_boot"):
        mean_ci(values, n_boot=0)
    with pytest.raises(ValueError, match="level"):
        mean_ci(values, level=1.5)


def test_replicate_count_and_level_are_the_ones_given(tmp_path):
    real = [_write(tmp_path / "real", f"r{k}", v) for k, v in enumerate(_volumes(6, 5))]
    syn = [_write(tmp_path / "syn", f"s{k}", v) for k, v in enumerate(_volumes(6, 6))]
    narrow = _run(real, syn, tmp_path / "narrow.json", bootstrap=40, ci_level=0.5)
    wide = _run(real, syn, tmp_path / "wide.json", bootstrap=40, ci_level=0.99)
    for result, level in ((narrow, 0.5), (wide, 0.99)):
        on_disk = json.loads((tmp_path / ("narrow.json" if level == 0.5 else "wide.json")).read_text())
        assert on_disk["bootstrap"]["n_boot"] == 40 and on_disk["bootstrap"]["level"] == level
    for key in ("fid", "msssim_nearest_real", "msssim_diversity"):
        n, w = narrow["bootstrap"][key], wide["bootstrap"][key]
        assert w["high"] - w["low"] > n["high"] - n["low"] > 0, key
    # Same seed, same replicates: only the quantiles differ, so the bias estimate is shared.
    assert narrow["bootstrap"]["fid"]["bias"] == wide["bootstrap"]["fid"]["bias"]
    other = _run(real, syn, tmp_path / "other.json", bootstrap=41, ci_level=0.5)
    assert other["bootstrap"]["fid"] != narrow["bootstrap"]["fid"]  # one more replicate changes the interval
    off = _run(real, syn, tmp_path / "off.json", bootstrap=0, ci_level=0.9)
    assert off["bootstrap"] == {"n_boot": 0, "level": 0.9, "seed": 0}
    assert off["fid"] == narrow["fid"] and off["msssim_diversity"] == narrow["msssim_diversity"]
    with pytest.raises(ValueError, match=r"evaluate\.bootstrap=-1"):
        _run(real, syn, tmp_path / "bad.json", bootstrap=-1)
    with pytest.raises(ValueError, match=r"evaluate\.ci_level=1\.0"):
        _run(real, syn, tmp_path / "bad.json", ci_level=1.0)
    assert not (tmp_path / "bad.json").exists()


def _pair_mean_by_positions(values, pairs, n_items, rng):
    """Eq. (2) the long way: draw the resampled set, then average over every pair of its positions whose two
    volumes form an evaluated pair (redrawing a set that holds none)."""
    lookup = {tuple(sorted(p)): v for p, v in zip(pairs, values)}
    while True:
        drawn = rng.integers(0, n_items, n_items)
        found = [lookup[key] for a in range(n_items) for b in range(a + 1, n_items)
                 if (key := tuple(sorted((drawn[a], drawn[b])))) in lookup]
        if found:
            return float(np.mean(found))


def test_diversity_bootstrap_resamples_volumes_not_pairs():
    rng = np.random.default_rng(8)
    n = 6
    rows, cols = np.triu_indices(n, k=1)
    keep = rng.choice(len(rows), size=9, replace=False)  # an incomplete set of pairs, as at 500 volumes
    pairs = np.stack([rows[keep], cols[keep]], 1)
    values = rng.random(len(pairs))
    for seed in range(5):  # one replicate: the interval is that replicate's value
        ci = pair_mean_ci(values, pairs, n, n_boot=1, seed=seed)
        expected = _pair_mean_by_positions(values, pairs, n, np.random.default_rng(seed))
        assert ci["low"] == pytest.approx(expected, rel=1e-12) and ci["high"] == pytest.approx(expected, rel=1e-12)
    ci = pair_mean_ci(values, pairs, n, n_boot=300, seed=0, level=0.9)
    assert ci["low"] < values.mean() < ci["high"] and ci["n_boot"] == 300 and ci["level"] == 0.9
    one = pair_mean_ci([0.4], [[0, 1]], 2, n_boot=50, seed=0)  # two volumes, one pair: nothing to vary
    assert one["low"] == one["high"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="distinct items"):
        pair_mean_ci([0.4], [[1, 1]], 2)


def test_refuses_bad_volumes_naming_each_file(tmp_path):
    vols = _volumes(3, 3)
    real = [_write(tmp_path / "real", f"r{k}", v) for k, v in enumerate(vols)]
    good = _write(tmp_path / "syn", "good", vols[0])
    small = _write(tmp_path / "syn", "small", vols[0][:8])
    hot = _write(tmp_path / "syn", "hot", vols[1] * 1.5)
    nan = vols[2].copy()
    nan[3, 3, 3] = np.nan
    nan_path = _write(tmp_path / "syn", "nan", nan)
    slightly = _write(tmp_path / "syn", "slightly", np.clip(vols[1] + 5e-5, None, 1 + 5e-5))  # within tolerance
    out = tmp_path / "m.json"
    with pytest.raises(ValueError) as err:
        _run(real, [good, small, hot, nan_path, slightly], out)
    msg = str(err.value)
    assert "3 synthetic volume(s)" in msg
    assert f"{small}: shape (8, 16, 16)" in msg
    assert f"{hot}: values span" in msg and "outside [0, 1]" in msg
    assert f"{nan_path}: contains NaN" in msg
    assert str(slightly) not in msg and str(good) not in msg
    assert not out.exists()
    with pytest.raises(ValueError, match=r"r_bad\.nii\.gz: values span"):
        _run(real + [_write(tmp_path / "real", "r_bad", vols[0] - 0.5)], [good, slightly], out)
    with pytest.raises(ValueError, match="normalise"):
        _run(real, [good, slightly], out, normalise="minmax")
    with pytest.raises(ValueError, match="at least 2"):
        _run(real, [good], out)
    with pytest.raises(ValueError, match=r"training volume\(s\):\n.*T_bad\.nii\.gz: shape"):
        _run(real, [good, slightly], out, train=[_write(tmp_path / "train", "T_bad", vols[0][:8])])
    with pytest.raises(ValueError, match="training split"):
        _run(real, [good, slightly], out, train=[])


def _chests(n: int, lung_hu: float) -> np.ndarray:
    """[n, 16, 16, 16] in [0, 1]: a soft-tissue ball (40 HU, radius 7 voxels) holding two lung balls (radius 2.5)
    of ``lung_hu``; at 12 mm per voxel a body of ~2.5 L and lungs of ~110 mL each."""
    grid = np.indices(SHAPE, dtype=float)
    ball = lambda c, r: sum((g - x) ** 2 for g, x in zip(grid, c)) <= r * r  # noqa: E731
    hu = np.full(SHAPE, -1000.0)
    hu[ball((7.5, 7.5, 7.5), 7)] = 40.0
    hu[ball((4.5, 7.5, 7.5), 2.5) | ball((10.5, 7.5, 7.5), 2.5)] = lung_hu
    return np.repeat(((hu + 1000) / 1400)[None].astype(np.float32), n, axis=0)


def test_anatomy_in_hu_through_the_window(tmp_path):
    affine = np.diag([12.0, 12.0, 12.0, 1.0])

    def write(folder, vols):
        folder.mkdir()
        paths = [folder / f"{k}.nii.gz" for k in range(len(vols))]
        for path, v in zip(paths, vols):
            nib.save(nib.Nifti1Image(v, affine), path)
        return paths

    real, syn = write(tmp_path / "real", _chests(4, -850.0)), write(tmp_path / "syn", _chests(3, -800.0))
    train = write(tmp_path / "train", _chests(2, -850.0))
    result = evaluate(real, syn, tmp_path / "m.json", EvaluateConfig(med3d_depth=10, bootstrap=10, kid_subset_size=2),
                      train=train)
    anatomy = result["anatomy"]
    assert anatomy["counts"]["synthetic"]["2_lungs"] == 3 and anatomy["summary"]["two_lungs_share_synthetic"] == 1
    assert anatomy["classes"]["lung"]["w1_hu"] == pytest.approx(50.0, rel=1e-12)  # every lung voxel 50 HU higher
    assert anatomy["classes"]["lung"]["floor"]["w1_hu"] == 0.0  # identical real volumes
    assert anatomy["quantities"]["lung_ml"]["w1"] == pytest.approx(0.0, abs=1e-9)
    # the same volumes read through another window are other HU: lung -850 → -1100 + 0.107·1600
    other = evaluate(real, syn, tmp_path / "o.json", EvaluateConfig(med3d_depth=10, bootstrap=0, kid_subset_size=2),
                     train=train,
                     hu_window=(-1100.0, 500.0))
    assert other["anatomy"]["hu_window"] == [-1100.0, 500.0]
    # each side rounded to whole HU (±0.5 each)
    assert other["anatomy"]["classes"]["lung"]["w1_hu"] == pytest.approx(50 * 1600 / 1400, abs=1.0)


def test_kid_refuses_sets_smaller_than_its_subsets(tmp_path):
    real = [_write(tmp_path / "real", f"r{k}", v) for k, v in enumerate(_volumes(3, 13))]
    syn = [_write(tmp_path / "syn", f"s{k}", v) for k, v in enumerate(_volumes(2, 14))]
    out = tmp_path / "m.json"
    with pytest.raises(ValueError, match=r"evaluate\.kid_subset_size=3 exceeds the 2 synthetic volumes.*sample\.n"):
        _run(real, syn, out, kid_subset_size=3)
    with pytest.raises(ValueError, match=r"evaluate\.kid_subset_size=4 exceeds the 3 real \(test\) volumes"):
        _run(real, syn + syn, out, kid_subset_size=4)
    assert not out.exists()
    result = _run(real, syn, out)  # 3 real volumes: halves of 1 and 2, no floor
    assert result["floor"]["kid"] is None and result["floor"]["fid"] is None and result["kid"]["subset_size"] == 2


def test_features_and_msssim_run_without_tf32_and_the_flags_come_back(tmp_path, monkeypatch):
    """cuDNN's default TF32 changed the Med3D features and the MS-SSIM blur on a GPU: evaluate turns it off for
    its whole run and restores the caller's flags."""
    import torch

    import ctdiff.metrics.evaluate as module

    seen = []

    def spy(real):
        def wrapped(*a, **k):
            seen.append((real.__name__, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
            return real(*a, **k)
        return wrapped

    for name in ("extract_features", "paired_msssim", "diversity_msssim"):
        monkeypatch.setattr(module, name, spy(getattr(module, name)))
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True  # the caller's choice
    try:
        real = [_write(tmp_path / "real", f"r{k}", v) for k, v in enumerate(_volumes(4, 1))]
        syn = [_write(tmp_path / "syn", f"s{k}", v) for k, v in enumerate(_volumes(4, 2))]
        _run(real, syn, tmp_path / "m.json", diversity_pairs=3, bootstrap=0)
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    assert {name for name, *_ in seen} == {"extract_features", "paired_msssim", "diversity_msssim"}
    assert all(flags == [False, False] for _, *flags in seen), seen
