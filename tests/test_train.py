"""Training stage at tiny size: self-describing checkpoint, exact resume, refusal of bad data."""
import csv
import math
import shutil
from unittest import mock

import numpy as np
import pytest
import torch

from conftest import AFFINE, SIZE, TINY_DIFFUSION, TINY_MODEL, tiny_config, tiny_train_config, write_volumes
from ctdiff.training.checkpoint import checkpoint_config, load_for_sampling, read_checkpoint
from ctdiff.config import to_dict
from ctdiff.files import save_volume
from ctdiff.machine import describe
import ctdiff.training.loop
from ctdiff.machine import cpu_has_amx_bf16
from ctdiff.training.loop import _resume_key, resolve_precision, train
from ctdiff.training.step import batch_indices, learning_rate


def run(files, out, cfg, state=None):
    train(files, out / "model.pt", out / "log.csv", state or out / "state", cfg, progress=False)


def test_checkpoint_describes_itself(volumes, tmp_path):
    run(volumes, tmp_path, tiny_config())
    ckpt = read_checkpoint(tmp_path / "model.pt")
    assert ckpt["step"] == 6
    assert ckpt["config"]["model"]["channels"] == [4, 8]
    assert ckpt["config"]["data"]["size"] == SIZE
    assert np.allclose(ckpt["config"]["data"]["affine"], AFFINE)
    assert {"model", "ema", "optimizer", "version", "format"} <= set(ckpt)
    assert ckpt["machine"] == describe("cpu", 1)  # what ran it, for the variants table's cost columns
    # On disk: plain dicts (weights_only loading), the data section with the preprocessing settings.
    assert ckpt["config"]["data"] == {"size": SIZE, "files": [p.name for p in volumes],
                                      "affine": AFFINE.tolist(), "spacing_mm": 3.0, "hu_window": [-1000.0, 400.0]}
    assert ckpt["config"]["train"] == to_dict(tiny_config().train)
    model, schedule, cfg = load_for_sampling(tmp_path / "model.pt")
    assert schedule.timesteps == 20 and cfg.train.steps == ckpt["step"] == 6
    # Read back: the typed sections the run was given.
    assert cfg == checkpoint_config(ckpt["config"])
    assert (cfg.model, cfg.diffusion, cfg.train) == (TINY_MODEL, TINY_DIFFUSION, tiny_config().train)
    assert cfg.data.size == SIZE and cfg.data.spacing_mm == 3.0 and cfg.data.hu_window == (-1000.0, 400.0)
    assert np.array_equal(np.asarray(cfg.data.affine), AFFINE)
    assert cfg.data.files == tuple(p.name for p in volumes)
    for name, p in model.state_dict().items():
        assert torch.equal(p, ckpt["ema"][name])
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert all(math.isfinite(float(r["loss"])) for r in rows)


def test_resume_matches_uninterrupted_run(volumes, tmp_path):
    run(volumes, tmp_path / "straight", tiny_config(steps=6))
    # Same state folder: a 4-step run, then extended to 6 steps, resumes at step 4.
    state = tmp_path / "state"
    run(volumes, tmp_path / "first", tiny_config(steps=4), state=state)
    run(volumes, tmp_path / "second", tiny_config(steps=6), state=state)
    a = read_checkpoint(tmp_path / "straight" / "model.pt")
    b = read_checkpoint(tmp_path / "second" / "model.pt")
    for key in ("model", "ema"):
        for name in a[key]:
            torch.testing.assert_close(a[key][name], b[key][name], rtol=1e-5, atol=1e-6)
    log_a = list(csv.DictReader(open(tmp_path / "straight" / "log.csv")))
    log_b = list(csv.DictReader(open(tmp_path / "second" / "log.csv")))
    assert [r["step"] for r in log_a] == [r["step"] for r in log_b]
    assert np.allclose([float(r["loss"]) for r in log_a], [float(r["loss"]) for r in log_b], rtol=1e-4)


def test_state_from_other_settings_is_not_resumed(volumes, tmp_path):
    state = tmp_path / "state"
    run(volumes, tmp_path / "a", tiny_config(steps=4, lr=1e-2), state=state)
    run(volumes, tmp_path / "b", tiny_config(steps=4), state=state)
    run(volumes, tmp_path / "c", tiny_config(steps=4))
    b, c = read_checkpoint(tmp_path / "b" / "model.pt"), read_checkpoint(tmp_path / "c" / "model.pt")
    for name in b["model"]:
        torch.testing.assert_close(b["model"][name], c["model"][name])


