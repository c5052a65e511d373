"""One training step and what it is made of: the global batch, timesteps and noise of a step as pure functions
of ``(train.seed, step)`` (so a resumed or multi-process run sees the same draws), the condition dropout, the
objective's loss and the optimizer step with gradient accumulation and the EMA update. The loop that runs them,
with Accelerate, checkpoints and resume, is :mod:`ctdiff.training.loop`."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import numpy as np
import torch
from accelerate import Accelerator

from ctdiff import seeds
from ctdiff.config import DiffusionConfig, TrainConfig
from ctdiff.diffusion import flow
from ctdiff.diffusion.schedule import Schedule, training_loss
from ctdiff.model import representation
from ctdiff.model.condition import drop_conditions
from ctdiff.training.trainset import TrainingSet


def batch_indices(n: int, batch_size: int, *, seed: int, step: int) -> np.ndarray:
    """Indices of the global batch of ``step``: the head of a permutation drawn from ``(seed, step)``."""
    return np.random.default_rng([seed, step]).permutation(n)[:batch_size]


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The learning rate of ``step`` (counted from 0): ``train.lr`` throughout with ``lr_schedule: constant``
    (the paper); with ``cosine``, ``lr · (1 + cos(π · step / steps)) / 2``, from ``lr`` at the first step
    towards 0 at the last, so the final weights settle instead of jittering at the full rate."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * step / cfg.steps))


def host_batch(trainset: TrainingSet, cfg: TrainConfig, shard: range, diffusion: DiffusionConfig, rep: str,
                step: int, conditions: TrainingSet | None = None):
    """This process's share of the global batch of ``step`` on the host: volumes ``[b, 1, S, S, S]`` in
    [-1, 1] in the representation ``rep`` (``model.representation``: for ``wavelet``, ``[b, 8, S/2, S/2, S/2]``),
    timesteps ``[b]`` and noise of that shape, and with ``conditions`` the encoded conditions ``[b, C, S, S, S]``
    after dropout, in the same representation (``[b, 8C, S/2, S/2, S/2]`` for wavelets). A pure function of
    ``(train.seed, step)`` and the shard, so it depends on neither the device nor the process count, and a
    resumed run sees the same batches."""
    idx = batch_indices(len(trainset), cfg.batch_size, seed=cfg.seed, step=step)
    x0 = representation.encode(trainset.read(idx[shard.start : shard.stop]), rep)
    t, noise = draw_noise(cfg.seed, step, shard, tuple(x0.shape[1:]), diffusion)
    if conditions is None:
        return x0, t, noise
    cond = conditions.read(idx[shard.start : shard.stop])
    dropped = draw_condition_dropout(cfg.seed, step, shard, cfg.condition_dropout)
    return x0, t, noise, representation.encode(drop_conditions(cond, dropped), rep)


#: Third seed word of the condition-dropout draws, so they never share a stream with :func:`draw_noise`'s.
DROPOUT_STREAM = 1


def draw_condition_dropout(seed: int, step: int, positions: Sequence[int], p: float) -> torch.Tensor:
    """``[b]`` bool: whether the condition of each global batch position of ``step`` is dropped (replaced by
    the no-nodule encoding), each ``True`` with probability ``p``. Position ``q`` draws one uniform number
    from its own generator seeded with ``(seed, step, q, DROPOUT_STREAM)``: independent of the process
    count, and the same in a resumed run."""
    draws = []
    for position in positions:
        draws.append(torch.rand(1, generator=seeds.generator(seed, step, position, DROPOUT_STREAM)))
    return torch.cat(draws) < p if draws else torch.zeros(0, dtype=torch.bool)


def draw_noise(seed: int, step: int, positions: Sequence[int], shape: tuple[int, ...], diffusion: DiffusionConfig):
    """Timesteps ``[b]`` and noise ``[b, *shape]`` for the given global batch positions of one step.

    Each position draws from its own CPU generator seeded with ``(seed, step, position)``, so the draws do
    not depend on how the global batch is split across processes. The timestep is an int64 ``t ~ U{0, …,
    T−1}`` for the eps and v objectives and a float32 flow time ``t ∈ [0, 1)`` drawn by
    :func:`ctdiff.diffusion.flow.draw_t` (``diffusion.flow_t``) for flow; the noise follows it.
    """
    ts, noises = [], []
    for position in positions:
        g = seeds.generator(seed, step, position)
        if diffusion.objective == "flow":
            ts.append(flow.draw_t(1, diffusion.flow_t, location=diffusion.flow_t_location,
                                  scale=diffusion.flow_t_scale, generator=g))
        else:
            ts.append(torch.randint(0, diffusion.timesteps, (1,), generator=g))
        noises.append(torch.randn(shape, generator=g))
    return torch.cat(ts), torch.stack(noises)


def objective_loss(objective: str, schedule: Schedule, model: torch.nn.Module, x0: torch.Tensor, t: torch.Tensor,
                   noise: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss of ``diffusion.objective`` for ``x0`` with the drawn timesteps ``t`` and ``noise``
    (:func:`draw_noise`): :func:`ctdiff.diffusion.schedule.training_loss` for eps and v,
    :func:`ctdiff.diffusion.flow.training_loss` for flow (whose network time scale is ``T``). ``cond``
    (``[b, C, S, S, S]``) goes to every network call beside ``x_t``."""
    if cond is not None:
        net = model

        def model(x: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
            return net(x, times, cond)

    if objective == "flow":
        return flow.training_loss(model, x0, t, noise, schedule.timesteps)
    return training_loss(schedule, model, x0, objective=objective, t=t, noise=noise)


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
    ema_decay: float,
    objective: str = "eps",
    cond: torch.Tensor | None = None,
) -> torch.Tensor:
    """One optimizer step on this process's share ``x0`` of the global batch; returns its (detached) loss.

    ``model`` is what :meth:`Accelerator.prepare` returned (possibly compiled); ``optimizer`` holds all of its
    parameters in the network's order (as built from ``net.parameters()``), and ``ema`` is updated from them
    after the optimizer step. The loss (:func:`objective_loss` of ``objective``) is the mean over
    ``x0``, whatever ``micro_batches``.
    """
    n = len(x0)
    if n % micro_batches:
        raise ValueError(f"{n} volumes per process cannot be split into {micro_batches} equal micro-batches")
    size = n // micro_batches
    total = torch.zeros((), device=x0.device)
    for k in range(micro_batches):
        part = slice(k * size, (k + 1) * size)
        last = k == micro_batches - 1
        # Distributed: the backward of the last micro-batch all-reduces the summed gradients across processes
        # (a sync point, overlapped with the backward); no_sync keeps the earlier ones local.
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            with accelerator.autocast():
                loss = objective_loss(objective, schedule, model, x0[part], t[part], noise[part],
                                      None if cond is None else cond[part]) / micro_batches
            accelerator.backward(loss)
        total += loss.detach().float()
    if grad_clip is not None:  # on the all-reduced gradients, so every process clips alike
        accelerator.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():  # every process holds the same parameters now, so the same EMA; no communication
        # The live parameters are the optimizer's, in the network's order. Not accelerator.unwrap_model(model):
        # on a compiled DDP model it points the compiled wrapper at the plain module, after which no_sync finds
        # no DDP and every micro-batch's backward all-reduces.
        live = [p.detach() for group in optimizer.param_groups for p in group["params"]]
        torch._foreach_lerp_(list(ema.parameters()), live, 1.0 - ema_decay)
    return total


__all__ = ["host_batch", "train_step", "batch_indices", "draw_noise", "draw_condition_dropout", "objective_loss",
           "learning_rate", "DROPOUT_STREAM"]
