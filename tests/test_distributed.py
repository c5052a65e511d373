"""Training across processes and across interruptions, on the CPU.

* Two gloo ranks (`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2`) shard the global
  batch, end with identical parameters on both ranks, and match a one-process run of the same global batch.
* SIGKILL mid-run, then a rerun: training resumes from the last checkpoint (at most one interval lost) and
  ends at the requested step with a complete loss log.
* SIGTERM writes a checkpoint at the current step and exits with status 143; with two ranks, a SIGTERM that
  reaches one rank only stops both at the same step within a step or two, with one checkpoint and no hang; a
  SIGTERM to ctdiff.launch does the same, and the run resumes from that checkpoint bit for bit.
* A rank much slower than the other where they used to wait in a collective (building the data caches,
  drawing samples) no longer runs into the process group's timeout.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import SIZE, TINY_DIFFUSION, TINY_MODEL, bin_env, tiny_config, tiny_train_config, write_volumes
from ctdiff.training.checkpoint import read_checkpoint
from ctdiff.config import to_dict
from ctdiff.training.loop import train

TESTS = Path(__file__).parent
pytestmark = pytest.mark.slow  # every test starts training processes


def gloo_launch(out: Path, port: int, *args: str) -> list[str]:
    """``accelerate launch`` of tests/dist_train.py on two gloo ranks (CPU) writing to ``out``."""
    return ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
            str(TESTS / "dist_train.py"), str(out), *args]


GLOO_ENV = {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}


def test_two_gloo_ranks_match_one_process(tmp_path):
    write_volumes(tmp_path / "volumes", 6)
    proc = subprocess.run(gloo_launch(tmp_path, 29517), capture_output=True, text=True, env=bin_env() | GLOO_ENV,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    for name in r0["weights"]:
        torch.testing.assert_close(r0["weights"][name], r1["weights"][name], rtol=0, atol=0)

    files = sorted((tmp_path / "volumes").glob("*.nii.gz"))
    single = train(files, tmp_path / "one" / "model.pt", tmp_path / "one" / "log.csv", tmp_path / "one" / "state",
                   tiny_config(steps=5, batch_size=4, checkpoint_every=100), progress=False)
    for name, p in single.state_dict().items():
        torch.testing.assert_close(r0["weights"][name], p, rtol=1e-4, atol=1e-5)
    # Only the main process writes the checkpoint, and it is the ranks' EMA.
    assert read_checkpoint(tmp_path / "model.pt")["step"] == 5


def cli_train(tmp_path: Path, steps: int, every: int) -> list[str]:
    write_volumes(tmp_path / "volumes", 4)
    (tmp_path / "train.txt").write_text("".join(f"V{i:02d}\n" for i in range(4)))
    settings = {"model": to_dict(TINY_MODEL), "diffusion": to_dict(TINY_DIFFUSION),
                "train": to_dict(tiny_train_config(steps=steps, checkpoint_every=every, log_every=1)),
                "preprocess": {"size": SIZE, "spacing_mm": 3.0, "hu_window": [-1000, 400]}}
    return [sys.executable, "-m", "ctdiff.cli", "train", "--train-list", str(tmp_path / "train.txt"),
            "--volumes", str(tmp_path / "volumes"), "--settings", json.dumps(settings),
            "--state", str(tmp_path / "state"), "--out", str(tmp_path / "model.pt"),
            "--log-csv", str(tmp_path / "log.csv")]


def progress_steps(stderr: str, total: int) -> int:
    """The last step the progress bar reported in ``stderr`` (0 before the first)."""
    counts = re.findall(rf"(\d+)/{total} ", stderr)
    return int(counts[-1]) if counts else 0


def checkpoint_step(state: Path) -> int:
    """The step of the checkpoint ``state`` (-1 while there is none or it is being replaced)."""
    try:
        return read_checkpoint(state)["step"] if state.exists() else -1
    except ValueError:
        return -1


def wait_for_progress(log: Path, total: int, at_least: int, proc: subprocess.Popen, timeout: float = 180) -> int:
    """Wait until the process running ``proc`` reports (on its progress bar, written to ``log``) a step of at
    least ``at_least``; return that step. Fails when the process ends first or nothing comes in ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while (step := progress_steps(log.read_text(), total)) < at_least:
        assert proc.poll() is None, "training ended before it could be interrupted: " + log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no step {at_least} reported in {timeout} s: " + log.read_text()[-3000:]
        time.sleep(0.05)
    return step


