"""Training stage: the paper's ε-prediction DDPM (or the v or flow objective, ``diffusion.objective``) on
preprocessed volumes, with Accelerate, EMA and resume.

:func:`train` reads top to bottom: the accelerator, the checked data, model/EMA/optimizer, a resume from the
state folder when it holds a compatible checkpoint, then a plain loop in which every point where processes
or host and device wait for each other is commented. Decisions:

* Initial weights, data order and noise are pure functions of ``train.seed``: the global batch of step ``k``
  is the first ``batch_size`` entries of a permutation drawn from ``(seed, k)``, split across processes in
  contiguous shards, and the timestep (the flow time ``t`` for the flow objective) and noise of batch
  position ``p`` come from ``(seed, k, p)``. A resumed
  run therefore sees exactly the batches and noise of the uninterrupted run, and N processes compute the
  same global-batch gradient as one process (up to floating-point summation order).
* Resumable state lives in ``state_dir`` (not a declared output, so Snakemake never deletes it when a job
  fails). It is resumed only when model, diffusion, data and optimisation settings match; ``train.steps``
  may grow, so a finished run can be extended, and settings that change speed or memory but not the update
  (compile, gradient checkpointing, gradient accumulation) may change.
* The training volumes stay on the host (:class:`ctdiff.training.trainset.TrainingSet`: checked once, cached
  uncompressed in ``state_dir/volumes``, read a batch at a time), and only each step's batch goes to the
  device, prefetched by a background thread (:class:`ctdiff.training.prefetch.Prefetcher`): host and device
  memory do not grow with the cohort. A volume that changes or vanishes during the run is refused by name.
* With ``model.representation: wavelet`` each batch is Haar-transformed on the host
  (:mod:`ctdiff.model.representation`) and its noise drawn in that shape, ``[b, 8, S/2, S/2, S/2]``: the
  network, the loss and the device batch are at half resolution per axis.
* SIGTERM (what SLURM sends before preemption; :mod:`ctdiff.launch` passes it to every process) finishes the
  current step, writes a checkpoint and exits with status 143; the rerun continues from there. Several
  processes agree on it within a step (:class:`_Stop`), even when only one of them was signalled, and leave
  only once the main process has written the checkpoint.
* The data caches are built before the process group exists (processes take turns at a file lock), so no
  collective waits while one process reads the cohort.
* A non-finite loss stops the run before anything is saved, so the last good checkpoint stays intact.
* ``train.grad_accumulation = k`` splits each process's share of the batch into ``k`` equal micro-batches
  and scales each micro-batch loss by ``1/k``: the summed gradient is the gradient of the whole batch, so
  the update equals the ``k = 1`` update (up to summation order) at a fraction of the activation memory.
  Gradients are all-reduced only after the last micro-batch.
* ``train.compile`` wraps the network in ``torch.compile`` (default mode: cuDNN's 3D convolutions beat
  every autotuned Triton template, see docs/facts.md); checkpoints always hold the plain module's weights.
  On CUDA, Adam runs fused and cuDNN picks its convolution algorithms by benchmark.
* ``model.condition: nodules``: each volume's nodule mask (``condition_files``, aligned with ``files``; same
  affine, checked) is cached and encoded beside the volumes (``state_dir/conditions``,
  :mod:`ctdiff.model.condition`) and read with the same batch indices; the condition of batch position ``p``
  is replaced by the no-nodule encoding with probability ``train.condition_dropout``, drawn from
  ``(seed, step, p)`` in a stream of its own (:func:`draw_condition_dropout`), so resuming stays exact.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import fcntl
import functools
import importlib.util
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import parse_flag_from_env
from tqdm import tqdm

from ctdiff.model.build import build_model
from ctdiff.diffusion.schedule import build_schedule
from ctdiff.training.step import host_batch, learning_rate, train_step
from ctdiff.training.checkpoint import TrainingData, read_checkpoint, save_checkpoint
from ctdiff.config import Config, TrainConfig, section_from_dict, to_dict
from ctdiff.training.prefetch import Prefetcher
from ctdiff.training.trainset import TrainingSet, condition_item
from ctdiff.files import atomic_path
from ctdiff.machine import check_compile, cpu_has_amx_bf16, cuda_has_native_bf16, describe
from ctdiff.model.condition import ENCODING, condition_channels

LOG_COLUMNS = ("step", "loss", "lr", "elapsed_s")




@dataclass
class _TrainingState:
    """What a checkpoint saves and a resume restores, besides the step.

    ``net`` is the plain module (never the distributed or compiled wrapper), so checkpoints hold its keys;
    ``config`` is what the checkpoint records (plain dicts, see :mod:`ctdiff.training.checkpoint`).
    """

    config: dict[str, Any]
    net: torch.nn.Module
    ema: torch.nn.Module
    optimizer: torch.optim.Optimizer
    log: list[dict[str, Any]] = field(default_factory=list)


def resolve_precision(precision: str, device_type: str) -> str:
    """``train.precision`` as it will run on ``device_type`` (``"cuda"``, ``"cpu"``, ...): ``auto`` becomes
    ``bf16`` on a CUDA GPU that computes it natively (:func:`cuda_has_native_bf16`) or a CPU with AMX-BF16
    (:func:`cpu_has_amx_bf16`), else ``fp32``;
    ``fp32`` and ``bf16`` stay as they are."""
    if precision != "auto":
        return precision
    if device_type == "cuda":
        return "bf16" if cuda_has_native_bf16() else "fp32"
    if device_type == "cpu":
        return "bf16" if cpu_has_amx_bf16() else "fp32"
    return "fp32"


def _device_type() -> str:
    """The device type Accelerate will choose (ctdiff.launch runs CPU jobs with ACCELERATE_USE_CPU set)."""
    return "cuda" if torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_CPU") else "cpu"


def _accelerator(cfg: TrainConfig, tensorboard_dir: Path | None) -> Accelerator:
    """The Accelerator for this process (bf16 autocast with ``train.precision: bf16``, or with ``auto`` where
    :func:`resolve_precision` chooses it; the resolved precision is printed to the log), TensorBoard with
    ``train.tensorboard``; refuses TensorBoard without a folder or without the package."""
    tracking = {}
    if cfg.tensorboard:
        if tensorboard_dir is None:
            raise ValueError("train.tensorboard is true but no TensorBoard folder was given")
        if importlib.util.find_spec("tensorboard") is None:
            raise ValueError("train.tensorboard is true but the tensorboard package is not installed "
                             "(pip install tensorboard, or pip install 'ctdiff[tensorboard]')")
        tracking = {"log_with": "tensorboard", "project_dir": str(tensorboard_dir)}
    # auto is resolved for the device before the Accelerator exists, since its autocast is fixed at construction.
    device_type = _device_type()
    precision = resolve_precision(cfg.precision, device_type)
    accelerator = Accelerator(mixed_precision="bf16" if precision == "bf16" else "no", **tracking)
    if cfg.precision == "auto":
        if accelerator.device.type != device_type:
            raise ValueError(f"train.precision: auto knows CUDA and CPU devices, not {accelerator.device.type}: "
                             "set fp32 or bf16")
        feature = "native bf16 (compute capability >= 8.0)" if device_type == "cuda" else "AMX-BF16"
        accelerator.print(f"train.precision: auto -> {precision} ({device_type}, {feature}: "
                          f"{'yes' if precision == 'bf16' else 'no'})")
    if accelerator.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest 3D convolution once
    return accelerator


def _run_precision(accelerator: Accelerator) -> str:
    """The precision ``accelerator`` trains in, as ``train.precision`` spells it."""
    return "bf16" if accelerator.mixed_precision == "bf16" else "fp32"


def _per_process_batch(cfg: TrainConfig, processes: int) -> int:
    """This process's share of the global batch; it must split into ``train.grad_accumulation`` micro-batches."""
    if cfg.batch_size % (processes * cfg.grad_accumulation):
        raise ValueError(
            f"train.batch_size={cfg.batch_size} is not divisible by {processes} processes × "
            f"train.grad_accumulation={cfg.grad_accumulation} micro-batches"
        )
    return cfg.batch_size // processes


