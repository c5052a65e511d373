"""The downstream stage (ctdiff.downstream): its scores against closed forms, a segmenter that finds nodules
well above chance, masks that matter, reproducibility, the report section, the variants table's columns and
what the workflow plans.

The cohort here is a phantom-like toy at 16³ (seconds to train on): a body of soft tissue, two ellipsoidal lungs
of air, and 0-2 nodules per volume, balls as bright as the body inside the lungs, so that intensity alone does
not find them: the segmenter must learn "tissue inside the lung". The phantom cohort itself, through the pipeline's
ingestion, is tests/test_downstream_phantom.py's."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from ctdiff import plan
from ctdiff.config import DownstreamConfig, from_dict, to_dict
from ctdiff.downstream.scores import dice, lesion_counts, summarise, volume_scores
from ctdiff.downstream.segmenter import SMOOTH, Case, draw_batch, loss_fn, predict, window_starts, window_weights
from ctdiff.downstream.stage import downstream_arm, sample_pairs
from ctdiff.files import save_volume
from ctdiff.metrics.variant_table import _downstream
from ctdiff.report.downstream import downstream_rows, downstream_section, verdicts

SIZE = 16
AFFINE = np.diag([20.0, 20.0, 20.0, 1.0])
TISSUE, AIR = 0.45, 0.08
#: A segmenter small enough to train in seconds; the budget of every arm below.
SETTINGS = DownstreamConfig(enabled=True, steps=60, batch_size=4, lr=3e-3, channels=(8, 16), res_blocks=1,
                            groups=4, seed=0)


def toy_case(rng: np.random.Generator, nodules: int) -> tuple[np.ndarray, np.ndarray]:
    """A volume [16³] in [0, 1] and its uint8 labels: tissue, two lungs, ``nodules`` tissue-bright balls in them."""
    i, j, k = np.meshgrid(*[np.arange(SIZE)] * 3, indexing="ij")
    lungs = np.zeros((SIZE,) * 3, bool)
    for centre in (4.5, 11.5):
        lungs |= ((i - 8) / 6.0) ** 2 + ((j - centre) / 3.2) ** 2 + ((k - 8) / 6.0) ** 2 < 1
    volume = np.where(lungs, AIR, TISSUE) + rng.normal(0, 0.03, lungs.shape)
    labels = np.zeros(lungs.shape, np.uint8)
    inside = np.argwhere(ndimage.distance_transform_edt(lungs) >= 2.5)
    for n in range(1, nodules + 1):
        c = inside[rng.integers(len(inside))]
        ball = (i - c[0]) ** 2 + (j - c[1]) ** 2 + (k - c[2]) ** 2 <= rng.uniform(1.2, 2.0) ** 2
        labels[ball & (labels == 0)] = n
        volume[ball] = TISSUE + rng.normal(0, 0.03, int(ball.sum()))
    return np.clip(volume, 0, 1).astype(np.float32), labels


def write_cases(folder: Path, n: int, seed: int) -> list[tuple[Path, Path]]:
    """``n`` toy cases as (volume, mask) NIfTI files, one in four without nodules."""
    rng = np.random.default_rng(seed)
    pairs = []
    for c in range(n):
        volume, labels = toy_case(rng, 0 if c % 4 == 3 else 1 + c % 2)
        pair = (folder / f"{c:04d}.nii.gz", folder / "nodules" / f"{c:04d}.nii.gz")
        save_volume(pair[0], volume, AFFINE)
        save_volume(pair[1], labels, AFFINE)
        pairs.append(pair)
    return pairs


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A real training split (12), a synthetic set (12, from another seed) and held-out real volumes (8)."""
    root = tmp_path_factory.mktemp("downstream")
    return {"real": write_cases(root / "train", 12, 1), "synthetic": write_cases(root / "synthetic", 12, 2),
            "test": write_cases(root / "test", 8, 3)}


def chance_dice(record: dict) -> float:
    """The mean Dice over volumes with nodules of a prediction of the same size placed at random in the 16³
    volume: |P ∩ G| is |P|·|G|/N in expectation."""
    n = SIZE**3
    values = [2 * v["predicted_voxels"] * v["reference_voxels"] / n / (v["predicted_voxels"] + v["reference_voxels"])
              for v in record["per_volume"] if v["nodules"]]
    return float(np.mean(values))


