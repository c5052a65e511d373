"""The membership-inference audit: an overfit model is caught, two halves of the held-out set are not told
apart, another model's checkpoint is refused, and the statistics match independent computations."""
import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from jsonschema import Draft202012Validator

from conftest import AFFINE, SIZE, tiny_config
from ctdiff.config import PrivacyConfig, from_dict
from ctdiff.diffusion import flow
from ctdiff.diffusion.schedule import make_schedule, training_loss
from ctdiff.files import save_volume
from ctdiff.metrics import keys, membership, roc
from ctdiff.metrics.membership import (
    attack_scores,
    check_same_model,
    draw_sides,
    make_probe,
    membership_audit,
    t_errors,
    volume_losses,
)
from ctdiff.model import representation
from ctdiff.model.build import build_model
from ctdiff.training.checkpoint import load_for_sampling
from ctdiff.training.loop import train

#: T = 20 (the tiny diffusion): t-error time 0.3 is timestep 6, reached in 3 DDIM steps of 2.
SETTINGS = PrivacyConfig(t_error_time=0.3, t_error_steps=3, batch_size=3)


def write(folder: Path, prefix: str, n: int, seed: int) -> list[Path]:
    """``n`` random 8³ volumes in [0, 1] named ``{prefix}{i}.nii.gz`` (white noise: nothing to generalise from,
    so a model that fits them can only memorise)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        paths.append(folder / f"{prefix}{i:02d}.nii.gz")
        save_volume(paths[-1], rng.random((SIZE,) * 3, dtype=np.float32), AFFINE)
    return paths


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    """An eps model trained until it overfits 4 volumes (60 full-batch steps), its config, the 4 volumes and 32
    held-out ones."""
    root = tmp_path_factory.mktemp("membership")
    members, heldout = write(root, "T", 4, 0), write(root, "H", 32, 1)
    cfg = tiny_config(steps=60, batch_size=4, ema_decay=0.9, checkpoint_every=1000, log_every=20)
    train(members, root / "model.pt", root / "log.csv", root / "state", cfg, progress=False)
    return root / "model.pt", cfg, members, heldout


def test_an_overfit_model_is_caught_at_low_false_positive_rates(overfit, tmp_path):
    checkpoint, cfg, members, heldout = overfit
    record = membership_audit(checkpoint, members, heldout, tmp_path / "membership.json", SETTINGS, expected=cfg)
    loss = record["attacks"]["loss"]
    assert record["n_per_side"] == 4 and record["n_requested"] == 500 and len(record["non_members"]) == 4
    assert loss["auc"] >= 0.95 and loss["intervals"]["auc"]["low"] >= 0.8, loss
    # 4 held-out volumes: at 1 % FPR no false positive is allowed, and still the members are caught
    assert loss["tpr_at_fpr_1pct"] >= 0.75 and loss["tpr_at_fpr_10pct"] >= 0.75, loss
    assert record["strongest_auc"] >= loss["auc"] and record["strongest"] in ("loss", "t_error")
    assert record["cost"]["network_evaluations_per_volume"] == 5 + 3 + 2
    assert json.loads((tmp_path / "membership.json").read_text()) == json.loads(json.dumps(record))
    schema = keys.schema()  # what evaluate copies into metrics.json follows its schema
    Draft202012Validator({**schema["properties"]["membership"], "$defs": schema["$defs"]}).validate(
        json.loads(json.dumps(record)))


def test_two_halves_of_the_held_out_set_are_not_told_apart(overfit):
    """Neither half was trained on: both attacks' intervals cover 0.5 (16 volumes against 16)."""
    checkpoint, cfg, _, heldout = overfit
    model, schedule, recorded = load_for_sampling(checkpoint)
    probe = make_probe(SETTINGS, "eps", schedule.timesteps, representation.network_shape("voxels", SIZE))
    per_time, t_error = attack_scores(membership.conditioned(model, recorded), schedule, probe, heldout, size=SIZE,
                                      representation_name="voxels")
    halves = np.random.default_rng(0).permutation(32)
    a, b = halves[:16], halves[16:]
    for score in (-per_time.mean(1), -t_error):
        result = roc.separation(score[a], score[b], n_boot=500, seed=0)
        assert result["intervals"]["auc"]["low"] <= 0.5 <= result["intervals"]["auc"]["high"], result


