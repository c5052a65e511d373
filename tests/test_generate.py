"""Sampling stage: sample i depends only on (seed, i); reruns reuse finished samples; outputs are valid."""
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import AFFINE, SIZE, bin_env, tiny_config
from ctdiff import cli
from ctdiff.config import SampleConfig
from ctdiff.sampling.generate import generate, sample_affine, sampling_cost
from ctdiff.files import load_volume, write_json
from ctdiff.machine import describe
from ctdiff.training.loop import train


def train_tiny(volumes, out, steps):
    """A tiny trained checkpoint in ``out`` (HU window [-1000, 400])."""
    train(volumes, out / "model.pt", out / "log.csv", out / "state", tiny_config(steps=steps), progress=False)
    return out / "model.pt"


@pytest.fixture
def checkpoint(volumes, tmp_path):
    return train_tiny(volumes, tmp_path / "train", steps=3)


def test_samples_independent_of_batching(checkpoint, tmp_path):
    a = [tmp_path / "a" / f"{i}.nii.gz" for i in range(3)]
    b = [tmp_path / "b" / f"{i}.nii.gz" for i in range(3)]
    generate(checkpoint, a, tmp_path / "cache_a", SampleConfig(batch_size=3, seed=5), progress=False)
    generate(checkpoint, b, tmp_path / "cache_b", SampleConfig(batch_size=2, seed=5), progress=False)
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
    generate(checkpoint, out, tmp_path / "cache", SampleConfig(batch_size=1), progress=False)
    first = load_volume(out[1])[0]
    (cached,) = [p for p in (tmp_path / "cache").rglob("0001.nii.gz")]
    stamp = cached.stat().st_mtime_ns
    cost = json.loads((tmp_path / "s" / "sampling.json").read_text())  # what drawing them cost, and where
    assert cost["timed"] == cost["n"] == 2 and cost["batch"] == 1 and cost["seconds_per_volume"] > 0
    assert cost["machines"] == [describe("cpu", 1)]
    for p in out:
        p.unlink()
    generate(checkpoint, out, tmp_path / "cache", SampleConfig(batch_size=1), progress=False)
    assert cached.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(load_volume(out[1])[0], first)
    assert json.loads((tmp_path / "s" / "sampling.json").read_text()) == cost  # the cached samples' own timing
    # Other sampler settings are never served from that cache.
    generate(checkpoint, out, tmp_path / "cache", SampleConfig(sampler="ddim", steps=5, batch_size=1), progress=False)
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_cache_key_is_the_hash_of_the_sampler_settings(checkpoint, tmp_path):
    """The key caches are written under: sha256 of the sorted JSON of these fields, first 16 hex digits."""
    import hashlib
    import json

    from ctdiff.files import file_sha256

    generate(checkpoint, [tmp_path / "a.nii.gz"], tmp_path / "cache", SampleConfig(sampler="ddim", steps=2, seed=4),
             progress=False)
    fields = {"checkpoint_sha256": file_sha256(checkpoint), "sampler": "ddim", "steps": 2, "eta": 0.0, "seed": 4,
              "precision": "fp32", "compile": False}
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [key]
    assert json.loads((tmp_path / "cache" / key / "settings.json").read_text()) == fields


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


