"""Start a command under ``accelerate launch`` with one process per GPU, on one node or several, on GPUs of
its own, and stop it so that a SIGTERM still gets its checkpoint written.

``python -m ctdiff.launch --gpus G --threads T -- -m ctdiff.cli train ...`` runs on each node of the job
and builds the ``accelerate launch`` options from the environment (Accelerate runs through this interpreter,
never an ``accelerate`` found on ``PATH``):

* ``G = 0``: one CPU process (``--cpu``).
* one node: ``G`` processes (``--multi_gpu`` when ``G > 1``) on a free port, so two jobs on one host never
  meet on 29500.
* several nodes of a SLURM allocation (``SLURM_NNODES > 1``; the train rule then starts this module once
  per node with ``srun --ntasks-per-node=1``): ``G × nodes`` processes, machine rank ``SLURM_NODEID``,
  main address the first host of ``SLURM_JOB_NODELIST`` (or ``MASTER_ADDR``), port ``MASTER_PORT``, else
  one derived from ``SLURM_JOB_ID`` (every node derives the same), else 29500.
* ``ACCELERATE_USE_CPU=1`` with ``G > 1``: ``G`` gloo processes on the CPU, a stand-in for a ``G``-GPU job.

Which GPUs (:func:`claim_gpus`): where ``CUDA_VISIBLE_DEVICES`` is already set (SLURM sets it to the GPUs it
gave the job) the job takes those. Otherwise (a workstation, where Snakemake counts the ``gpu`` resource
but says nothing of which device) the launcher takes ``G`` GPUs that no other ctdiff job on this host holds,
each held by an exclusive ``flock`` on a file in ``CTDIFF_GPU_LOCKS`` (default ``$TMPDIR/ctdiff-gpus``) for as
long as the job runs, and waits while fewer are free; the kernel frees a lock when its holder dies, however
it dies. The evaluate rule, which runs in Snakemake's own process, claims its GPU the same way
(:func:`gpu_job`).

Stopping (SIGTERM, what SLURM sends before a time limit or preemption): the launcher passes it to the
worker processes themselves, not to Accelerate's launcher, which would kill them 30 s after passing it on
(``TORCH_ELASTIC_SHUTDOWN_TIMEOUT``, which it reads where SLURM signals it directly, is raised to the same
grace). The workers agree on a step, write the checkpoint and leave together (:mod:`ctdiff.training.loop`); the
launcher waits for them up to ``--grace`` seconds (default 900: a 2.5 GB checkpoint on a slow disk), then
kills what is left, and exits with 143.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

#: Seconds the launcher waits for the workers after a SIGTERM before it kills them.
GRACE_S = 900


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list such as ``gpu[03-05,07],cpu1`` → ``gpu03``."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise ValueError(f"cannot read the SLURM node list {nodelist!r}")
    prefix, ranges = match.groups()
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def free_port() -> int:
    """A TCP port no process on this host listens on now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def job_port(env: Mapping[str, str]) -> str:
    """The main process's port of a job spanning several nodes, the same on every node: ``MASTER_PORT``, else
    one of 20000–39999 derived from ``SLURM_JOB_ID`` (two jobs sharing a node rarely meet), else 29500."""
    if env.get("MASTER_PORT"):
        return env["MASTER_PORT"]
    if env.get("SLURM_JOB_ID", "").isdigit():
        return str(20000 + int(env["SLURM_JOB_ID"]) % 20000)
    return "29500"


def accelerate_options(gpus: int, threads: int, env: Mapping[str, str], port: int | None = None) -> list[str]:
    """The ``accelerate launch`` options for ``gpus`` GPUs per node on this node of the job; ``port`` is the main
    process's port on one node (None: :func:`free_port`)."""
    if gpus < 0:
        raise ValueError(f"gpus must be >= 0, got {gpus}")
    common = ["--num_cpu_threads_per_process", str(max(1, threads)), "--dynamo_backend", "no"]
    if gpus == 0:
        return ["--cpu", "--num_processes", "1", "--num_machines", "1", *common]
    nodes = int(env.get("SLURM_NNODES", "1"))
    if nodes <= 1:
        multi = ["--multi_gpu", "--main_process_port", str(port or free_port())] if gpus > 1 else []
        return [*multi, "--num_processes", str(gpus), "--num_machines", "1", *common]
    main = env.get("MASTER_ADDR") or first_host(env["SLURM_JOB_NODELIST"])
    return [
        "--multi_gpu", "--num_processes", str(gpus * nodes), "--num_machines", str(nodes),
        "--machine_rank", env["SLURM_NODEID"], "--main_process_ip", main,
        "--main_process_port", job_port(env), *common,
    ]


def command(gpus: int, threads: int, args: Sequence[str], env: Mapping[str, str],
            python: str = sys.executable, port: int | None = None) -> list[str]:
    """The whole ``accelerate launch`` command line, run by ``python`` (this interpreter): Accelerate's own
    command-line module, so a pipeline started as ``.venv/bin/snakemake`` without the venv on ``PATH``
    launches the venv's Accelerate (and, through it, the venv's Python) instead of looking ``accelerate`` up
    on ``PATH``."""
    return [python, "-m", "accelerate.commands.accelerate_cli", "launch",
            *accelerate_options(gpus, threads, env, port), *args]