def test_a_checkpoint_of_another_model_is_refused(overfit):
    checkpoint, cfg, members, heldout = overfit
    with pytest.raises(ValueError, match=r"not the model audited.*\n.*trained on 4 volumes"):
        membership_audit(checkpoint, heldout[:4], heldout[4:], None, SETTINGS, expected=cfg)  # another training set
    with pytest.raises(ValueError, match=r"held-out volumes are among its training files"):
        membership_audit(checkpoint, members, members[:2] + heldout, None, SETTINGS)
    other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, channels=(4, 4)),
                                train=dataclasses.replace(cfg.train, lr=1e-4, log_every=7))  # log_every: no weight
    with pytest.raises(ValueError, match=r"model.channels: \[4, 8\] in the checkpoint, \[4, 4\] in the model "
                                         r"audited\n  train.lr: 0.001 in the checkpoint, 0.0001") as err:
        membership_audit(checkpoint, members, heldout, None, SETTINGS, expected=other)
    assert "log_every" not in str(err.value)


def test_same_seed_same_numbers_whatever_the_batch(overfit):
    checkpoint, cfg, members, heldout = overfit
    a = membership_audit(checkpoint, members, heldout, None, SETTINGS, n_boot=50)
    b = membership_audit(checkpoint, members, heldout, None, dataclasses.replace(SETTINGS, batch_size=8), n_boot=50)
    assert a["members"] == b["members"] and a["non_members"] == b["non_members"]
    for x, y in zip(a["per_volume"], b["per_volume"]):
        assert x["volume"] == y["volume"]
        np.testing.assert_allclose([x["loss"], x["t_error"]], [y["loss"], y["t_error"]], rtol=1e-4)  # float32 batches
    assert a["attacks"]["loss"]["intervals"] == b["attacks"]["loss"]["intervals"]
    c = membership_audit(checkpoint, members, heldout, None, dataclasses.replace(SETTINGS, seed=1), n_boot=0)
    assert c["non_members"] != a["non_members"] and "intervals" not in c["attacks"]["loss"]


@pytest.mark.parametrize("objective, rep", [("eps", "voxels"), ("v", "voxels"), ("flow", "voxels"),
                                            ("flow", "wavelet"), ("eps", "wavelet")])
def test_the_loss_is_the_training_loss_of_each_volume(objective, rep):
    """Eq. (1) per volume and time equals the training objective (schedule.training_loss, flow.training_loss)
    of that volume alone with the same timestep and noise."""
    torch.manual_seed(0)
    cfg = tiny_config().model
    net = build_model(dataclasses.replace(cfg, representation=rep)).eval()
    s = make_schedule(20)
    shape = representation.network_shape(rep, SIZE)
    probe = make_probe(SETTINGS, objective, 20, shape)
    x0 = torch.rand(3, *shape) * 2 - 1
    with torch.no_grad():
        got = volume_losses(net, s, probe, x0)
        for b, k in itertools.product(range(3), range(len(probe.times))):
            noise, t = probe.noise[k][None], probe.network_times[k]
            if objective == "flow":
                want = flow.training_loss(net, x0[b : b + 1], torch.tensor([t]), noise, 20)
            else:
                want = training_loss(s, net, x0[b : b + 1], objective=objective, t=torch.tensor([t]), noise=noise)
            torch.testing.assert_close(got[b, k], want, rtol=1e-5, atol=1e-6)
    assert probe.network_times == ((0.02, 0.05, 0.1, 0.2, 0.4) if objective == "flow" else (0, 1, 2, 4, 8))