# --- scores against closed forms ---------------------------------------------------------------------------


def test_dice_of_known_overlaps():
    a, b = np.zeros((6,) * 3, bool), np.zeros((6,) * 3, bool)
    a[0:2, 0:2, 0:2] = True  # 8 voxels
    b[1:3, 0:2, 0:2] = True  # 8 voxels, 4 shared
    assert dice(a, b) == pytest.approx(2 * 4 / 16)
    assert dice(a, a) == 1.0 and dice(a, np.zeros_like(a)) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0  # a clean scan called clean
    assert dice(a, np.zeros_like(a)) == 0.0  # any nodule called in a clean scan


def test_lesions_found_and_false_positives_of_a_hand_built_mask():
    labels = np.zeros((10,) * 3, np.uint8)
    labels[1:3, 1:3, 1:3] = 1          # found (one voxel overlaps)
    labels[6:8, 6:8, 6:8] = 2          # missed
    labels[1, 7, 1] = 3                # nodule 3 in two pieces: one nodule, found through its second piece
    labels[1, 9, 1] = 3
    pred = np.zeros_like(labels, bool)
    pred[2, 2, 2] = True               # in nodule 1
    pred[1, 9, 1] = True               # in nodule 3
    pred[5, 0, 9] = pred[6, 1, 9] = True  # one component (corner neighbours, 26-connectivity), no nodule: 1 FP
    pred[9, 9, 0] = True               # another false positive
    assert lesion_counts(pred, labels) == (3, 2, 2)
    scores = volume_scores(pred.astype(np.float32), labels)
    assert (scores["nodules"], scores["found"], scores["false_positives"]) == (3, 2, 2)
    assert scores["predicted_voxels"] == 5 and scores["reference_voxels"] == 18
    assert scores["dice"] == pytest.approx(2 * 2 / (5 + 18))


def test_summary_pools_lesions_and_bootstraps_over_volumes():
    per_volume = [{"dice": 0.5, "nodules": 3, "found": 3, "false_positives": 1},
                  {"dice": 1.0, "nodules": 0, "found": 0, "false_positives": 0},
                  {"dice": 0.0, "nodules": 1, "found": 0, "false_positives": 2}]
    s = summarise(per_volume, n_boot=300, level=0.9, seed=0)
    assert s["sensitivity"] == pytest.approx(3 / 4)  # pooled: 3 of 4 nodules, not the mean of 1 and 0
    assert s["dice"] == pytest.approx(0.5) and s["dice_nodules"] == pytest.approx(0.25)
    assert s["fp_per_volume"] == pytest.approx(1.0)
    assert (s["n_volumes"], s["n_volumes_with_nodules"], s["n_nodules"], s["n_found"]) == (3, 2, 4, 3)
    for key in ("dice", "dice_nodules", "sensitivity", "fp_per_volume"):
        ci = s["intervals"][key]
        assert ci["low"] <= s[key] <= ci["high"], key
    assert s["intervals"]["sensitivity"]["low"] >= 0.0 and s["intervals"]["sensitivity"]["high"] <= 1.0
    assert summarise(per_volume, n_boot=0, level=0.9, seed=0)["intervals"] == {}
    clean = summarise([{"dice": 1.0, "nodules": 0, "found": 0, "false_positives": 0}], n_boot=50, level=0.9, seed=0)
    assert clean["sensitivity"] is None and clean["dice_nodules"] is None and "sensitivity" not in clean["intervals"]


# --- the segmenter's loss, windows and sliding-window prediction ----------------------------------------------


