"""The variants table: what a set's provenance says (network evaluations counted against the sampling loop
itself), the training cost read from a log, and the per-(variant, sampler) table from metrics JSONs, train
folders and sampling records. Which pairs get their own sample set: test_plan.py."""
import json
import math

import pandas as pd
import pytest
import torch
from torch import nn

from conftest import write_train_folder
from ctdiff.training.checkpoint import save_checkpoint
from ctdiff.diffusion.samplers import network_evaluations
from ctdiff.diffusion.sampling import sample
from ctdiff.diffusion.schedule import make_schedule
from ctdiff.metrics.variant_table import read_variant_table, sampling_provenance, train_seconds_per_step, variant_table
from ctdiff.plan import TableRow
from ctdiff.training.loop import write_log


class CountingModel(nn.Module):
    """ε = 0 for every input; counts its calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        return torch.zeros_like(x)


@pytest.mark.parametrize("sampler, steps, eta", [("ddpm", None, 0.0), ("ddim", 7, 0.3), ("dpmpp", 5, 0.0),
                                                 ("euler", 6, 0.0), ("heun", 4, 0.0), ("heun", None, 0.0)])
def test_provenance_counts_the_network_evaluations_of_the_sampling_loop(tmp_path, sampler, steps, eta):
    diffusion = {"timesteps": 20, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}
    save_checkpoint(tmp_path / "model.pt", {"config": {"diffusion": diffusion}, "ema": {}, "step": 37})
    prov = sampling_provenance(tmp_path / "model.pt", sampler=sampler, steps=steps, eta=eta, seed=3)

    model = CountingModel()
    sample(model, make_schedule(**diffusion), (1, 4, 4, 4), [torch.Generator().manual_seed(0)] * 2,
           sampler=sampler, steps=steps, eta=eta, objective="flow" if sampler in ("euler", "heun") else "eps")
    assert prov["network_evaluations"] == model.calls  # one call per step for the whole batch
    assert network_evaluations(sampler, steps, 20) == model.calls
    assert prov["sampler_steps"] == (20 if steps is None else steps)
    assert prov["eta"] == (eta if sampler == "ddim" else 0.0)
    assert prov["checkpoint_step"] == 37 and prov["sample_seed"] == 3 and len(prov["checkpoint_sha256"]) == 64


REAL = ["r0.nii.gz", "r1.nii.gz", "r2.nii.gz"]


def metrics_json(path, *, sampler, steps, eta, nfe, fid, near, div, real=REAL, seed=0, sha="a" * 64,
                 intervals=True, kid=0.02, anatomy=None, flagged=None):
    m = {
        "fid": fid, "msssim_nearest_real": {"mean": near, "std": 0.01, "n": 2},
        "kid": {"mean": kid, "std": 0.005, "subset_size": 2, "subsets": 100},
        "msssim_diversity": {"mean": div, "std": 0.02, "n_pairs": 1},
        "n_real": len(real), "n_synthetic": 2, "real_volumes": real,
        "bootstrap": {"n_boot": 0, "level": 0.95, "seed": 0},
        "provenance": {"sampler": sampler, "sampler_steps": steps, "eta": eta, "network_evaluations": nfe,
                       "sample_seed": seed, "checkpoint_step": 800, "checkpoint_sha256": sha},
    }
    if anatomy is not None:
        m["anatomy"] = {"summary": {"two_lungs_share_synthetic": anatomy[0], "lung_volume_ratio": anatomy[1]}}
    if intervals:
        m["bootstrap"].update(n_boot=200, level=0.9, fid={"low": fid - 1, "high": fid + 2},
                              msssim_nearest_real={"low": near - 0.01, "high": near + 0.02},
                              msssim_diversity={"low": div - 0.03, "high": div + 0.04},
                              kid={"low": kid - 0.01, "high": kid + 0.03})
    if flagged is not None:  # (voxel audit, feature audit) near-copy counts
        m["memorisation"] = {"n_flagged": flagged[0], "features": {"n_flagged": flagged[1]}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(m))
    return path


CPU = {"type": "cpu", "name": "Some CPU", "processes": 1, "threads": 2}
GPU = {"type": "cuda", "name": "NVIDIA H200", "processes": 2, "threads": None}


def row(tmp_path, variant, set_name, metrics, train):
    samples = metrics.parent / "samples"
    return TableRow(variant, set_name, str(metrics), str(samples), str(train))


def test_variant_table_has_a_row_per_pair_main_first(tmp_path):
    paper_train = write_train_folder(tmp_path / "train", machine=GPU)
    small_train = write_train_folder(tmp_path / "variants" / "small" / "train", rows=((40, 3.0),))  # no machine recorded
    main = metrics_json(tmp_path / "metrics" / "metrics.json", sampler="ddpm", steps=1000, eta=0.0, nfe=1000,
                        fid=10.5, near=0.5, div=0.3, anatomy=(1.0, 0.98), flagged=(1, 2))
    ddim = metrics_json(tmp_path / "compare" / "ddim-50-eta0.5" / "metrics.json", sampler="ddim", steps=50,
                        eta=0.5, nfe=50, fid=12.25, near=0.45, div=0.35, kid=-0.0025, anatomy=(0.5, None),
                        flagged=(0, 0))
    dpmpp = metrics_json(tmp_path / "compare" / "dpmpp-25" / "metrics.json", sampler="dpmpp", steps=25, eta=0.0,
                         nfe=25, fid=11.0, near=0.48, div=0.31, real=list(reversed(REAL)), intervals=False)
    small = metrics_json(tmp_path / "variants" / "small" / "metrics" / "metrics.json", sampler="ddim", steps=20,
                         eta=0.0, nfe=20, fid=14.0, near=0.4, div=0.3, sha="b" * 64)
    (tmp_path / "metrics" / "samples").mkdir()
    (tmp_path / "metrics" / "samples" / "sampling.json").write_text(json.dumps(
        {"seconds_per_volume": 2.5, "timed": 2, "n": 2, "batch": 2, "machines": [CPU]}))
    rows = [row(tmp_path, "paper", "main", main, paper_train),
            row(tmp_path, "paper", "ddim-50-eta0.5", ddim, paper_train),
            row(tmp_path, "paper", "dpmpp-25", dpmpp, paper_train),
            row(tmp_path, "small", "main", small, small_train)]
    out = tmp_path / "metrics" / "variants.tsv"
    table = variant_table(rows, out)
    back = read_variant_table(out)
    pd.testing.assert_frame_equal(back, table, check_dtype=False)
    assert list(back["variant"]) == ["paper"] * 3 + ["small"]
    assert list(back["set"]) == ["main", "ddim-50-eta0.5", "dpmpp-25", "main"]
    assert list(back["sampler"]) == ["ddpm", "ddim", "dpmpp", "ddim"] and list(back["steps"]) == [1000, 50, 25, 20]
    assert list(back["network_evaluations"]) == [1000, 50, 25, 20]
    assert math.isnan(back["eta"][0]) and back["eta"][1] == 0.5 and math.isnan(back["eta"][2])
    # training: intervals 10->20, 20->30, 30->40 take 0.1, 0.15, 0.1 s/step (0->10 holds the start-up)
    assert list(back["train_s_per_step"][:3]) == pytest.approx([0.1] * 3)
    assert list(back["train_steps"]) == [40] * 4
    assert back["train_hours"][0] == pytest.approx(0.1 * 40 / 3600)
    assert list(back["train_machine"][:3]) == ["2 × NVIDIA H200"] * 3
    assert math.isnan(back["train_s_per_step"][3]) and math.isnan(back["train_hours"][3])  # one logged row
    assert pd.isna(back["train_machine"][3])  # a checkpoint written before machines were recorded
    assert back["sampling_s_per_volume"][0] == 2.5 and back["sampling_machine"][0] == "1 × Some CPU (CPU, 2 threads)"
    assert math.isnan(back["sampling_s_per_volume"][1]) and pd.isna(back["sampling_machine"][1])
    assert list(back["fid"]) == [10.5, 12.25, 11.0, 14.0]
    assert (back["fid_low"][1], back["fid_high"][1]) == (11.25, 14.25)
    assert back["msssim_diversity_low"][0] == pytest.approx(0.27)
    assert back["msssim_nearest_real_high"][1] == pytest.approx(0.47)
    assert math.isnan(back["fid_low"][2]) and math.isnan(back["ci_level"][2]) and back["n_boot"][2] == 0
    assert list(back["kid"]) == [0.02, -0.0025, 0.02, 0.02] and math.isnan(back["kid_low"][2])
    assert (back["kid_low"][1], back["kid_high"][1]) == pytest.approx((-0.0125, 0.0275))
    assert list(back["ci_level"][:2]) == [0.9, 0.9] and set(back["checkpoint_step"]) == {800}
    assert back["two_lungs_share"][0] == 1.0 and back["two_lungs_share"][1] == 0.5
    assert back["lung_volume_ratio"][0] == 0.98 and math.isnan(back["lung_volume_ratio"][1])  # no real lungs
    assert math.isnan(back["two_lungs_share"][2])  # metrics written before the anatomy was measured
    assert list(back["memorisation_flagged_voxels"][:2]) == [1, 0]
    assert list(back["memorisation_flagged_features"][:2]) == [2, 0]
    assert math.isnan(back["memorisation_flagged_features"][2])  # a set without the audit: an empty cell
    header = out.read_text().splitlines()[0].split("\t")
    assert header[:6] == ["variant", "set", "sampler", "steps", "eta", "network_evaluations"]


@pytest.mark.parametrize("variant, change, differs", [
    ("paper", {"real": ["r0.nii.gz", "r1.nii.gz", "r9.nii.gz"]}, "real_volumes"),
    ("small", {"real": ["r0.nii.gz", "r1.nii.gz", "r9.nii.gz"]}, "real_volumes"),
    ("small", {"seed": 1}, "sample_seed"),
    ("paper", {"sha": "b" * 64}, "checkpoint_sha256"),  # the same variant's sets must share its checkpoint
])
def test_variant_table_refuses_sets_that_do_not_share_seeds_and_real_volumes(tmp_path, variant, change, differs):
    train = write_train_folder(tmp_path / "train")
    main = metrics_json(tmp_path / "main.json", sampler="ddpm", steps=1000, eta=0.0, nfe=1000, fid=1, near=1, div=1)
    other = metrics_json(tmp_path / "other.json", sampler="ddim", steps=50, eta=0.0, nfe=50, fid=1, near=1, div=1,
                         **change)
    rows = [row(tmp_path, "paper", "main", main, train), row(tmp_path, variant, "ddim-50", other, train)]
    with pytest.raises(ValueError, match=rf"other\.json and .*main\.json differ in {differs}"):
        variant_table(rows, tmp_path / "variants.tsv")
    assert not (tmp_path / "variants.tsv").exists()


def test_variants_may_differ_in_checkpoint(tmp_path):
    train = write_train_folder(tmp_path / "train")
    main = metrics_json(tmp_path / "main.json", sampler="ddpm", steps=1000, eta=0.0, nfe=1000, fid=1, near=1, div=1)
    other = metrics_json(tmp_path / "other.json", sampler="ddpm", steps=1000, eta=0.0, nfe=1000, fid=2, near=1,
                         div=1, sha="b" * 64)
    rows = [row(tmp_path, "paper", "main", main, train), row(tmp_path, "cosine", "main", other, train)]
    assert list(variant_table(rows, tmp_path / "variants.tsv")["fid"]) == [1, 2]


def test_variant_table_names_a_file_without_provenance(tmp_path):
    train = write_train_folder(tmp_path / "train")
    main = metrics_json(tmp_path / "main.json", sampler="ddpm", steps=1000, eta=0.0, nfe=1000, fid=1, near=1, div=1)
    old = json.loads(main.read_text())
    del old["provenance"]["network_evaluations"], old["real_volumes"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    rows = [row(tmp_path, "paper", "main", main, train), row(tmp_path, "paper", "ddim-50", tmp_path / "old.json", train)]
    with pytest.raises(ValueError, match=r"old\.json: no network_evaluations, real_volumes"):
        variant_table(rows, tmp_path / "variants.tsv")


def test_train_seconds_per_step_is_the_median_interval_after_the_first(tmp_path):
    """Δelapsed / Δstep per pair of logged rows; the first row's interval (start-up: 50 s for 10 steps) is left
    out, and the median ignores a resumed run's own start-up (the 9 s between steps 30 and 40)."""
    rows = [(10, 50.0), (20, 52.0), (30, 54.0), (40, 63.0), (50, 65.5), (60, 67.5)]
    write_log(tmp_path / "log.csv", [{"step": s, "loss": 0.1, "lr": 1e-3, "elapsed_s": e} for s, e in rows])
    assert train_seconds_per_step(tmp_path / "log.csv") == pytest.approx(0.2)  # of 0.2, 0.2, 0.9, 0.25, 0.2
    write_log(tmp_path / "one.csv", [{"step": 10, "loss": 0.1, "lr": 1e-3, "elapsed_s": 5.0}])
    assert train_seconds_per_step(tmp_path / "one.csv") is None
