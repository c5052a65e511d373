"""The evaluate stage end to end on tiny NIfTI volumes with a seeded random ResNet-10."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from ctdiff.metrics.evaluate import evaluate

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


def _run(real, synthetic, out, **kw):
    args = dict(med3d_weights=None, med3d_depth=10, normalise="none", msssim_window=7, seed=0)
    args.update(kw)
    return evaluate(real, synthetic, out, **args)


def test_identical_sets(tmp_path):
    vols = _volumes(6, 0)
    real = [_write(tmp_path / "real", f"LIDC-{k:04d}", v) for k, v in enumerate(vols)]
    order = [2, 5, 0, 1, 4, 3]
    syn = [_write(tmp_path / "samples", f"{k:04d}", vols[j]) for k, j in enumerate(order)]
    out = tmp_path / "metrics" / "metrics.json"
    result = _run(real, syn, out, provenance={"checkpoint": "model.pt", "step": 12})
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


def test_different_sets_and_determinism(tmp_path):
    real = [_write(tmp_path / "real", f"r{k}", v) for k, v in enumerate(_volumes(5, 1))]
    syn = [_write(tmp_path / "syn", f"s{k}", v) for k, v in enumerate(_volumes(4, 2))]
    a = _run(real, syn, tmp_path / "a.json", normalise="zscore", diversity_pairs=3)
    b = _run(real, syn, tmp_path / "b.json", normalise="zscore", diversity_pairs=3)
    assert a["fid"] > 0 and a["fid"] == b["fid"]
    assert a["msssim_nearest_real"]["mean"] < 0.9 and a["msssim_diversity"]["n_pairs"] == 3
    assert a["msssim_diversity"]["mean"] == b["msssim_diversity"]["mean"]
    assert a["provenance"] == {} and a["feature_network"]["normalise"] == "zscore"


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