def test_loss_of_an_empty_prediction_is_a_full_dice_loss():
    """Eq. (1) against its closed form: with a smoothing of 1 an empty prediction would score a Dice of
    1 / (Σg + 1), the easy gain that emptied every prediction; with :data:`SMOOTH` it scores ~0."""
    target = torch.zeros(1, 1, 4, 4, 4)
    target[0, 0, :2, :2, :2] = 1.0                                   # 8 nodule voxels of 64
    logits = torch.full_like(target, -30.0)                          # σ ≈ 1e-13: nothing predicted
    expected_bce = float(8 / 64 * 30.0)                              # -log σ(-30) ≈ 30 on the 8, ≈ 0 elsewhere
    dice_loss = 1 - SMOOTH / (8 + SMOOTH)
    assert float(loss_fn(logits, target)) == pytest.approx(expected_bce + dice_loss, rel=1e-5)
    perfect = torch.where(target > 0, 30.0, -30.0)
    assert float(loss_fn(perfect, target)) == pytest.approx(0.0, abs=1e-6)


def _case(size: int, nodule_at: tuple[int, int, int] | None) -> Case:
    mask = np.zeros((size,) * 3, np.uint8)
    if nodule_at is not None:
        mask[nodule_at] = 1
    return Case("c", np.random.default_rng(0).random((size,) * 3, dtype=np.float32), mask)


def test_windows_centred_on_nodules_hold_them_and_others_lie_anywhere():
    cases = [_case(24, (1, 22, 12)), _case(24, (20, 3, 3))]
    x, y = draw_batch([cases], 0, 16, seed=0, patch=8, foreground=1.0)
    assert x.shape == y.shape == (16, 1, 8, 8, 8)
    assert all(float(y[b].sum()) == 1.0 for b in range(16))          # every window holds its case's nodule voxel
    ramp = Case("ramp", np.arange(24**3, dtype=np.float32).reshape((24,) * 3), np.zeros((24,) * 3, np.uint8))
    corners = set()
    for step in range(40):   # no nodule: a window anywhere; its smallest value is its corner's, whatever the flips
        x, y = draw_batch([[ramp]], step, 1, seed=1, patch=8, foreground=1.0)
        assert x.shape == (1, 1, 8, 8, 8) and float(y.sum()) == 0.0
        corner = np.unravel_index(int(x.min()), (24,) * 3)
        assert max(corner) <= 16 and np.array_equal(np.sort(x.numpy().ravel()),
                                                     ramp.volume[tuple(slice(c, c + 8) for c in corner)].ravel())
        corners.add(corner)
    assert len(corners) > 30
    whole, _ = draw_batch([cases], 3, 2, seed=0)
    assert whole.shape == (2, 1, 24, 24, 24)


def test_window_starts_cover_the_axis_with_half_overlap():
    assert window_starts(48, 16) == [0, 8, 16, 24, 32]
    assert window_starts(20, 16) == [0, 4]
    assert window_starts(16, 16) == [0]
    w = window_weights(8)
    assert w.shape == (8, 8, 8) and w.max() == 1.0 and w.min() >= 1e-3
    assert np.allclose(w, w[::-1, ::-1, ::-1]) and w[3, 3, 3] == w.max()


class _Pointwise(torch.nn.Module):
    """A voxel-wise 'segmenter': logit = 8 (x - 0.5), so any window gives each voxel the same probability."""

    def forward(self, x):
        return 8 * (x - 0.5)


def test_sliding_window_prediction_stitches_windows_back_in_place():
    volume = np.random.default_rng(1).random((20, 24, 16), dtype=np.float32)
    exact = 1 / (1 + np.exp(-8 * (volume - 0.5)))
    assert np.allclose(predict(_Pointwise(), volume), exact, atol=1e-6)
    assert np.allclose(predict(_Pointwise(), volume, patch=8), exact, atol=1e-6)   # weighted means of one value
    assert np.allclose(predict(_Pointwise(), volume, patch=16), exact, atol=1e-6)


# --- the arms --------------------------------------------------------------------------------------------------


def test_the_real_arm_finds_the_nodules_well_above_chance(cohort, tmp_path):
    record = downstream_arm("real", real=cohort["real"], test=cohort["test"], settings=SETTINGS,
                            out=tmp_path / "real.json", n_boot=100)
    assert json.loads((tmp_path / "real.json").read_text())["dice"] == record["dice"]
    assert record["n_nodules"] >= 6 and record["n_real"] == 12 and record["n_synthetic"] == 0
    assert record["sensitivity"] >= 0.8, record
    assert record["dice_nodules"] >= 0.4 and record["dice_nodules"] > 10 * chance_dice(record), record
    assert record["fp_per_volume"] <= 1.0, record
    assert record["intervals"]["sensitivity"]["low"] <= record["sensitivity"]