def test_checkpoint_of_another_release_is_refused(checkpoint, tmp_path, capsys):
    from ctdiff import __version__
    from ctdiff.training.checkpoint import compatible, read_checkpoint

    assert compatible("0.1.7", "0.1.0") and compatible("1.4.0", "1.2.3")
    assert not compatible("0.2.0", "0.1.0") and not compatible("2.0.0", "1.9.0")
    payload = torch.load(checkpoint, weights_only=True)
    payload["version"] = "9.0.0"
    foreign = tmp_path / "future.pt"
    torch.save(payload, foreign)
    rc = cli.main(["sample", "--checkpoint", str(foreign), "-n", "1", "--out", str(tmp_path / "x")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "written by ctdiff 9.0.0" in err and __version__ in err
    del payload["version"]
    torch.save(payload, foreign)
    with pytest.raises(ValueError, match="lacks version"):
        read_checkpoint(foreign)


def test_bad_sampler_settings_name_the_allowed_values(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="sample.sampler='plms' cannot sample a diffusion.objective='eps' model; "
                                         "allowed samplers for eps: ddpm, ddim, dpmpp"):
        generate(checkpoint, [tmp_path / "a.nii.gz"], tmp_path / "c", SampleConfig(sampler="plms"), progress=False)
    with pytest.raises(ValueError, match=r"sample.steps=21 .*steps must be an integer in \[1, 20\]"):
        generate(checkpoint, [tmp_path / "a.nii.gz"], tmp_path / "c", SampleConfig(sampler="ddim", steps=21),
                 progress=False)
    with pytest.raises(ValueError, match=r"sample.steps=None .*\[1, 19\] for dpmpp"):
        generate(checkpoint, [tmp_path / "a.nii.gz"], tmp_path / "c", SampleConfig(sampler="dpmpp"), progress=False)
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").rglob("*.nii.gz"))


def test_samplers_that_do_not_fit_the_checkpoints_objective_are_refused(volumes, checkpoint, tmp_path, capsys):
    """A flow checkpoint samples with euler and heun only, an eps checkpoint not with them: refused before any
    sample is drawn, naming sample.sampler, diffusion.objective and the allowed samplers."""
    from dataclasses import replace

    from conftest import TINY_DIFFUSION

    cfg = tiny_config(steps=2)
    cfg = replace(cfg, diffusion=replace(TINY_DIFFUSION, objective="flow"))
    flow_model = tmp_path / "flow" / "model.pt"
    train(volumes, flow_model, tmp_path / "flow" / "log.csv", tmp_path / "flow" / "state", cfg, progress=False)
    out = [tmp_path / "s" / f"{i}.nii.gz" for i in range(2)]
    generate(flow_model, out, tmp_path / "cache", SampleConfig(sampler="heun", steps=3), progress=False)
    volume, _ = load_volume(out[1])
    assert volume.shape == (SIZE,) * 3 and 0 <= volume.min() and volume.max() <= 1
    for sampler in ("ddpm", "ddim", "dpmpp"):
        rc = cli.main(["sample", "--checkpoint", str(flow_model), "-n", "1", "--sampler", sampler, "--steps", "5",
                       "--out", str(tmp_path / sampler), "--no-progress"])
        assert rc == 2 and not (tmp_path / sampler).exists()
        assert (f"model.pt: sample.sampler='{sampler}' cannot sample a diffusion.objective='flow' model (it samples "
                "eps and v models); allowed samplers for flow: euler, heun") in capsys.readouterr().err
    with pytest.raises(ValueError, match="sample.sampler='euler' cannot sample a diffusion.objective='eps' model"):
        generate(checkpoint, out, tmp_path / "c2", SampleConfig(sampler="euler", steps=3), progress=False)
    assert not (tmp_path / "c2").exists()


def test_hu_output_inverts_the_preprocessing_scale(tmp_path, volumes):
    from ctdiff.ingest.preprocess import to_hu

    model = train_tiny(volumes, tmp_path / "train", steps=2)
    unit = [tmp_path / "s" / f"{i}.nii.gz" for i in range(2)]
    hu = [tmp_path / "hu" / f"{i}.nii.gz" for i in range(2)]
    generate(model, unit, tmp_path / "cache", SampleConfig(sampler="ddim", steps=3), hu_files=hu, progress=False)
    for pu, ph in zip(unit, hu):
        v, affine_u = load_volume(pu)
        h, affine_h = load_volume(ph)
        np.testing.assert_allclose(h, np.rint(-1000.0 + 1400.0 * v), atol=0.5 + 1e-3)
        np.testing.assert_array_equal(affine_u, affine_h)
    assert nib.load(hu[0]).get_data_dtype() == np.int16
    assert to_hu(np.array([0.0, 0.5, 1.0, 1.5]), (-1000, 400)).tolist() == [-1000, -300, 400, 400]


def test_a_checkpoint_lacking_a_recorded_setting_or_holding_an_unknown_one_is_refused(checkpoint, tmp_path):
    """The checkpoint's data section must record the preprocessing (the HU window is what turns samples back into
    HU); a missing entry or an unknown key is refused, naming it."""
    from ctdiff.training.checkpoint import load_for_sampling

    payload = torch.load(checkpoint, weights_only=True)
    del payload["config"]["data"]["hu_window"]
    torch.save(payload, tmp_path / "nowindow.pt")
    with pytest.raises(ValueError, match=r"nowindow.pt .*unreadable config: data.hu_window is not recorded"):
        load_for_sampling(tmp_path / "nowindow.pt")

    payload = torch.load(checkpoint, weights_only=True)
    del payload["config"]["diffusion"]["objective"]  # no default is taken for it either
    torch.save(payload, tmp_path / "noobjective.pt")
    with pytest.raises(ValueError, match=r"noobjective.pt .*diffusion.objective is not recorded"):
        load_for_sampling(tmp_path / "noobjective.pt")

    payload = torch.load(checkpoint, weights_only=True)
    payload["config"]["model"]["width"] = 3
    torch.save(payload, tmp_path / "unknown.pt")
    with pytest.raises(ValueError, match=r"unknown.pt .*unknown key model.width"):
        load_for_sampling(tmp_path / "unknown.pt")


def test_bf16_sampling_stays_close_to_fp32(checkpoint, tmp_path):
    a = [tmp_path / "a" / f"{i}.nii.gz" for i in range(2)]
    b = [tmp_path / "b" / f"{i}.nii.gz" for i in range(2)]
    generate(checkpoint, a, tmp_path / "cache", SampleConfig(sampler="ddim", steps=5), progress=False)
    generate(checkpoint, b, tmp_path / "cache", SampleConfig(sampler="ddim", steps=5, precision="bf16"),
             progress=False)
    assert len(list((tmp_path / "cache").iterdir())) == 2  # bf16 samples are cached apart
    for pa, pb in zip(a, b):
        va, vb = load_volume(pa)[0], load_volume(pb)[0]
        assert not np.array_equal(va, vb)
        assert np.abs(va - vb).max() < 0.05


@pytest.mark.slow
def test_two_processes_share_the_samples_and_draw_the_same_volumes(checkpoint, tmp_path):
    one = [tmp_path / "one" / f"{i:04d}.nii.gz" for i in range(5)]
    generate(checkpoint, one, tmp_path / "one_cache", SampleConfig(sampler="ddim", steps=4, batch_size=3, seed=2),
             progress=False)
    env = bin_env() | {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29521",
           "-m", "ctdiff.cli", "sample", "--checkpoint", str(checkpoint), "-n", "5", "--sampler", "ddim",
           "--steps", "4", "--batch-size", "2", "--seed", "2", "--out", str(tmp_path / "two"),
           "--cache", str(tmp_path / "two_cache"), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "process 0 of 2: 3 of 5 unfinished samples [0, 2, 4]" in proc.stdout
    assert "process 1 of 2: 2 of 5 unfinished samples [1, 3]" in proc.stdout
    for path in one:
        np.testing.assert_allclose(load_volume(tmp_path / "two" / path.name)[0], load_volume(path)[0], atol=1e-6)
    # Every sample exists once in the shared cache, nothing else was written.
    (cache,) = (tmp_path / "two_cache").iterdir()
    assert sorted(p.name for p in cache.glob("*.nii.gz")) == [p.name for p in one]
    cost = json.loads((tmp_path / "two" / "sampling.json").read_text())
    assert cost["timed"] == 5 and [m["processes"] for m in cost["machines"]] == [2]


@pytest.mark.slow
def test_killed_sampling_resumes_without_redoing_or_corrupting(checkpoint, tmp_path):
    import signal
    import time

    n = 12
    args = ["-m", "ctdiff.cli", "sample", "--checkpoint", str(checkpoint), "-n", str(n), "--batch-size", "1",
            "--seed", "3", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), "--no-progress"]
    def finished():  # atomic writes go through hidden temporary files first
        return [p for p in (tmp_path / "cache").rglob("*.nii.gz") if not p.name.startswith(".")]

    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=bin_env())
    deadline = time.monotonic() + 120
    while len(finished()) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "sampling ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in finished()}
    assert 2 <= len(done) < n, "the kill must land mid-run"
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.nii.gz")), \
        "no declared output before every sample exists"

    rerun = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=bin_env(), timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{n - len(done)} of {n - len(done)} unfinished samples" in rerun.stdout
    for p in finished():  # finished samples were not redone
        if p.name in done:
            assert p.stat().st_mtime_ns == done[p.name]
    reference = [tmp_path / "ref" / f"{i:04d}.nii.gz" for i in range(n)]
    generate(checkpoint, reference, tmp_path / "ref_cache", SampleConfig(batch_size=4, seed=3), progress=False)
    for path in reference:
        np.testing.assert_allclose(load_volume(tmp_path / "out" / path.name)[0], load_volume(path)[0], atol=1e-6)
    # (A kill during a write may leave a temporary file in the cache; it never counts as a sample.)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [p.name for p in reference] + ["sampling.json"]
    assert json.loads((tmp_path / "out" / "sampling.json").read_text())["timed"] == n  # both runs' samples


def test_sampling_cost_is_the_median_over_timed_samples(tmp_path):
    """A first batch that paid for compilation does not count; samples cached without timing are left out."""
    machine = {"type": "cuda", "name": "GPU", "processes": 1, "threads": None}
    for i, seconds in enumerate([30.0, 30.0, 2.0, 2.0, 3.0]):
        write_json(tmp_path / f"{i:04d}.json", {"seconds": seconds, "batch": 2, "machine": machine})
    cost = sampling_cost([tmp_path / f"{i:04d}.json" for i in range(7)])
    assert cost == {"seconds_per_volume": 3.0, "timed": 5, "n": 7, "batch": 2, "machines": [machine]}
    assert sampling_cost([tmp_path / "none.json"])["seconds_per_volume"] is None