def lock_dir(env: Mapping[str, str]) -> Path:
    """Where the GPU locks of this host live: ``CTDIFF_GPU_LOCKS``, else ``ctdiff-gpus`` in the temp folder."""
    return Path(env.get("CTDIFF_GPU_LOCKS") or Path(tempfile.gettempdir()) / "ctdiff-gpus")


def host_gpu_count() -> int:
    """The CUDA devices of this host (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@contextlib.contextmanager
def claim_gpus(n: int, env: Mapping[str, str], *, count: int | None = None, poll_s: float = 5.0,
               say=print) -> Iterator[str]:
    """Hold ``n`` GPUs of this host for the block; yields their ``CUDA_VISIBLE_DEVICES`` value.

    Set ``CUDA_VISIBLE_DEVICES`` (a scheduler's choice) is taken as it is: its first ``n`` entries. Otherwise
    ``n`` of the ``count`` devices (default :func:`host_gpu_count`) that no other holder has locked, waiting
    ``poll_s`` between tries while fewer are free. ``ValueError`` when the host has fewer than ``n``."""
    if n <= 0:
        yield ""
        return
    given = env.get("CUDA_VISIBLE_DEVICES")
    if given is not None and given.strip():
        devices = [d.strip() for d in given.split(",") if d.strip()]
        if len(devices) < n:
            raise ValueError(f"the job asks for {n} GPUs, CUDA_VISIBLE_DEVICES gives it {len(devices)} ({given})")
        yield ",".join(devices[:n])
        return
    total = host_gpu_count() if count is None else count
    if total < n:
        raise ValueError(f"the job asks for {n} GPUs (resource gpu), this host has {total}")
    folder = lock_dir(env)
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):
        folder.chmod(0o1777)  # every user's ctdiff jobs on this host share the locks
    waited = False
    while True:
        held = []
        for device in range(total):
            fd = os.open(folder / f"gpu{device}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            held.append((device, fd))
            if len(held) == n:
                break
        if len(held) == n:
            break
        for _, fd in held:
            os.close(fd)
        if not waited:
            say(f"waiting for {n} free GPUs of {total} (held by other ctdiff jobs; locks in {folder})", flush=True)
            waited = True
        time.sleep(poll_s)
    try:
        yield ",".join(str(device) for device, _ in held)
    finally:
        for _, fd in held:
            os.close(fd)


@contextlib.contextmanager
def gpu_job(n: int, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """For work run in this very process (the evaluate rule): with ``n`` GPUs claimed (:func:`claim_gpus`) and
    made the only visible ones, yields ``"cuda"``; with ``n = 0`` yields ``"cpu"``, whatever the host has.
    Call before anything touches CUDA in this process."""
    env = os.environ if env is None else env
    if n <= 0:
        yield "cpu"
        return
    with claim_gpus(n, env) as devices:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices
        yield "cuda"


def _signal_workers(launcher: int, signum: int) -> None:
    """Send ``signum`` to the worker processes: the children of the ``accelerate launch`` process ``launcher``
    (Accelerate runs one worker as its child, or torch's elastic agent in its own process, whose children
    the workers are)."""
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(launcher).children():
            with contextlib.suppress(psutil.NoSuchProcess):
                child.send_signal(signum)


def _kill_tree(launcher: int) -> None:
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(launcher)
        for process in [*root.children(recursive=True), root]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


def run(cmd: Sequence[str], env: Mapping[str, str], grace_s: float = GRACE_S) -> int:
    """Run ``cmd`` (an ``accelerate launch`` command) and return its exit status; a SIGTERM to this process goes
    to the workers, which get ``grace_s`` seconds to checkpoint and leave before the rest is killed (status
    143 then)."""
    env = {**env, "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(int(grace_s))}
    proc = subprocess.Popen(list(cmd), env=env)
    deadline = None

    def on_sigterm(signum, frame) -> None:
        nonlocal deadline
        if deadline is None:
            deadline = time.monotonic() + grace_s
        _signal_workers(proc.pid, signum)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        while True:
            try:
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if deadline is not None and time.monotonic() > deadline:
                    print(f"the workers did not stop within {grace_s:.0f} s of SIGTERM: killing them", flush=True)
                    _kill_tree(proc.pid)
                    code = proc.wait()
                    break
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 143 if deadline is not None and code != 0 else code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ctdiff.launch", description=__doc__.split("\n")[0])
    p.add_argument("--gpus", type=int, required=True, help="GPUs per node (0 = CPU)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    p.add_argument("--grace", type=float, default=GRACE_S,
                   help=f"seconds the workers get to checkpoint after SIGTERM (default {GRACE_S})")
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    p.add_argument("args", nargs=argparse.REMAINDER, help="-- then what accelerate launch runs")
    ns = p.parse_args(argv)
    args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
    env = dict(os.environ)
    cmd = command(ns.gpus, ns.threads, args, env)
    if ns.dry_run:
        print(" ".join(cmd))
        return 0
    on_cpu = env.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")  # a gloo stand-in for GPUs
    try:
        with claim_gpus(0 if on_cpu else ns.gpus, env) as devices:
            if devices:
                env["CUDA_VISIBLE_DEVICES"] = devices
                print(f"GPUs of this job: CUDA_VISIBLE_DEVICES={devices}", flush=True)
            return run(cmd, env, ns.grace)
    except ValueError as err:  # too few GPUs for the job: a message, not a traceback
        print(f"ctdiff.launch: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