def test_batches_are_deterministic_and_distinct():
    a = batch_indices(10, 4, seed=0, step=3)
    assert np.array_equal(a, batch_indices(10, 4, seed=0, step=3))
    assert len(set(a)) == 4
    assert not np.array_equal(a, batch_indices(10, 4, seed=0, step=4))


def test_bad_training_data_is_named(tmp_path):
    files = write_volumes(tmp_path / "ok", 3)
    wrong_shape = tmp_path / "bad_shape.nii.gz"
    save_volume(wrong_shape, np.zeros((SIZE, SIZE, SIZE + 1), np.float32), AFFINE)
    with pytest.raises(ValueError, match="bad_shape.nii.gz has shape"):
        run(files + [wrong_shape], tmp_path, tiny_config())
    hu = tmp_path / "in_hu.nii.gz"
    save_volume(hu, np.full((SIZE,) * 3, -1000.0, np.float32), AFFINE)
    with pytest.raises(ValueError, match="in_hu.nii.gz has values"):
        run(files + [hu], tmp_path, tiny_config())
    with pytest.raises(ValueError, match="empty"):
        run([], tmp_path, tiny_config())
    with pytest.raises(ValueError, match="fewer than train.batch_size"):
        run(files, tmp_path, tiny_config(batch_size=4))