def test_synthetic_arm_with_shuffled_masks_does_worse(cohort, tmp_path):
    """Masks that do not belong to their volumes (each one moved to the next volume) teach nothing about nodules."""
    right = cohort["synthetic"]
    shuffled = [(volume, right[(c + 1) % len(right)][1]) for c, (volume, _) in enumerate(right)]
    good = downstream_arm("synthetic", synthetic=right, test=cohort["test"], settings=SETTINGS, n_boot=0)
    bad = downstream_arm("synthetic", synthetic=shuffled, test=cohort["test"], settings=SETTINGS, n_boot=0)
    assert good["sensitivity"] >= 0.8 and good["dice_nodules"] >= 0.4, good
    assert bad["dice_nodules"] < good["dice_nodules"] - 0.2, (bad, good)


def test_the_same_seed_gives_the_same_numbers(cohort):
    settings = DownstreamConfig(enabled=True, steps=12, batch_size=2, lr=3e-3, channels=(8, 16), groups=4, seed=3)
    runs = [downstream_arm("combined", real=cohort["real"][:4], synthetic=cohort["synthetic"][:4],
                           test=cohort["test"][:3], settings=s, n_boot=50)
            for s in (settings, settings, replace(settings, seed=4))]
    first, again, other = ({k: v for k, v in r.items() if k != "cost"} for r in runs)
    assert first == again
    assert first["loss"] != other["loss"]  # another seed: other weights and batches
    assert first["n_real"] == first["n_synthetic"] == 4


def test_arms_refuse_missing_data_unknown_arms_and_other_grids(cohort, tmp_path):
    with pytest.raises(ValueError, match="arm 'both'"):
        downstream_arm("both", real=cohort["real"], test=cohort["test"], settings=SETTINGS)
    with pytest.raises(ValueError, match="synthetic volumes, and none"):
        downstream_arm("combined", real=cohort["real"], test=cohort["test"], settings=SETTINGS)
    save_volume(tmp_path / "big.nii.gz", np.zeros((8,) * 3, np.float32), AFFINE)
    with pytest.raises(ValueError, match="not on the grid"):
        downstream_arm("real", real=[(cohort["real"][0][0], tmp_path / "big.nii.gz")], test=cohort["test"],
                       settings=SETTINGS)
    save_volume(tmp_path / "small" / "0000.nii.gz", np.zeros((8,) * 3, np.float32), AFFINE)
    with pytest.raises(ValueError, match="nodules/0000.nii.gz does not exist"):
        sample_pairs([tmp_path / "small" / "0000.nii.gz"])


# --- report, variants table, plan -----------------------------------------------------------------------------


def _record(arm: str, model: str | None, sensitivity: float, low: float, high: float) -> dict:
    return {"arm": arm, "model": model, "trains_on": arm, "n_real": 3 if arm != "synthetic" else 0,
            "n_synthetic": 0 if arm == "real" else 5, "n_volumes": 4, "n_volumes_with_nodules": 3, "n_nodules": 5,
            "n_found": round(5 * sensitivity), "dice": 0.6, "dice_nodules": 0.5, "sensitivity": sensitivity,
            "fp_per_volume": 0.25, "intervals": {"sensitivity": {"low": low, "high": high},
                                                 "dice": {"low": 0.4, "high": 0.8}},
            "bootstrap": {"level": 0.95, "n_boot": 100}, "settings": to_dict(SETTINGS),
            "cost": {"train_seconds": 12.0, "device": {"type": "cpu", "name": "Test CPU", "processes": 1,
                                                       "threads": 2}}}