def _recorded_config(cfg: Config, files: Sequence[Path], affine: np.ndarray) -> dict[str, Any]:
    """The ``config`` entry of this run's checkpoints: model, diffusion and train sections, and what they
    record about the data (:class:`~ctdiff.training.checkpoint.TrainingData`), all plain dicts."""
    data = TrainingData(
        size=cfg.preprocess.size,
        files=tuple(Path(f).name for f in files),
        affine=tuple(tuple(row) for row in np.asarray(affine, dtype=float).tolist()),
        spacing_mm=cfg.preprocess.spacing_mm,
        hu_window=cfg.preprocess.hu_window,
    )
    return {"model": to_dict(cfg.model), "diffusion": to_dict(cfg.diffusion), "train": to_dict(cfg.train),
            "data": to_dict(data)}


def _build(cfg: Config, recorded: dict[str, Any], cuda: bool) -> _TrainingState:
    """Fresh network (initial weights from ``train.seed`` alone), its EMA copy and Adam (fused on CUDA)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        net = build_model(cfg.model, grad_checkpointing=cfg.train.grad_checkpointing,
                          recompute_norm=cfg.train.recompute_norm)
    ema = copy.deepcopy(net).requires_grad_(False)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.train.lr, fused=cuda)
    return _TrainingState(recorded, net, ema, optimizer)


def _resume_key(cfg: dict[str, Any]) -> dict[str, Any]:
    """The settings a checkpoint must share with this run to be resumed (``steps`` may grow unless the
    learning-rate schedule depends on it)."""
    # Both sides through the dataclasses, so that lists and tuples (torch.load gives lists) compare alike.
    train = to_dict(section_from_dict("train", cfg["train"]))
    diffusion = to_dict(section_from_dict("diffusion", cfg["diffusion"]))
    # Settings that do not change the update (only its speed, memory or logging) may change on resume.
    run_only = {"steps", "checkpoint_every", "log_every", "tensorboard", "compile", "grad_accumulation",
                "grad_checkpointing", "recompute_norm", "cache_gb"}
    if train["lr_schedule"] != "constant":
        run_only.remove("steps")  # the rate of every step depends on the total
    keep = {k: v for k, v in train.items() if k not in run_only}
    return {**cfg, "diffusion": diffusion, "train": keep}


def _resume(path: Path, state: _TrainingState, accelerator: Accelerator) -> int:
    """Load the checkpoint at ``path`` into ``state`` when it exists and was written with compatible
    settings; return the step to start from (0 for a fresh run).

    Every process reads the same file itself; nothing is sent between processes.
    """
    if not path.exists():
        return 0
    saved = read_checkpoint(path)
    if _resume_key(saved["config"]) != _resume_key(state.config):
        accelerator.print(f"ignoring {path}: it was written with other settings; starting afresh")
        return 0
    state.net.load_state_dict(saved["model"])
    state.ema.load_state_dict(saved["ema"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.log = list(saved["log"])
    step = int(saved["step"])
    accelerator.print(f"resuming from step {step} ({path})")
    return step


def _save(path: Path, step: int, state: _TrainingState, accelerator: Accelerator) -> None:
    """Write a checkpoint of ``state`` at ``step``; every process must call it, the main process writes."""
    accelerator.wait_for_everyone()  # sync point (barrier): every process has finished the step
    if accelerator.is_main_process:  # after the all-reduced updates every process holds the same weights
        save_checkpoint(path, {
            "step": step,
            "config": state.config,
            "model": state.net.state_dict(),
            "ema": state.ema.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "log": state.log,
            # the machine of this session (a resumed run records the one that wrote the file), for the cost
            # columns of the variants table beside the log's seconds per step
            "machine": describe(accelerator.device, accelerator.num_processes),
        })


def _check_health(first_bad: torch.Tensor, accelerator: Accelerator, state_dir: Path) -> None:
    """Raise ``FloatingPointError`` if any process saw a non-finite loss since the start of this run.

    ``first_bad`` is this process's first such step (0 = none). Called at every log row and before every
    checkpoint, so a model a NaN has reached (through the all-reduced gradients, every process's) is never
    saved and the state folder keeps the last good checkpoint.
    """
    # Sync point: gathering an integer from every process waits for each one's device.
    gathered = accelerator.gather(first_bad[None]).cpu()
    bad = gathered[gathered > 0]
    if len(bad):
        raise FloatingPointError(
            f"training loss became non-finite at step {int(bad.min())}; nothing was saved after it, the last "
            f"good checkpoint is left in {state_dir} (lower train.lr or set train.grad_clip)"
        )


#: How long processes wait for each other at the stop agreement and after a checkpoint write (the main process
#: writes ~2.5 GB at LIDC's scale while the others wait): well past any write, short of a hang going unnoticed.
STOP_TIMEOUT = timedelta(hours=1)


class _Stop:
    """Context that remembers a SIGTERM and agrees on it across processes, so every process checkpoints at the
    same step boundary and they exit together.

    One process stops at the end of the step it is in. With several, every step starts an all-reduce (max) of
    this process's flag on a gloo process group of its own, in the background on the host (no device sync, no
    operation on NCCL's stream), and the next step reads its result: every process reads the same value after
    the same step, so all stop one step after the first of them saw the signal, whichever process SLURM or
    the launcher signalled first and whatever ``train.log_every`` is. :meth:`barrier` then holds every process
    until the main process has written the checkpoint: torch's launcher ends the others as soon as one leaves.
    """

    def __init__(self, processes: int) -> None:
        # new_group is collective: every process creates it, at the same point.
        self._group = dist.new_group(backend="gloo", timeout=STOP_TIMEOUT) if processes > 1 else None
        self._flag: torch.Tensor | None = None
        self._pending = None

    def __enter__(self) -> _Stop:
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def agreed(self) -> bool:
        """Whether every process stops after this step; called by every process once per step."""
        if self._group is None:
            return self.requested
        stop = False
        if self._pending is not None:
            self._pending.wait()  # started a step ago and done since; costs nothing in practice
            stop = bool(self._flag.item())
        self._flag = torch.tensor([int(self.requested)], dtype=torch.int32)
        self._pending = dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        return stop

    def barrier(self) -> None:
        """Wait for every process (sync point, on the host): after a checkpoint, for the main process's write."""
        if self._group is not None:
            dist.barrier(group=self._group)

    def __exit__(self, exc_type, *exc) -> None:
        signal.signal(signal.SIGTERM, self._previous)
        if self._pending is not None and exc_type is None:
            self._pending.wait()  # every process started the same all-reduces: none is left half done


def train(
    files: Sequence[Path],
    out: Path,
    log_csv: Path,
    state_dir: Path,
    cfg: Config,
    *,
    tensorboard_dir: Path | None = None,
    progress: bool = True,
    condition_files: Sequence[Path] | None = None,
) -> torch.nn.Module:
    """Train the U-Net on ``files``, write the self-describing checkpoint ``out`` and the loss log
    ``log_csv``, and return this process's trained network (unwrapped from any distributed wrapper).

    Uses the ``model``, ``diffusion``, ``train`` and ``preprocess`` sections of ``cfg``; the checkpoint
    records the preprocessing's size, spacing and HU window so that samples can be written like the training
    data. With ``train.tensorboard`` the loss also goes to TensorBoard event files under ``tensorboard_dir``.
    With ``model.condition: nodules``, ``condition_files[i]`` is the nodule mask of ``files[i]`` (required;
    refused with ``condition: none``).
    """
    if cfg.train.compile:  # before any work: a host that cannot compile fails at the first step otherwise
        check_compile("train.compile", _device_type())
    # The volumes (and masks) stay on the host, checked and cached uncompressed under the state folder, built
    # before the process group exists: the processes take turns at a file lock, so the first builds the caches
    # while the others wait there, not in a collective that NCCL gives up on after 10 minutes (LIDC's masks alone
    # take ~10), and then reuse them.
    with _host_lock(Path(state_dir) / "cache.lock"):
        trainset = TrainingSet(files, cfg.preprocess.size, Path(state_dir) / "volumes", cache_gb=cfg.train.cache_gb,
                               processes_on_host=int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        conditions = _condition_set(cfg, files, condition_files, trainset, Path(state_dir) / "conditions")
    accelerator = _accelerator(cfg.train, tensorboard_dir)
    # train.precision: auto is recorded (checkpoint, resume) as what it resolved to on this machine.
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=_run_precision(accelerator)))
    train_cfg = cfg.train
    local_batch = _per_process_batch(train_cfg, accelerator.num_processes)
    if len(trainset) < train_cfg.batch_size:
        raise ValueError(f"training set holds {len(trainset)} volumes, fewer than train.batch_size={train_cfg.batch_size}")
    schedule = build_schedule(cfg.diffusion)
    state = _build(cfg, _recorded_config(cfg, files, trainset.affine), cuda=accelerator.device.type == "cuda")
    state_path = Path(state_dir) / "state.pt"
    start = _resume(state_path, state, accelerator)

    # With several processes, prepare wraps the network in DistributedDataParallel, whose constructor
    # broadcasts rank 0's parameters (a sync point). state.net keeps the plain module for checkpoints.
    model, state.optimizer = accelerator.prepare(state.net, state.optimizer)
    if train_cfg.compile:
        model = torch.compile(model)
    state.ema.to(accelerator.device)
    if train_cfg.tensorboard:
        accelerator.init_trackers("train")

    # The step (counted from 1) of this process's first non-finite loss, 0 while there is none. Updated on
    # the device without a sync; read only where a checkpoint is about to be written or the loss is logged.
    first_bad = torch.zeros((), dtype=torch.int64, device=accelerator.device)
    rank = accelerator.process_index
    shard = range(rank * local_batch, (rank + 1) * local_batch)  # this process's positions in each global batch
    t0 = time.perf_counter() - (state.log[-1]["elapsed_s"] if state.log else 0.0)
    running, n_running = 0.0, 0
    bar = tqdm(total=train_cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
               disable=not (progress and accelerator.is_local_main_process))
    model.train()
    # Each step's batch, timesteps and noise are read and drawn on the host by a background thread while the
    # previous step runs, and copied to the device without blocking the host (pinned memory on CUDA).
    fetch = functools.partial(host_batch, trainset, train_cfg, shard, cfg.diffusion, cfg.model.representation,
                              conditions=conditions)
    batches = Prefetcher(range(start, train_cfg.steps), fetch, device=accelerator.device)
    with _Stop(accelerator.num_processes) as stop, bar, batches:
        for step, (x0, t, noise, *cond) in batches:
            lr = learning_rate(train_cfg, step)
            for group in state.optimizer.param_groups:
                group["lr"] = lr
            loss = train_step(model, state.ema, state.optimizer, accelerator, schedule, x0, t, noise,
                              micro_batches=train_cfg.grad_accumulation, grad_clip=train_cfg.grad_clip,
                              ema_decay=train_cfg.ema_decay, objective=cfg.diffusion.objective,
                              cond=cond[0] if cond else None)
            running += loss  # stays on the device: no sync per step
            n_running += 1

            done = step + 1
            first_bad = torch.where((first_bad == 0) & ~torch.isfinite(loss.detach()), done, first_bad)
            log_step = done % train_cfg.log_every == 0 or done == train_cfg.steps
            save_step = done % train_cfg.checkpoint_every == 0
            stopping = stop.agreed()  # the same answer on every process
            if log_step or save_step or stopping:
                _check_health(first_bad, accelerator, state_dir)  # sync point (several processes)
            if log_step:
                # Sync point: all-reduce of the running loss across processes, then .item() waits for the device.
                mean = accelerator.reduce(running, reduction="mean").item() / n_running
                state.log.append({"step": done, "loss": mean, "lr": lr,
                                  "elapsed_s": round(time.perf_counter() - t0, 3)})
                running, n_running = 0.0, 0
                if train_cfg.tensorboard:
                    accelerator.log({"loss": mean, "lr": lr}, step=done)
                bar.set_postfix(loss=f"{mean:.4f}")
            bar.update(1)
            if save_step or stopping:  # _check_health ran just above: never save a model a NaN has reached
                _save(state_path, done, state, accelerator)
                stop.barrier()  # every process waits for the write, on the host instead of in the next all-reduce
            if stopping:
                accelerator.print(f"SIGTERM: checkpoint written at step {done}; rerun to resume")
                raise SystemExit(143)

    _check_health(first_bad, accelerator, state_dir)
    _save(state_path, train_cfg.steps, state, accelerator)
    _save(Path(out), train_cfg.steps, state, accelerator)
    if accelerator.is_main_process:
        write_log(log_csv, state.log)
    accelerator.end_training()
    return state.net


