"""The SLURM profile, for real: the tiny config runs through profiles/slurm with every job going through
sbatch on a one-node SLURM cluster on this machine (started by tests/slurm/start.sh, which .ci/run calls).

The test profile is profiles/slurm/config.yaml with CPU-sized resources (no GPU here) and the squeue status
command (this cluster has no accounting database, so sacct cannot answer).
"""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import bin_env

REPO = Path(__file__).resolve().parents[1]


def slurm_ready() -> str | None:
    """None when a SLURM node is idle here, else why not."""
    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        return "SLURM client not installed (bash tests/slurm/start.sh installs and starts it)"
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if proc.returncode != 0 or not re.search(r"^(idle|mixed)", proc.stdout, flags=re.M):
        return f"no idle SLURM node (sinfo: {proc.stdout.strip() or proc.stderr.strip()})"
    return None


def test_profile_requests_gpus_for_heavy_steps_and_groups_ingestion():
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    for rule in ("train", "sample", "evaluate"):
        assert profile["set-resources"][rule]["gpu"] >= 1
    assert profile["groups"]["convert"] == profile["groups"]["preprocess"]
    assert profile["group-components"][profile["groups"]["convert"]] > 1


@pytest.mark.slow
@pytest.mark.skipif(slurm_ready() is not None, reason=str(slurm_ready()))
def test_tiny_workflow_through_sbatch(tmp_path):
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    gpu_rules = [rule for rule, res in profile["set-resources"].items() if res.get("gpu")]
    for rule in gpu_rules:  # this node has no GPU
        profile["set-resources"][rule] = {"gpu": 0, "mem_mb": 2000, "runtime": 30}
    profile["set-threads"] = {rule: 1 for rule in gpu_rules}
    profile["default-resources"]["mem_mb"] = 1000
    profile["cores"] = 2  # this node's CPUs
    profile.update({"slurm-status-command": "squeue", "slurm-no-account": True, "latency-wait": 5,
                    "retries": 0, "slurm-init-seconds-before-status-checks": 1, "seconds-between-status-checks": 2})
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "config.yaml").write_text(yaml.safe_dump(profile))
    work = tmp_path / "work"
    work.mkdir()
    env = bin_env()  # accelerate and snakemake of this env
    cmd = ["timeout", "-k", "30", "840", sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(work), "--profile", str(tmp_path / "profile"),
           "--configfile", str(REPO / "tests" / "tiny.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]

    results = work / "results"
    for path in ("figures/figure1.png", "report.html", "models/paper/metrics/main.json", "models/paper/train/model.pt"):
        assert (results / path).exists(), path
    job_ids = set(re.findall(r"SLURM jobid[^\d]*(\d+)", log, flags=re.I))
    assert len(job_ids) >= 8, log[-3000:]  # phantom, discover, ingest group(s), split, train, sample, ...
    # The controller saw each job (MinJobAge keeps finished jobs in its table).
    shown = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True).stdout
    seen = set(re.findall(r"JobId=(\d+)", shown))
    assert job_ids <= seen, (job_ids - seen)
    states = re.findall(r"JobId=(\d+) .*?JobState=(\w+)", shown)
    assert all(state == "COMPLETED" for job, state in states if job in job_ids), states
