"""Sampling stage: sample i depends only on (seed, i); reruns reuse finished samples; outputs are valid."""
import numpy as np
import pytest

from conftest import AFFINE, SIZE, TINY_DIFFUSION, TINY_MODEL, tiny_train_config
from ctdiff import cli
from ctdiff.generate import generate, sample_affine
from ctdiff.io import load_volume
from ctdiff.train import train


@pytest.fixture
def checkpoint(volumes, tmp_path):
    out = tmp_path / "train"
    train(volumes, out / "model.pt", out / "log.csv", out / "state", model_cfg=TINY_MODEL,
          diffusion_cfg=TINY_DIFFUSION, train_cfg=tiny_train_config(steps=3), size=SIZE, progress=False)
    return out / "model.pt"


def test_samples_independent_of_batching(checkpoint, tmp_path):
    a = [tmp_path / "a" / f"{i}.nii.gz" for i in range(3)]
    b = [tmp_path / "b" / f"{i}.nii.gz" for i in range(3)]
    generate(checkpoint, a, tmp_path / "cache_a", batch_size=3, seed=5, progress=False)
    generate(checkpoint, b, tmp_path / "cache_b", batch_size=2, seed=5, progress=False)
    for pa, pb in zip(a, b):
        va, affine = load_volume(pa)
        vb, _ = load_volume(pb)
        assert va.shape == (SIZE,) * 3 and va.dtype == np.float32
        assert 0.0 <= va.min() and va.max() <= 1.0
        np.testing.assert_allclose(va, vb, atol=1e-6)
    assert not np.allclose(load_volume(a[0])[0], load_volume(a[1])[0])
    # The training data's orientation and spacing, centred on the origin.
    np.testing.assert_allclose(affine[:3, :3], AFFINE[:3, :3])
    centre = affine @ np.array([(SIZE - 1) / 2] * 3 + [1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)


def test_rerun_reuses_finished_samples(checkpoint, tmp_path):
    out = [tmp_path / "s" / f"{i}.nii.gz" for i in range(2)]
    generate(checkpoint, out, tmp_path / "cache", batch_size=1, progress=False)
    first = load_volume(out[1])[0]
    (cached,) = [p for p in (tmp_path / "cache").rglob("0001.nii.gz")]
    stamp = cached.stat().st_mtime_ns
    for p in out:
        p.unlink()
    generate(checkpoint, out, tmp_path / "cache", batch_size=1, progress=False)
    assert cached.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(load_volume(out[1])[0], first)
    # Other sampler settings are never served from that cache.
    generate(checkpoint, out, tmp_path / "cache", sampler="ddim", steps=5, batch_size=1, progress=False)
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_sample_affine_centres_volume():
    affine = sample_affine(AFFINE, 16)
    assert np.allclose(affine @ [7.5, 7.5, 7.5, 1], [0, 0, 0, 1])


def test_cli_sample_and_bad_checkpoint(checkpoint, tmp_path, capsys):
    rc = cli.main(["sample", "--checkpoint", str(checkpoint), "-n", "2", "--sampler", "ddim", "--steps", "4",
                   "--out", str(tmp_path / "cli"), "--no-progress"])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "cli").glob("*.nii.gz")) == ["0000.nii.gz", "0001.nii.gz"]
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[:1000])
    rc = cli.main(["sample", "--checkpoint", str(truncated), "-n", "1", "--out", str(tmp_path / "x")])
    assert rc == 2
    assert "truncated.pt cannot be read" in capsys.readouterr().err
    rc = cli.main(["sample", "--checkpoint", str(tmp_path / "missing.pt"), "-n", "1", "--out", str(tmp_path / "x")])
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err
