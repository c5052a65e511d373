"""Training stage: the paper's ε-prediction DDPM on preprocessed volumes, with Accelerate, EMA and resume.

Read top to bottom: check the data, build model/EMA/optimizer, resume from the state folder when it holds
a compatible checkpoint, then a plain loop. Decisions:

* Initial weights, data order and noise are pure functions of ``train.seed``: the global batch of step ``k``
  is the first ``batch_size`` entries of a permutation drawn from ``(seed, k)``, split across processes in
  contiguous shards, and the timestep and noise of batch position ``p`` come from ``(seed, k, p)``. A resumed
  run therefore sees exactly the batches and noise of the uninterrupted run, and N processes compute the
  same global-batch gradient as one process (up to floating-point summation order).
* Resumable state lives in ``state_dir`` (not a declared output, so Snakemake never deletes it when a job
  fails). It is resumed only when model, diffusion, data and optimisation settings match; ``train.steps``
  may grow, so a finished run can be extended, and settings that change speed or memory but not the update
  (compile, gradient checkpointing, gradient accumulation) may change.
* SIGTERM (what SLURM sends before preemption) finishes the current step, writes a checkpoint and exits
  with status 143; the rerun continues from there.
* A non-finite loss stops the run before anything is saved, so the last good checkpoint stays intact.
* ``train.grad_accumulation = k`` splits each process's share of the batch into ``k`` equal micro-batches
  and scales each micro-batch loss by ``1/k``: the summed gradient is the gradient of the whole batch, so
  the update equals the ``k = 1`` update (up to summation order) at a fraction of the activation memory.
  Gradients are all-reduced only after the last micro-batch.
* ``train.compile`` wraps the network in ``torch.compile`` (default mode: cuDNN's 3D convolutions beat
  every autotuned Triton template, see docs/facts.md); checkpoints always hold the plain module's weights.
  On CUDA, Adam runs fused and cuDNN picks its convolution algorithms by benchmark.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import importlib.util
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from tqdm import tqdm

from ctdiff.checkpoint import build_model, build_schedule, read_checkpoint, save_checkpoint
from ctdiff.config import DiffusionConfig, ModelConfig, TrainConfig, to_dict
from ctdiff.diffusion.schedule import training_loss
from ctdiff.io import atomic_path, load_volume

LOG_COLUMNS = ("step", "loss", "lr", "elapsed_s")


def load_training_set(files: Sequence[Path], size: int) -> tuple[torch.Tensor, np.ndarray]:
    """Load and check the training volumes.

    Returns ``([N, 1, size, size, size]`` float32 in [-1, 1], the first volume's 4×4 affine``)``; the affine
    is stored in the checkpoint so that samples share the training data's orientation and spacing.

    Refuses (``ValueError`` naming the file) a volume of the wrong shape, with non-finite values or
    values outside [0, 1].
    """
    if not files:
        raise ValueError("training set is empty: the split left no training volume")
    volumes, affines = [], []
    for path in files:
        array, affine = load_volume(path)
        if array.shape != (size, size, size):
            raise ValueError(f"training volume {path} has shape {array.shape}, expected {(size,) * 3}")
        if not np.isfinite(array).all():
            raise ValueError(f"training volume {path} holds NaN or infinite values")
        lo, hi = float(array.min()), float(array.max())
        if lo < -1e-4 or hi > 1 + 1e-4:
            raise ValueError(f"training volume {path} has values in [{lo:.4g}, {hi:.4g}], expected [0, 1]")
        volumes.append(torch.from_numpy(array))
        affines.append(affine)
    return torch.stack(volumes)[:, None].mul_(2).sub_(1), affines[0]


def batch_indices(n: int, batch_size: int, *, seed: int, step: int) -> np.ndarray:
    """Indices of the global batch of ``step``: the head of a permutation drawn from ``(seed, step)``."""
    return np.random.default_rng([seed, step]).permutation(n)[:batch_size]


def draw_noise(seed: int, step: int, positions: Sequence[int], shape: tuple[int, ...], timesteps: int):
    """Timesteps ``[b]`` and noise ``[b, *shape]`` for the given global batch positions of one step.

    Each position draws from its own CPU generator seeded with ``(seed, step, position)``, so the draws do
    not depend on how the global batch is split across processes.
    """
    ts, noises = [], []
    for position in positions:
        state = np.random.SeedSequence([seed, step, position]).generate_state(1, dtype=np.uint64)[0]
        g = torch.Generator().manual_seed(int(state))
        ts.append(torch.randint(0, timesteps, (1,), generator=g))
        noises.append(torch.randn(shape, generator=g))
    return torch.cat(ts), torch.stack(noises)


def train_step(
    model: torch.nn.Module,
    ema: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    accelerator: Accelerator,
    schedule,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    *,
    micro_batches: int = 1,
    grad_clip: float | None = None,
    ema_decay: float = 0.9999,
) -> torch.Tensor:
    """One optimizer step on this process's share ``x0`` of the global batch; returns its (detached) loss.

    ``model`` is what :meth:`Accelerator.prepare` returned (possibly compiled); ``ema`` is updated from its
    parameters after the optimizer step. The loss is the mean over ``x0``, whatever ``micro_batches``.
    """
    n = len(x0)
    if n % micro_batches:
        raise ValueError(f"{n} volumes per process cannot be split into {micro_batches} equal micro-batches")
    size = n // micro_batches
    total = torch.zeros((), device=x0.device)
    for k in range(micro_batches):
        part = slice(k * size, (k + 1) * size)
        last = k == micro_batches - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            with accelerator.autocast():
                loss = training_loss(schedule, model, x0[part], t=t[part], noise=noise[part]) / micro_batches
            accelerator.backward(loss)
        total += loss.detach().float()
    if grad_clip is not None:
        accelerator.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        live = [p.detach() for p in accelerator.unwrap_model(model).parameters()]
        torch._foreach_lerp_(list(ema.parameters()), live, 1.0 - ema_decay)
    return total


def _resume_key(cfg: dict[str, Any]) -> dict[str, Any]:
    """The settings a checkpoint must share with this run to be resumed (``steps`` may change)."""
    # Settings that do not change the update (only its speed, memory or logging) may change on resume.
    run_only = ("steps", "checkpoint_every", "log_every", "tensorboard", "compile", "grad_accumulation",
                "grad_checkpointing", "recompute_norm")
    keep = {k: v for k, v in cfg["train"].items() if k not in run_only}
    return {**cfg, "train": keep}


class _Stop:
    """Remembers a SIGTERM so the loop can checkpoint at a step boundary."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def train(
    files: Sequence[Path],
    out_model: Path,
    out_log: Path,
    state_dir: Path,
    *,
    model_cfg: ModelConfig,
    diffusion_cfg: DiffusionConfig,
    train_cfg: TrainConfig,
    size: int,
    extra_config: dict[str, Any] | None = None,
    tensorboard_dir: Path | None = None,
    progress: bool = True,
) -> torch.nn.Module:
    """Train the U-Net on ``files``, write the self-describing checkpoint and the loss log, and return this
    process's trained network (unwrapped from any distributed wrapper).

    ``extra_config`` (e.g. the preprocessing section) is stored in the checkpoint so that samples can be
    written with the same affine convention as the training data. With ``train.tensorboard`` the loss also
    goes to TensorBoard event files under ``tensorboard_dir``.
    """
    tracking = {}
    if train_cfg.tensorboard:
        if tensorboard_dir is None:
            raise ValueError("train.tensorboard is true but no TensorBoard folder was given")
        if importlib.util.find_spec("tensorboard") is None:
            raise ValueError("train.tensorboard is true but the tensorboard package is not installed "
                             "(pip install tensorboard, or pip install 'ctdiff[tensorboard]')")
        tracking = {"log_with": "tensorboard", "project_dir": str(tensorboard_dir)}
    accelerator = Accelerator(mixed_precision="bf16" if train_cfg.precision == "bf16" else "no", **tracking)
    n_proc, rank = accelerator.num_processes, accelerator.process_index
    if train_cfg.batch_size % (n_proc * train_cfg.grad_accumulation):
        raise ValueError(
            f"train.batch_size={train_cfg.batch_size} is not divisible by {n_proc} processes × "
            f"train.grad_accumulation={train_cfg.grad_accumulation} micro-batches"
        )
    local_batch = train_cfg.batch_size // n_proc

    data, affine = load_training_set(files, size)
    if len(data) < train_cfg.batch_size:
        raise ValueError(f"training set holds {len(data)} volumes, fewer than train.batch_size={train_cfg.batch_size}")

    cfg = {
        "model": to_dict(model_cfg),
        "diffusion": to_dict(diffusion_cfg),
        "train": to_dict(train_cfg),
        "data": {
            "size": size,
            "files": [Path(f).name for f in files],
            "affine": np.asarray(affine, dtype=float).tolist(),
            **(extra_config or {}),
        },
    }
    schedule = build_schedule(cfg["diffusion"])
    with torch.random.fork_rng(devices=[]):  # initial weights depend on train.seed alone
        torch.manual_seed(train_cfg.seed)
        net = build_model(cfg["model"], grad_checkpointing=train_cfg.grad_checkpointing,
                          recompute_norm=train_cfg.recompute_norm)
    ema = copy.deepcopy(net).requires_grad_(False)
    cuda = accelerator.device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest 3D convolution once
    optimizer = torch.optim.Adam(net.parameters(), lr=train_cfg.lr, fused=cuda)

    state_path = Path(state_dir) / "state.pt"
    start, log_rows = 0, []
    if state_path.exists():
        state = read_checkpoint(state_path)
        if _resume_key(state["config"]) == _resume_key(cfg):
            net.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            start, log_rows = int(state["step"]), list(state["log"])
            accelerator.print(f"resuming from step {start} ({state_path})")
        else:
            accelerator.print(f"ignoring {state_path}: it was written with other settings; starting afresh")

    model, optimizer = accelerator.prepare(net, optimizer)  # net keeps the plain module's parameters
    if train_cfg.compile:
        model = torch.compile(model)
    ema.to(accelerator.device)
    data = data.to(accelerator.device)
    if tracking:
        accelerator.init_trackers("train")

    def save(step: int, path: Path) -> None:
        accelerator.wait_for_everyone()  # sync point: every process has finished the step
        if accelerator.is_main_process:
            payload = {
                "step": step,
                "config": cfg,
                "model": net.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": optimizer.state_dict(),
                "log": log_rows,
            }
            save_checkpoint(path, payload)

    stop = _Stop()
    t0 = time.perf_counter() - (log_rows[-1]["elapsed_s"] if log_rows else 0.0)
    running, n_running, bar = 0.0, 0, None
    if progress and accelerator.is_local_main_process:
        bar = tqdm(total=train_cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
    model.train()
    try:
        for step in range(start, train_cfg.steps):
            shard = range(rank * local_batch, (rank + 1) * local_batch)  # this process's batch positions
            idx = batch_indices(len(data), train_cfg.batch_size, seed=train_cfg.seed, step=step)
            x0 = data[idx[shard.start : shard.stop]]
            t, noise = draw_noise(train_cfg.seed, step, shard, tuple(x0.shape[1:]), schedule.timesteps)
            loss = train_step(
                model, ema, optimizer, accelerator, schedule, x0, t.to(x0.device), noise.to(x0.device),
                micro_batches=train_cfg.grad_accumulation, grad_clip=train_cfg.grad_clip,
                ema_decay=train_cfg.ema_decay,
            )
            running += loss
            n_running += 1

            done = step + 1
            if done % train_cfg.log_every == 0 or done == train_cfg.steps:
                mean = accelerator.reduce(running, reduction="mean").item() / n_running  # sync point
                if not np.isfinite(mean):
                    raise FloatingPointError(
                        f"training loss became {mean} at step {done}; last good checkpoint left in {state_dir}"
                    )
                log_rows.append({"step": done, "loss": mean, "lr": train_cfg.lr,
                                 "elapsed_s": round(time.perf_counter() - t0, 3)})
                running, n_running = 0.0, 0
                if tracking:
                    accelerator.log({"loss": mean, "lr": train_cfg.lr}, step=done)
                if bar is not None:
                    bar.set_postfix(loss=f"{mean:.4f}")
            if bar is not None:
                bar.update(1)
            if done % train_cfg.checkpoint_every == 0 or stop.requested:
                save(done, state_path)
            if stop.requested:
                accelerator.print(f"SIGTERM: checkpoint written at step {done}; rerun to resume")
                raise SystemExit(143)
    finally:
        stop.restore()
        if bar is not None:
            bar.close()

    save(train_cfg.steps, state_path)
    save(train_cfg.steps, Path(out_model))
    if accelerator.is_main_process:
        write_log(out_log, log_rows)
    accelerator.end_training()
    return net


def write_log(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write the loss log as CSV (columns ``step, loss, lr, elapsed_s``), atomically."""
    with atomic_path(Path(path)) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


__all__ = ["train", "train_step", "load_training_set", "batch_indices", "draw_noise", "write_log"]