def test_sigkill_then_rerun_resumes(tmp_path):
    steps, every = 4000, 10
    cmd = cli_train(tmp_path, steps, every)
    log, state = tmp_path / "stderr.txt", tmp_path / "state" / "state.pt"
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=bin_env())
        # Kill between two checkpoints, whatever the machine's speed: once the process has written the checkpoint
        # of step 2 * every (the state file) and then reported a later step (its progress bar).
        deadline = time.monotonic() + 120
        while (written := checkpoint_step(state)) < 2 * every:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        wait_for_progress(log, steps, written + 1, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    reached = progress_steps(log.read_text(), steps)
    saved = read_checkpoint(state)["step"]
    assert saved % every == 0 and reached - saved <= every, (saved, reached)
    assert not (tmp_path / "model.pt").exists()

    cmd = cli_train(tmp_path, saved + 2 * every, every)  # the rerun finishes two intervals later
    proc = subprocess.run(cmd, capture_output=True, text=True, env=bin_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from step {saved}" in proc.stdout + proc.stderr
    assert read_checkpoint(tmp_path / "model.pt")["step"] == saved + 2 * every
    log = pd.read_csv(tmp_path / "log.csv")
    assert list(log.step) == list(range(1, saved + 2 * every + 1))


def test_sigterm_checkpoints_and_exits_143(tmp_path):
    steps = 4000
    cmd = cli_train(tmp_path, steps, every=1000)
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=err, stderr=err, env=bin_env())
        wait_for_progress(log, steps, 3, proc, timeout=120)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    assert proc.returncode == 143, log.read_text()[-2000:]
    step = read_checkpoint(tmp_path / "state" / "state.pt")["step"]
    assert 3 <= step < steps
    assert f"checkpoint written at step {step}" in log.read_text()
    assert not (tmp_path / "model.pt").exists()


def test_sigterm_to_one_rank_stops_both_at_one_step(tmp_path):
    """SLURM signals each task by itself, so ranks can see SIGTERM at different steps. The signalled rank must
    not save and leave while the other enters the next step's all-reduce (which would wait for ever): both
    stop at the same step, within a step or two of the signal (not at the next log step, here the 1000th),
    the main process writes one checkpoint there, and both exit 143."""
    steps, log_every = 4000, 1000
    write_volumes(tmp_path / "volumes", 6)
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen(gloo_launch(tmp_path, 29518, str(steps), str(log_every)), stdout=err, stderr=err,
                                env=bin_env() | GLOO_ENV)
        wait_for_progress(log, steps, 2, proc, timeout=180)
        rank1 = int((tmp_path / "pid1").read_text())
        signalled_at = progress_steps(log.read_text(), steps)
        os.kill(rank1, signal.SIGTERM)  # rank 1 only; rank 0 learns of it at the next log step
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("the ranks did not stop together: " + log.read_text()[-3000:])
    text = log.read_text()
    assert proc.returncode != 0, text[-3000:]
    step = read_checkpoint(tmp_path / "state" / "state.pt")["step"]
    assert signalled_at <= step < log_every, (signalled_at, step)
    assert text.count(f"checkpoint written at step {step}") == 1, text[-3000:]  # printed by the main process
    assert not (tmp_path / "model.pt").exists()


def slow_launch(*args: str, port: int) -> subprocess.CompletedProcess:
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
           str(TESTS / "dist_slow.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=bin_env() | GLOO_ENV, timeout=300)


def test_a_slow_cache_build_on_one_rank_never_waits_in_a_collective(tmp_path):
    """The caches are built before the process group exists: the rank building them (8 s more here) used to
    leave the other in a barrier, which NCCL abandons after 10 minutes (here gloo, after 3 s)."""
    write_volumes(tmp_path / "volumes", 4)
    proc = slow_launch("train", str(tmp_path), port=29519)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("done") == 2
    assert read_checkpoint(tmp_path / "model.pt")["step"] == 2


def test_a_slow_rank_in_sampling_does_not_time_the_others_out(tmp_path):
    """The barrier after sampling waits as long as the slowest rank draws (its process group's timeout is
    ctdiff.sampling.generate's, not torch's default)."""
    files = write_volumes(tmp_path / "volumes", 4)
    train(files, tmp_path / "model.pt", tmp_path / "log.csv", tmp_path / "state", tiny_config(steps=1),
          progress=False)
    proc = slow_launch("sample", str(tmp_path), str(tmp_path / "model.pt"), port=29520)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "samples").glob("*.nii.gz")) == ["0000.nii.gz", "0001.nii.gz"]


def test_sigterm_to_the_launcher_checkpoints_on_every_rank_and_resumes_bit_for_bit(tmp_path):
    """ctdiff.launch passes SIGTERM to the workers (not to torch's launcher, which kills them 30 s later,
    mid-save), waits for them and exits 143; the checkpoint holds the stop step, and resuming from it to a
    later step gives the very weights of a run that was never stopped (two gloo ranks both times)."""
    steps = 4000
    stopped, straight = tmp_path / "stopped", tmp_path / "straight"
    for folder in (stopped, straight):
        write_volumes(folder / "volumes", 6)
    launcher = [sys.executable, "-m", "ctdiff.launch", "--gpus", "2", "--threads", "1", "--",
                str(TESTS / "dist_train.py")]
    log = tmp_path / "stopped.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen([*launcher, str(stopped), str(steps), "1000"], stdout=err, stderr=err,
                                env=bin_env() | GLOO_ENV)
        wait_for_progress(log, steps, 3, proc, timeout=180)
        proc.send_signal(signal.SIGTERM)  # the launcher alone
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("the launcher did not stop: " + log.read_text()[-3000:])
    text = log.read_text()
    assert proc.returncode == 143, text[-3000:]
    step = read_checkpoint(stopped / "state" / "state.pt")["step"]
    assert 3 <= step < 1000 and text.count(f"checkpoint written at step {step}") == 1, text[-3000:]
    assert not (stopped / "model.pt").exists()

    final = step + 3
    for folder in (stopped, straight):
        done = subprocess.run([*launcher, str(folder), str(final), "1000"], capture_output=True, text=True,
                              env=bin_env() | GLOO_ENV, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert (f"resuming from step {step}" in done.stdout + done.stderr) == (folder == stopped)
    a, b = (read_checkpoint(folder / "model.pt") for folder in (stopped, straight))
    assert a["step"] == b["step"] == final
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
