"""The accelerate launch command for CPU, one node and several SLURM nodes (dry runs), and the GPUs and port
each job gets."""
import subprocess
import sys
import threading
import time

import pytest

from ctdiff.launch import accelerate_options, claim_gpus, first_host, gpu_job, job_port


def opt(options, name):
    return options[options.index(name) + 1]


def test_cpu_and_single_node():
    cpu = accelerate_options(0, 2, {})
    assert "--cpu" in cpu and opt(cpu, "--num_processes") == "1"
    one = accelerate_options(1, 4, {})
    assert "--multi_gpu" not in one and opt(one, "--num_processes") == "1"
    two = accelerate_options(2, 8, {"SLURM_NNODES": "1"})
    assert "--multi_gpu" in two and opt(two, "--num_processes") == "2" and opt(two, "--num_machines") == "1"
    # each multi-GPU job on one host gets a free port of its own instead of 29500
    ports = {opt(accelerate_options(2, 8, {}), "--main_process_port") for _ in range(3)}
    assert "29500" not in ports and all(1024 <= int(p) < 65536 for p in ports)
    assert opt(accelerate_options(2, 8, {}, port=31337), "--main_process_port") == "31337"


def test_multi_node_from_slurm_environment():
    env = {"SLURM_NNODES": "2", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    options = accelerate_options(4, 8, env)
    assert opt(options, "--num_processes") == "8" and opt(options, "--num_machines") == "2"
    assert opt(options, "--machine_rank") == "1" and opt(options, "--main_process_ip") == "gpu07"
    assert opt(options, "--main_process_port") == "29500"
    env |= {"MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "31000"}
    options = accelerate_options(4, 8, env)
    assert opt(options, "--main_process_ip") == "10.0.0.5" and opt(options, "--main_process_port") == "31000"


def test_a_multi_node_port_is_the_same_on_every_node_and_differs_between_jobs():
    assert job_port({"SLURM_JOB_ID": "123456"}) == job_port({"SLURM_JOB_ID": "123456", "SLURM_NODEID": "1"})
    assert job_port({"SLURM_JOB_ID": "123456"}) != job_port({"SLURM_JOB_ID": "123457"})
    assert 20000 <= int(job_port({"SLURM_JOB_ID": "987654321"})) < 40000
    assert job_port({"SLURM_JOB_ID": "5", "MASTER_PORT": "31000"}) == "31000" and job_port({}) == "29500"


@pytest.mark.parametrize("nodelist, host", [("node1", "node1"), ("gpu[03-05,07]", "gpu03"),
                                             ("a[9],b[1-2]", "a9"), ("c-12,c-13", "c-12")])
def test_first_host(nodelist, host):
    assert first_host(nodelist) == host


def test_dry_run_prints_the_command():
    env = {"SLURM_NNODES": "2", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "n[1-2]", "PATH": ""}
    out = subprocess.run([sys.executable, "-m", "ctdiff.launch", "--gpus", "2", "--threads", "4", "--dry-run",
                          "--", "-m", "ctdiff.cli", "train", "--out", "x"],
                         capture_output=True, text=True, env=env, check=True).stdout.split()
    assert out[:4] == [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch"]
    assert out[-5:] == ["-m", "ctdiff.cli", "train", "--out", "x"]
    assert opt(out, "--machine_rank") == "0" and opt(out, "--num_processes") == "4"


def test_jobs_on_one_host_hold_different_gpus_and_wait_for_free_ones(tmp_path):
    """Snakemake counts the gpu resource but says nothing of which device: each job locks its own."""
    env = {"CTDIFF_GPU_LOCKS": str(tmp_path)}
    with claim_gpus(2, env, count=4) as first, claim_gpus(2, env, count=4) as second:
        assert {first, second} == {"0,1", "2,3"}
        got, said = [], []
        waiting = threading.Thread(target=lambda: got.append(_claim_once(env, said)))
        waiting.start()
        time.sleep(0.5)
        assert not got and said and "waiting for 1 free GPUs of 4" in said[0]  # all four are held
    waiting.join(timeout=10)
    assert got == ["0"]  # taken once the first two jobs let go
    with claim_gpus(4, env, count=4) as every:
        assert every == "0,1,2,3"


def _claim_once(env, said):
    with claim_gpus(1, env, count=4, poll_s=0.05, say=lambda text, **_: said.append(text)) as devices:
        return devices


def test_a_scheduler_s_gpus_are_taken_as_given_and_too_few_are_refused(tmp_path):
    env = {"CTDIFF_GPU_LOCKS": str(tmp_path), "CUDA_VISIBLE_DEVICES": "3,5"}
    with claim_gpus(2, env) as devices, claim_gpus(1, env) as again:  # SLURM's choice: no locks between jobs
        assert devices == "3,5" and again == "3"
    with pytest.raises(ValueError, match=r"asks for 3 GPUs, CUDA_VISIBLE_DEVICES gives it 2"):
        with claim_gpus(3, env):
            pass
    with pytest.raises(ValueError, match=r"asks for 2 GPUs \(resource gpu\), this host has 1"):
        with claim_gpus(2, {"CTDIFF_GPU_LOCKS": str(tmp_path)}, count=1):
            pass


def test_a_job_without_gpus_runs_on_the_cpu_whatever_the_host_has(tmp_path, monkeypatch):
    monkeypatch.setenv("CTDIFF_GPU_LOCKS", str(tmp_path))
    with gpu_job(0) as device:
        assert device == "cpu"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with gpu_job(1) as device:
        assert device == "cuda"
        import os

        assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"


def test_the_launcher_refuses_more_gpus_than_the_host_has_with_a_message(tmp_path):
    env = {"PATH": "", "CTDIFF_GPU_LOCKS": str(tmp_path), "CUDA_VISIBLE_DEVICES": "0"}
    proc = subprocess.run([sys.executable, "-m", "ctdiff.launch", "--gpus", "2", "--", "-c", "pass"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "ctdiff.launch: the job asks for 2 GPUs" in proc.stderr
    assert "Traceback" not in proc.stderr
