"""The accelerate launch command for CPU, one node and several SLURM nodes (dry runs)."""
import subprocess
import sys

import pytest

from ctdiff.launch import accelerate_options, first_host


def opt(options, name):
    return options[options.index(name) + 1]


def test_cpu_and_single_node():
    cpu = accelerate_options(0, 2, {})
    assert "--cpu" in cpu and opt(cpu, "--num_processes") == "1"
    one = accelerate_options(1, 4, {})
    assert "--multi_gpu" not in one and opt(one, "--num_processes") == "1"
    two = accelerate_options(2, 8, {"SLURM_NNODES": "1"})
    assert "--multi_gpu" in two and opt(two, "--num_processes") == "2" and opt(two, "--num_machines") == "1"


def test_multi_node_from_slurm_environment():
    env = {"SLURM_NNODES": "2", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    options = accelerate_options(4, 8, env)
    assert opt(options, "--num_processes") == "8" and opt(options, "--num_machines") == "2"
    assert opt(options, "--machine_rank") == "1" and opt(options, "--main_process_ip") == "gpu07"
    assert opt(options, "--main_process_port") == "29500"
    env |= {"MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "31000"}
    options = accelerate_options(4, 8, env)
    assert opt(options, "--main_process_ip") == "10.0.0.5" and opt(options, "--main_process_port") == "31000"


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