def test_non_finite_loss_stops_without_final_checkpoint(volumes, tmp_path):
    with pytest.raises(FloatingPointError, match="training loss became"):
        run(volumes, tmp_path, tiny_config(lr=1e30, grad_clip=None, steps=50, checkpoint_every=1))
    assert not (tmp_path / "model.pt").exists()
    state = read_checkpoint(tmp_path / "state" / "state.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_nan_between_log_and_checkpoint_steps_is_never_saved(volumes, tmp_path):
    """A NaN on step 5 (log every 4, checkpoint every 3) and a SIGTERM right after it: the SIGTERM checkpoint
    and the step-6 checkpoint are refused, the state folder keeps step 3, and a rerun resumes from it."""
    import os
    import signal

    import ctdiff.training.loop as training

    real_step, calls = training.train_step, []

    def poisoned(model, ema, optimizer, accelerator, schedule, x0, *args, **kwargs):
        calls.append(len(calls) + 1)
        if len(calls) == 5:
            x0 = x0 * float("nan")  # loss, gradients and then the weights become NaN
            os.kill(os.getpid(), signal.SIGTERM)  # and the job is asked to stop at this step
        return real_step(model, ema, optimizer, accelerator, schedule, x0, *args, **kwargs)

    cfg = tiny_config(steps=12, log_every=4, checkpoint_every=3)
    with mock.patch.object(training, "train_step", poisoned):
        with pytest.raises(FloatingPointError, match="non-finite at step 5"):
            run(volumes, tmp_path, cfg)
    assert len(calls) == 5 and not (tmp_path / "model.pt").exists()
    state = read_checkpoint(tmp_path / "state" / "state.pt")
    assert state["step"] == 3
    assert all(torch.isfinite(v).all() for key in ("model", "ema") for v in state[key].values())
    # the rerun resumes from the last good state and matches an uninterrupted run
    run(volumes, tmp_path, cfg)
    run(volumes, tmp_path / "straight", cfg)
    assert_same_weights(read_checkpoint(tmp_path / "model.pt"), read_checkpoint(tmp_path / "straight" / "model.pt"),
                        rtol=0, atol=0)


def assert_same_weights(a, b, rtol=1e-4, atol=1e-5):
    for key in ("model", "ema"):
        for name in a[key]:
            torch.testing.assert_close(a[key][name], b[key][name], rtol=rtol, atol=atol)


def test_grad_accumulation_gives_the_same_update_and_may_change_on_resume(volumes, tmp_path, capfd):
    run(volumes, tmp_path / "plain", tiny_config(steps=6, batch_size=4))
    run(volumes, tmp_path / "accum", tiny_config(steps=6, batch_size=4, grad_accumulation=4))
    plain = read_checkpoint(tmp_path / "plain" / "model.pt")
    assert_same_weights(plain, read_checkpoint(tmp_path / "accum" / "model.pt"))
    # A run that switches from 1 to 2 micro-batches at step 4 resumes (it does not start afresh).
    state = tmp_path / "state"
    run(volumes, tmp_path / "first", tiny_config(steps=4, batch_size=4), state=state)
    capfd.readouterr()
    run(volumes, tmp_path / "second", tiny_config(steps=6, batch_size=4, grad_accumulation=2), state=state)
    assert "resuming from step 4" in capfd.readouterr().out
    assert_same_weights(plain, read_checkpoint(tmp_path / "second" / "model.pt"))
    # Sanity: the comparison can fail — another learning rate gives other weights.
    run(volumes, tmp_path / "other", tiny_config(steps=6, batch_size=4, lr=2e-3))
    with pytest.raises(AssertionError):
        assert_same_weights(plain, read_checkpoint(tmp_path / "other" / "model.pt"))


def test_grad_accumulation_must_split_the_batch(volumes, tmp_path):
    with pytest.raises(ValueError, match="train.grad_accumulation=3"):
        run(volumes, tmp_path, tiny_config(batch_size=4, grad_accumulation=3))


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile on the CPU needs a C++ compiler (.ci/run installs g++)")
@pytest.mark.slow
def test_compiled_training_matches_eager(volumes, tmp_path):
    """Compiled, with the recomputing GroupNorm → SiLU (an autograd Function torch.compile has to trace)."""
    run(volumes, tmp_path / "eager", tiny_config(steps=2, checkpoint_every=100))
    run(volumes, tmp_path / "compiled", tiny_config(steps=2, checkpoint_every=100, compile=True,
                                                          recompute_norm=True))
    eager, compiled = (read_checkpoint(tmp_path / name / "model.pt") for name in ("eager", "compiled"))
    assert set(compiled["model"]) == set(eager["model"])  # plain module keys, no "_orig_mod." prefix
    assert_same_weights(eager, compiled)


def test_recompute_norm_is_used_and_gives_the_same_weights(volumes, tmp_path):
    from ctdiff.model.norm_conv import _NormSiLUConv

    run(volumes, tmp_path / "plain", tiny_config(steps=2, checkpoint_every=100))
    with mock.patch.object(_NormSiLUConv, "apply", wraps=_NormSiLUConv.apply) as recomputing:
        run(volumes, tmp_path / "lean", tiny_config(steps=2, checkpoint_every=100, recompute_norm=True))
    assert recomputing.called
    assert_same_weights(*(read_checkpoint(tmp_path / name / "model.pt") for name in ("plain", "lean")))


def test_tensorboard_gets_the_logged_loss(volumes, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(volumes, tmp_path / "model.pt", tmp_path / "log.csv", tmp_path / "state", tiny_config(tensorboard=True),
          tensorboard_dir=tmp_path / "tb", progress=False)
    events = sorted((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    logged = [(e.step, e.value) for e in acc.Scalars("loss")]
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [s for s, _ in logged] == [int(r["step"]) for r in rows]
    assert np.allclose([v for _, v in logged], [float(r["loss"]) for r in rows], rtol=1e-6)


def test_tensorboard_without_a_folder_is_refused(volumes, tmp_path):
    with pytest.raises(ValueError, match="train.tensorboard"):
        run(volumes, tmp_path, tiny_config(tensorboard=True))


def test_auto_precision_resolves_from_the_device(monkeypatch):
    """auto is bf16 on a CUDA GPU with bf16 and on a CPU with AMX-BF16, fp32 elsewhere; fp32 and bf16 stay."""
    for amx, cpu_choice in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(ctdiff.training.loop, "cpu_has_amx_bf16", lambda amx=amx: amx)
        assert resolve_precision("auto", "cpu") == cpu_choice
        assert [resolve_precision(p, "cpu") for p in ("fp32", "bf16")] == ["fp32", "bf16"]
    # torch.cuda.is_bf16_supported() says yes on pre-Ampere cards too (emulated, slower than fp32): auto asks the
    # compute capability instead.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    for capability, cuda_choice in (((9, 0), "bf16"), ((8, 0), "bf16"), ((7, 5), "fp32"), ((7, 0), "fp32")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, c=capability, **k: c)
        assert resolve_precision("auto", "cuda") == cuda_choice, capability
    assert resolve_precision("auto", "mps") == "fp32"


def test_amx_bf16_is_read_from_the_cpu_capabilities(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True, "amx_bf16": True})
    assert cpu_has_amx_bf16()
    # AVX512-BF16 without AMX (e.g. AMD Zen 4) ran bf16 autocast slower than fp32: auto keeps fp32 there.
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True, "amx_bf16": False})
    assert not cpu_has_amx_bf16()


@pytest.fixture
def fresh_autocast():
    """Accelerate fixes mixed precision once per process; let this test's runs choose their own."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield AcceleratorState._reset_state
    AcceleratorState._reset_state()


def test_auto_precision_is_logged_recorded_and_resumed(volumes, tmp_path, monkeypatch, capfd, fresh_autocast):
    # Without AMX-BF16: auto says so, trains in fp32 and records fp32, the very run that fp32 gives.
    monkeypatch.setattr(ctdiff.training.loop, "cpu_has_amx_bf16", lambda: False)
    run(volumes, tmp_path / "auto", tiny_config(steps=4, precision="auto"))
    assert "train.precision: auto -> fp32 (cpu, AMX-BF16: no)" in capfd.readouterr().out
    auto = read_checkpoint(tmp_path / "auto" / "model.pt")
    assert auto["config"]["train"]["precision"] == "fp32"
    run(volumes, tmp_path / "fp32", tiny_config(steps=4))
    fp32 = read_checkpoint(tmp_path / "fp32" / "model.pt")
    assert all(torch.equal(auto["model"][k], fp32["model"][k]) for k in fp32["model"])

    # With AMX-BF16: bf16 autocast (other weights), recorded as bf16; a rerun with auto resumes it.
    monkeypatch.setattr(ctdiff.training.loop, "cpu_has_amx_bf16", lambda: True)
    fresh_autocast()
    state = tmp_path / "state"
    run(volumes, tmp_path / "bf16", tiny_config(steps=4, precision="auto"), state=state)
    assert "train.precision: auto -> bf16 (cpu, AMX-BF16: yes)" in capfd.readouterr().out
    bf16 = read_checkpoint(tmp_path / "bf16" / "model.pt")
    assert bf16["config"]["train"]["precision"] == "bf16"
    assert not all(torch.equal(bf16["model"][k], fp32["model"][k]) for k in fp32["model"])
    run(volumes, tmp_path / "longer", tiny_config(steps=6, precision="auto"), state=state)
    assert "resuming from step 4" in capfd.readouterr().out
    # A machine where auto means fp32 does not resume that bf16 state: it starts afresh.
    monkeypatch.setattr(ctdiff.training.loop, "cpu_has_amx_bf16", lambda: False)
    fresh_autocast()
    run(volumes, tmp_path / "elsewhere", tiny_config(steps=6, precision="auto"), state=state)
    assert "starting afresh" in capfd.readouterr().out


def test_learning_rate_schedules_match_their_closed_form():
    constant = tiny_train_config(steps=100, lr=2e-3)
    assert [learning_rate(constant, k) for k in (0, 50, 99)] == [2e-3] * 3
    cosine = tiny_train_config(steps=100, lr=2e-3, lr_schedule="cosine")
    assert learning_rate(cosine, 0) == 2e-3
    assert learning_rate(cosine, 25) == pytest.approx(1e-3 * (1 + math.sqrt(0.5)), rel=1e-12)
    assert learning_rate(cosine, 50) == pytest.approx(1e-3, rel=1e-12)
    # (1 + cos(π·99/100)) / 2 = sin²(π/200): the last step trains at a small but non-zero rate.
    assert learning_rate(cosine, 99) == pytest.approx(2e-3 * math.sin(math.pi / 200) ** 2, rel=1e-9)


def test_cosine_schedule_is_what_adam_uses_and_logs_and_ties_resume_to_steps(volumes, tmp_path, capfd):
    cfg = tiny_config(steps=6, lr=1e-2, lr_schedule="cosine")
    state = tmp_path / "state"
    run(volumes, tmp_path / "six", cfg, state=state)
    rows = list(csv.DictReader(open(tmp_path / "six" / "log.csv")))
    assert [float(r["lr"]) for r in rows] == pytest.approx([learning_rate(cfg.train, k) for k in range(6)])
    six = read_checkpoint(tmp_path / "six" / "model.pt")
    assert six["optimizer"]["param_groups"][0]["lr"] == pytest.approx(learning_rate(cfg.train, 5))
    # The rate of every step depends on train.steps: a longer cosine run does not resume the 6-step state ...
    capfd.readouterr()
    run(volumes, tmp_path / "eight", tiny_config(steps=8, lr=1e-2, lr_schedule="cosine"), state=state)
    assert "starting afresh" in capfd.readouterr().out
    run(volumes, tmp_path / "fresh", tiny_config(steps=8, lr=1e-2, lr_schedule="cosine"))
    assert_same_weights(*(read_checkpoint(tmp_path / name / "model.pt") for name in ("eight", "fresh")), rtol=0, atol=0)
    # ... and it is a different run from the constant rate.
    constant = read_checkpoint(run(volumes, tmp_path / "constant", tiny_config(steps=6, lr=1e-2)) or
                               tmp_path / "constant" / "model.pt")
    assert not all(torch.equal(six["model"][k], constant["model"][k]) for k in six["model"])


def test_state_from_before_the_lr_schedule_key_still_resumes():
    recorded = {"model": {}, "diffusion": to_dict(TINY_DIFFUSION), "train": to_dict(tiny_train_config())}
    older = dict(recorded, train={k: v for k, v in recorded["train"].items() if k != "lr_schedule"})
    assert _resume_key(older) == _resume_key(recorded)


def test_flow_objective_trains_records_itself_and_resumes(volumes, tmp_path):
    """diffusion.objective: flow trains (finite loss, a checkpoint recording objective and t distribution);
    a resumed flow run is step for step the uninterrupted one (its flow times come from (seed, step, position))."""
    from dataclasses import replace

    flow_cfg = replace(tiny_config(steps=4), diffusion=replace(TINY_DIFFUSION, objective="flow", flow_t="uniform"))
    run(volumes, tmp_path / "straight", flow_cfg)
    ckpt = read_checkpoint(tmp_path / "straight" / "model.pt")
    assert ckpt["config"]["diffusion"] | {"objective": "flow", "flow_t": "uniform"} == ckpt["config"]["diffusion"]
    assert {"flow_t_location", "flow_t_scale"} <= set(ckpt["config"]["diffusion"])
    _, _, cfg = load_for_sampling(tmp_path / "straight" / "model.pt")
    assert cfg.diffusion.objective == "flow" and cfg.diffusion.flow_t == "uniform"
    assert all(math.isfinite(float(r["loss"])) for r in csv.DictReader(open(tmp_path / "straight" / "log.csv")))
    state = tmp_path / "state"
    run(volumes, tmp_path / "first", replace(flow_cfg, train=replace(flow_cfg.train, steps=2)), state=state)
    run(volumes, tmp_path / "second", flow_cfg, state=state)
    a, b = read_checkpoint(tmp_path / "straight" / "model.pt"), read_checkpoint(tmp_path / "second" / "model.pt")
    for name in a["ema"]:
        torch.testing.assert_close(a["ema"][name], b["ema"][name], rtol=1e-5, atol=1e-6)
    # another objective is other settings: not resumed
    run(volumes, tmp_path / "eps", tiny_config(steps=4), state=state)
    eps = read_checkpoint(tmp_path / "eps" / "model.pt")
    assert eps["config"]["diffusion"]["objective"] == "eps"
    assert not all(torch.equal(eps["ema"][k], a["ema"][k]) for k in a["ema"])


def test_state_from_before_the_flow_keys_still_resumes():
    """A checkpoint written before diffusion.flow_t* (and before objective) reads as eps with the defaults."""
    recorded = {"model": {}, "diffusion": to_dict(TINY_DIFFUSION), "train": to_dict(tiny_train_config())}
    older = dict(recorded, diffusion={k: v for k, v in recorded["diffusion"].items()
                                      if k not in ("objective", "flow_t", "flow_t_location", "flow_t_scale")})
    assert _resume_key(older) == _resume_key(recorded)


def test_training_steps_keep_the_compiled_ddp_wrapper_and_move_the_ema(tmp_path, fresh_autocast):
    """The EMA reads the optimizer's parameters: accelerate's unwrap_model on torch.compile(DDP(net)) pointed the
    compiled wrapper at the plain module, so from the second step on no_sync found no DDP and every micro-batch
    all-reduced. Compiled with the eager backend (no C compiler needed) over a one-process gloo group."""
    import copy

    import torch.distributed as dist
    from accelerate import Accelerator
    from torch.nn.parallel import DistributedDataParallel

    from ctdiff.model.build import build_model
    from ctdiff.diffusion.schedule import build_schedule
    from ctdiff.training.step import draw_noise, train_step

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        net = build_model(TINY_MODEL)
        ema = copy.deepcopy(net).requires_grad_(False)
        expected = [p.clone() for p in ema.parameters()]
        ddp = DistributedDataParallel(net)
        model = torch.compile(ddp, backend="eager")
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
        accelerator, schedule = Accelerator(cpu=True), build_schedule(TINY_DIFFUSION)
        x0 = torch.rand(2, 1, SIZE, SIZE, SIZE) * 2 - 1
        for step in range(2):
            t, noise = draw_noise(0, step, range(2), (1, SIZE, SIZE, SIZE), TINY_DIFFUSION)
            train_step(model, ema, optimizer, accelerator, schedule, x0, t, noise, micro_batches=2, ema_decay=0.5)
            assert model._orig_mod is ddp, step  # no_sync (looked up through it) still finds DDP's
            expected = [0.5 * e + 0.5 * p.detach() for e, p in zip(expected, net.parameters())]
            for e, want in zip(ema.parameters(), expected):  # the EMA follows the trained weights
                torch.testing.assert_close(e, want)
    finally:
        dist.destroy_process_group()