@contextlib.contextmanager
def _host_lock(path: Path):
    """Hold an exclusive ``flock`` on ``path`` for the block (the processes of a job take turns); where the
    file system has no such locks the block runs unlocked (the caches are written atomically either way)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError:
            pass
        yield


def _condition_set(cfg: Config, files: Sequence[Path], condition_files: Sequence[Path] | None,
                   trainset: TrainingSet, cache_dir: Path) -> TrainingSet | None:
    """The encoded conditions of ``model.condition`` (None for ``none``), cached in ``cache_dir`` like the
    volumes; refuses missing or extra masks and a mask whose affine differs from its volume's, naming both."""
    condition = cfg.model.condition
    if condition == "none":
        if condition_files:
            raise ValueError("nodule masks were given, but model.condition is none (set it to nodules to use them)")
        return None
    if condition_files is None or len(condition_files) != len(files):
        got = "none" if condition_files is None else len(condition_files)
        raise ValueError(f"model.condition={condition!r} needs one nodule mask per training volume: "
                         f"{len(files)} volumes, {got} masks")
    conditions = TrainingSet(condition_files, cfg.preprocess.size, cache_dir,
                             processes_on_host=int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
                             channels=condition_channels(condition), prepare=condition_item, encoding=ENCODING)
    for volume, mask, a, b in zip(files, condition_files, trainset.affines, conditions.affines):
        if not np.allclose(a, b, atol=1e-3):
            raise ValueError(f"nodule mask {mask} does not lie on the grid of its volume {volume} "
                             f"(affines differ: {np.round(b, 3).tolist()} vs {np.round(a, 3).tolist()})")
    return conditions


def write_log(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write the loss log as CSV (columns ``step, loss, lr, elapsed_s``), atomically."""
    with atomic_path(Path(path)) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


__all__ = ["train", "resolve_precision", "write_log"]