@pytest.mark.parametrize("objective", ["eps", "flow"])
def test_the_round_trip_closes_exactly_for_a_prediction_that_ignores_x(objective):
    """A network whose ε (or velocity) does not depend on x makes each deterministic step exactly invertible
    (DDIM: x̂0 and ε are carried unchanged; Euler: the same velocity back and forth): t-error 0. A prediction
    that grows with x does not."""
    s = make_schedule(20)
    probe = make_probe(SETTINGS, objective, 20, (1, 4, 4, 4))
    x0 = torch.rand(2, 1, 4, 4, 4) * 2 - 1
    const = torch.randn(1, 1, 4, 4, 4)
    assert t_errors(lambda x, t: const.expand_as(x), s, probe, x0).abs().max() < 1e-10
    assert t_errors(lambda x, t: 3 * x, s, probe, x0).min() > 1e-4
    assert probe.grid == pytest.approx((0.0, 0.1, 0.2, 0.3) if objective == "flow" else (0, 2, 4, 6))


def _brute_auc(pos, neg):
    return np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg])


def _brute_tpr(pos, neg, alpha):
    """The best TPR over every threshold of the empirical ROC whose FPR is at most alpha."""
    best = 0.0
    for tau in [np.inf, *pos, *neg]:
        fpr = np.mean(np.asarray(neg) >= tau)
        if fpr <= alpha + 1e-12:
            best = max(best, float(np.mean(np.asarray(pos) >= tau)))
    return best


def test_auc_and_tpr_match_a_pairwise_count_ties_included():
    rng = np.random.default_rng(3)
    for n1, n0 in ((5, 5), (7, 30), (40, 120)):
        pos, neg = rng.integers(0, 6, n1).astype(float) + 0.5, rng.integers(0, 5, n0).astype(float)  # many ties
        neg[:2] = pos[:2]
        assert roc.auc(pos, neg) == pytest.approx(_brute_auc(pos, neg), abs=1e-12)
        for alpha in (0.0, 0.01, 0.1, 0.5):
            assert roc.tpr_at_fpr(pos, neg, alpha) == pytest.approx(_brute_tpr(pos, neg, alpha)), (n1, n0, alpha)
    assert roc.auc([2, 3], [0, 1]) == 1.0 and roc.auc([0, 1], [2, 3]) == 0.0 and roc.auc([1, 1], [1, 1]) == 0.5
    # one negative of 0..9 may score above the threshold, which sits just above 8: 8.5 and 9.5 are caught
    assert roc.tpr_at_fpr(np.arange(10) + 0.5, np.arange(10), 0.1) == 0.2


def test_equal_sides_are_drawn_by_seed():
    a, b = draw_sides(30, 7, 500, seed=2)
    assert len(a) == len(b) == 7 and len(set(a)) == 7 and (np.diff(a) > 0).all() and b.tolist() == list(range(7))
    assert draw_sides(30, 7, 5, seed=2)[0].tolist() == draw_sides(30, 7, 5, seed=2)[0].tolist()
    with pytest.raises(ValueError, match="needs training and held-out volumes"):
        draw_sides(3, 0, 5, seed=0)


def test_config_checks_name_the_privacy_key():
    with pytest.raises(ValueError, match=r"privacy.t_error_time=0.01 is DDPM timestep 0 of diffusion.timesteps=50"):
        from_dict({"diffusion": {"timesteps": 50}, "privacy": {"t_error_time": 0.01}})
    from_dict({"diffusion": {"timesteps": 50, "objective": "flow"}, "sample": {"sampler": "euler", "steps": 5},
               "privacy": {"t_error_time": 0.01}})  # flow times are continuous
    # T = 50: the t-error's timestep is 5, so its 10 steps become 5, one per timestep
    assert make_probe(PrivacyConfig(), "eps", 50, (1, 2, 2, 2)).grid == (0, 1, 2, 3, 4, 5)
    with pytest.raises(ValueError, match=r"privacy.times=\[0.5, 1.0\] must be"):
        from_dict({"privacy": {"times": [0.5, 1.0]}})


def test_check_same_model_compares_sets_not_order(overfit):
    checkpoint, cfg, members, heldout = overfit
    _, _, recorded = load_for_sampling(checkpoint)
    check_same_model(recorded, [p.name for p in reversed(members)], [p.name for p in heldout], expected=cfg)