def test_report_section_shows_the_arms_side_by_side_and_reads_the_intervals():
    records = [_record("real", None, 0.8, 0.7, 0.9), _record("synthetic", "nodules", 0.4, 0.2, 0.6),
               _record("combined", "nodules", 0.8, 0.6, 1.0)]
    rows = downstream_rows(records)
    assert [r[0] for r in rows] == ["real", "synthetic", "combined"]
    assert rows[0][5] == "0.800 [95 % CI 0.700 to 0.900] (4 of 5)" and rows[1][1] == "nodules"
    assert "12 s, 60 steps on 1 × Test CPU (CPU, 2 threads)" == rows[0][7]
    assert verdicts(records) == ["nodules: by the sensitivity's intervals, the synthetic arm lies below the real arm; "
                                 "the combined arm does not differ credibly from the real arm."]
    section = downstream_section(records)
    assert section.title == "Downstream use" and "unconditional model (the paper's)" in section.text
    assert "(60 steps of 4 volumes, learning rate 0.003" in section.text
    for r in records:
        r["settings"] = to_dict(replace(SETTINGS, patch=8))
    assert "(60 steps of 4 8³ windows, 33% of them centred on a nodule, predicted window by window, learning" \
        in downstream_section(records).text


def test_variants_table_columns_come_from_the_arms(tmp_path):
    files = []
    for arm, model in (("real", None), ("synthetic", "m"), ("combined", "m")):
        files.append(tmp_path / f"{arm}.json")
        files[-1].write_text(json.dumps(_record(arm, model, 0.5, 0.25, 0.75)))
    row = _downstream([str(f) for f in files])
    assert row["downstream_real_sensitivity"] == 0.5 and row["downstream_combined_sensitivity_low"] == 0.25
    assert row["downstream_synthetic_dice_high"] == 0.8 and row["downstream_synthetic_fp_per_volume"] == 0.25
    assert _downstream([]) == {}


def test_plan_runs_the_stage_only_for_conditioned_models_with_it_enabled():
    base = {"name": "paper", "downstream": {"enabled": True},
            "variants": [{"name": "nodules", "model": {"condition": "nodules"}}]}
    cfg = from_dict(base)
    assert plan.downstream_models(cfg) == ["nodules"]
    assert plan.downstream_files(cfg) == ["results/downstream/real.json",
                                          "results/models/nodules/downstream/synthetic.json",
                                          "results/models/nodules/downstream/combined.json"]
    assert plan.downstream_files(cfg, "paper") == []
    rows = {r.variant: r.downstream for r in plan.table_rows(cfg)}
    assert rows["paper"] == () and rows["nodules"][0] == "results/downstream/real.json"
    assert plan.downstream_files(from_dict({**base, "downstream": {"enabled": False}})) == []
    assert plan.downstream_files(from_dict({"downstream": {"enabled": True}})) == []  # unconditional: no masks
    assert "--nodule-items results/splits/train.txt" in plan.downstream_condition_options(cfg)
    assert json.loads(plan.downstream_sample_settings(cfg, "nodules"))["sample"]["n"] == 100
    with pytest.raises(ValueError, match="downstream arm 'x'"):
        plan.downstream_file(cfg, "x")


def test_config_refuses_a_segmenter_that_does_not_fit_the_volumes():
    """Where the stage is enabled; a run without it keeps every size its model takes (20 with the default
    segmenter's factor 8)."""
    small = {"preprocess": {"size": 20}, "model": {"channels": [8, 16]}}
    with pytest.raises(ValueError, match=r"preprocess.size=20 .*downstream.channels"):
        from_dict({**small, "downstream": {"enabled": True, "channels": [8, 16, 32, 64]}})
    assert from_dict({**small, "downstream": {"channels": [8, 16, 32, 64]}}).preprocess.size == 20
    with pytest.raises(ValueError, match="downstream.groups=3"):
        from_dict({"downstream": {"groups": 3}})
    with pytest.raises(ValueError, match=r"downstream.patch=12 must be divisible by 8"):
        from_dict({"downstream": {"enabled": True, "channels": [8, 16, 32, 64], "patch": 12}})
    with pytest.raises(ValueError, match=r"downstream.patch=256 .* at most preprocess.size=128"):
        from_dict({"downstream": {"enabled": True, "patch": 256}})
    with pytest.raises(ValueError, match="downstream.foreground=1.5"):
        from_dict({"downstream": {"foreground": 1.5}})
    assert from_dict({"downstream": {"enabled": True, "patch": 64}}).downstream.patch == 64
