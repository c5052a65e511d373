"""Start a command under ``accelerate launch`` with one process per GPU, on one node or several.

``python -m ctdiff.launch --gpus G --threads T -- -m ctdiff.cli train ...`` runs on each node of the job
and builds the ``accelerate launch`` options from the environment (Accelerate runs through this interpreter,
never an ``accelerate`` found on ``PATH``):

* ``G = 0``: one CPU process (``--cpu``).
* one node: ``G`` processes (``--multi_gpu`` when ``G > 1``).
* several nodes of a SLURM allocation (``SLURM_NNODES > 1``; the train rule then starts this module once
  per node with ``srun --ntasks-per-node=1``): ``G × nodes`` processes, machine rank ``SLURM_NODEID``,
  main address the first host of ``SLURM_JOB_NODELIST`` (or ``MASTER_ADDR``), port ``MASTER_PORT`` or 29500.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list such as ``gpu[03-05,07],cpu1`` → ``gpu03``."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise ValueError(f"cannot read the SLURM node list {nodelist!r}")
    prefix, ranges = match.groups()
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def accelerate_options(gpus: int, threads: int, env: Mapping[str, str]) -> list[str]:
    """The ``accelerate launch`` options for ``gpus`` GPUs per node on this node of the job."""
    if gpus < 0:
        raise ValueError(f"gpus must be >= 0, got {gpus}")
    common = ["--num_cpu_threads_per_process", str(max(1, threads)), "--dynamo_backend", "no"]
    if gpus == 0:
        return ["--cpu", "--num_processes", "1", "--num_machines", "1", *common]
    nodes = int(env.get("SLURM_NNODES", "1"))
    if nodes <= 1:
        multi = ["--multi_gpu"] if gpus > 1 else []
        return [*multi, "--num_processes", str(gpus), "--num_machines", "1", *common]
    main = env.get("MASTER_ADDR") or first_host(env["SLURM_JOB_NODELIST"])
    return [
        "--multi_gpu", "--num_processes", str(gpus * nodes), "--num_machines", str(nodes),
        "--machine_rank", env["SLURM_NODEID"], "--main_process_ip", main,
        "--main_process_port", env.get("MASTER_PORT", "29500"), *common,
    ]


def command(gpus: int, threads: int, args: Sequence[str], env: Mapping[str, str],
            python: str = sys.executable) -> list[str]:
    """The whole ``accelerate launch`` command line, run by ``python`` (this interpreter): Accelerate's own
    command-line module, so a pipeline started as ``.venv/bin/snakemake`` without the venv on ``PATH``
    launches the venv's Accelerate (and, through it, the venv's Python) instead of looking ``accelerate`` up
    on ``PATH``."""
    return [python, "-m", "accelerate.commands.accelerate_cli", "launch",
            *accelerate_options(gpus, threads, env), *args]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ctdiff.launch", description=__doc__.split("\n")[0])
    p.add_argument("--gpus", type=int, required=True, help="GPUs per node (0 = CPU)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    p.add_argument("args", nargs=argparse.REMAINDER, help="-- then what accelerate launch runs")
    ns = p.parse_args(argv)
    args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
    cmd = command(ns.gpus, ns.threads, args, os.environ)
    if ns.dry_run:
        print(" ".join(cmd))
        return 0
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
