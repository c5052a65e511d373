"""The downstream task's network and its training: a nodule segmenter on volumes in [0, 1].

The network is the project's own residual 3D U-Net (:class:`ctdiff.model.unet.UNet3D`), small (the
``downstream`` config section sizes it), used as a plain segmentation network: one input channel (the volume
in [0, 1], the preprocessed window), one output channel (the logit of "nodule"), and the timestep input held
at 0 for every call, so its time embedding is a learned constant bias per block. Its output convolution starts
at weight 0 (as the U-Net initialises it) and bias ``logit(PRIOR)``: every voxel starts at the probability
:data:`PRIOR` instead of 1/2, so the first steps do not go to learning that nodules are rare.

Training (:func:`train_segmenter`), for a fixed budget of ``steps`` optimizer steps (AdamW, constant ``lr``),
``batch_size`` volumes per step:

- each batch position ``p`` of step ``s`` draws from ``seeds.generator(seed, s, p)``: which source (for an arm
  with two, real or synthetic with probability 1/2 each: 1:1 by draw, whatever the sources' sizes), which
  volume of it (uniformly), its augmentation (a flip of each of the three axes with probability 1/2, the
  mirroring nnU-Net uses) and, with ``downstream.patch``, which ``patch``³ window of it: with probability
  ``downstream.foreground`` one centred on a nodule voxel drawn uniformly, else one anywhere (nnU-Net's
  foreground oversampling, 1/3 there). The same seed gives the same batches on any machine, and the same
  numbers on the same machine;
- loss: binary cross-entropy on the logits plus the soft Dice loss over the whole batch,

      L = BCE(z, g) + 1 − (2 Σ σ(z)·g + s) / (Σ σ(z) + Σ g + s)                                          (1)

  with the sums over every voxel of the batch (a batch Dice: a volume without nodules gives the Dice term
  nothing to divide by on its own), z the logits [B, 1, D, H, W], g the mask in {0, 1} and s = :data:`SMOOTH`.

Prediction (:func:`predict`): the whole volume in one call, or, for a segmenter trained on windows, window by
window as it was trained (sliding-window inference, nnU-Net's: windows overlapping by half, each weighted by a
Gaussian about its centre).

Why windows: nodules fill about 0.1 % of a chest CT's voxels. On whole phantom volumes at 32³ of 8 mm (nodules
of 1-16 voxels) the segmenter found no held-out nodule within 500 steps; on 16³ windows of 48³ volumes of 6 mm,
a third of them centred on a nodule, it found 8 of 12 within 1500 steps of 4 windows (both on the 2-core EPYC).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ctdiff import seeds
from ctdiff.model.unet import UNet3D

#: The probability of "nodule" every voxel starts at (the output bias), about the share of nodule voxels in a
#: chest CT with nodules.
PRIOR = 0.01
#: The soft Dice's smoothing term in eq. (1) (nnU-Net's): small, so that "no nodule anywhere" scores a Dice
#: near 0, not 1 / (Σ g + 1) as with a smoothing of 1, which made emptying every prediction the Dice term's
#: easiest gain (measured: every probability driven to 0 within 100 steps on phantom patches).
SMOOTH = 1e-5
#: Third seed word of the draws that pick a batch position's source, volume and flips.
BATCH_STREAM = 11


class Segmenter(nn.Module):
    """``x [B, 1, D, H, W]`` in [0, 1] → logits ``[B, 1, D, H, W]``: a :class:`UNet3D` with its time held at 0."""

    def __init__(self, channels: Sequence[int], res_blocks: int, groups: int) -> None:
        super().__init__()
        self.unet = UNet3D(channels=channels, res_blocks=res_blocks, attention=False, in_channels=1, groups=groups)
        nn.init.constant_(self.unet.conv_out.bias, math.log(PRIOR / (1 - PRIOR)))

    def forward(self, x: Tensor) -> Tensor:
        return self.unet(x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device))


@dataclass(frozen=True)
class Case:
    """One training or test case: ``volume`` [D, H, W] float32 in [0, 1] and ``mask`` [D, H, W] uint8 labels
    (0 background, n nodule n), on one grid; ``name`` says where they came from."""

    name: str
    volume: np.ndarray
    mask: np.ndarray


def loss_fn(logits: Tensor, target: Tensor) -> Tensor:
    """Eq. (1): BCE plus the batch soft-Dice loss; ``logits`` and ``target`` (0/1 floats) [B, 1, D, H, W]."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    dice = (2 * (p * target).sum() + SMOOTH) / (p.sum() + target.sum() + SMOOTH)
    return bce + 1 - dice


def _patch_start(case: Case, patch: int, foreground: bool, g: torch.Generator) -> tuple[int, ...]:
    """The corner of a ``patch``³ window of ``case``: centred (as far as the volume allows) on a nodule voxel drawn
    uniformly when ``foreground`` and the case has one, else drawn uniformly among all windows."""
    shape = case.mask.shape
    voxels = np.flatnonzero(case.mask) if foreground else np.empty(0, np.int64)
    if len(voxels):
        centre = np.unravel_index(int(voxels[int(torch.randint(len(voxels), (1,), generator=g))]), shape)
        return tuple(int(min(max(c - patch // 2, 0), n - patch)) for c, n in zip(centre, shape))
    return tuple(int(torch.randint(n - patch + 1, (1,), generator=g)) for n in shape)


def draw_batch(sources: Sequence[Sequence[Case]], step: int, batch_size: int, seed: int, *,
               patch: int | None = None, foreground: float = 0.0) -> tuple[Tensor, Tensor]:
    """The batch of step ``step``: per position, a source (uniformly among the non-empty ``sources``), a case of
    it, where ``patch`` is set a ``patch``³ window of it (centred on a nodule voxel with probability
    ``foreground``, else anywhere), and three axis flips, all from ``seeds.generator(seed, step, position,
    BATCH_STREAM)``. Returns the volumes and the 0/1 masks, [B, 1, D, H, W] float32 on the CPU."""
    pools = [s for s in sources if len(s)]
    xs, ys = [], []
    for position in range(batch_size):
        g = seeds.generator(seed, step, position, BATCH_STREAM)
        pool = pools[int(torch.randint(len(pools), (1,), generator=g))]
        case = pool[int(torch.randint(len(pool), (1,), generator=g))]
        flips = [axis for axis, flip in enumerate(torch.rand(3, generator=g) < 0.5) if flip]
        x, y = torch.from_numpy(case.volume), torch.from_numpy((case.mask > 0).astype(np.float32))
        if patch is not None:
            on_nodule = bool(torch.rand(1, generator=g) < foreground)
            window = tuple(slice(a, a + patch) for a in _patch_start(case, patch, on_nodule, g))
            x, y = x[window], y[window]
        if flips:
            x, y = x.flip(flips), y.flip(flips)
        xs.append(x)
        ys.append(y)
    return torch.stack(xs)[:, None].float(), torch.stack(ys)[:, None]


def train_segmenter(sources: Sequence[Sequence[Case]], *, channels: Sequence[int], res_blocks: int, groups: int,
                    steps: int, batch_size: int, lr: float, seed: int, patch: int | None = None,
                    foreground: float = 0.0, device: str | torch.device = "cpu") -> tuple[Segmenter, list[float]]:
    """A :class:`Segmenter` trained for ``steps`` steps on batches drawn from ``sources`` (one list of cases per
    source: one for the real or the synthetic arm, two for the combined one), and its loss at every step; with
    ``patch``, on ``patch``³ windows (:func:`draw_batch`).
    The initial weights come from ``torch.manual_seed(seed)`` (in a forked generator); ``ValueError`` when
    every source is empty."""
    if not any(len(s) for s in sources):
        raise ValueError("the segmenter has no training case")
    with torch.random.fork_rng(devices=[]):  # the initial weights from the seed, the caller's generator untouched
        torch.manual_seed(seed)
        model = Segmenter(channels, res_blocks, groups).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    model.train()
    for step in range(steps):
        x, y = draw_batch(sources, step, batch_size, seed, patch=patch, foreground=foreground)
        loss = loss_fn(model(x.to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))  # a sync point: one per step, for the loss curve in the record
    model.eval()
    return model, losses


def window_weights(patch: int) -> np.ndarray:
    """``[patch]*3`` float32 weights of a window's voxels in :func:`predict`: a Gaussian of σ = patch / 8 about
    the window's centre (nnU-Net's), so that a voxel's probability comes mostly from the windows that see it
    with context on every side; the smallest weight is raised to 1e-3 of the largest, so none is 0."""
    axis = np.exp(-0.5 * ((np.arange(patch) - (patch - 1) / 2) / (patch / 8)) ** 2)
    w = axis[:, None, None] * axis[None, :, None] * axis[None, None, :]
    return np.maximum(w / w.max(), 1e-3).astype(np.float32)


def window_starts(n: int, patch: int) -> list[int]:
    """The corners along an axis of ``n`` voxels of the windows :func:`predict` evaluates: every ``patch // 2``
    voxels from 0, and the last window flush with the end."""
    starts = list(range(0, n - patch + 1, max(1, patch // 2)))
    return starts if starts[-1] == n - patch else [*starts, n - patch]


@torch.no_grad()
def predict(model: Segmenter, volume: np.ndarray, device: str | torch.device = "cpu",
            patch: int | None = None) -> np.ndarray:
    """The probability of "nodule" per voxel of ``volume`` [D, H, W] in [0, 1]: float32 [D, H, W]. With ``patch``
    (a model trained on windows) the volume is read window by window, as it was trained: ``patch``³ windows
    overlapping by half (:func:`window_starts`), each window's probabilities weighted by :func:`window_weights`
    and the weighted mean taken per voxel (sliding-window inference; a whole volume in one call would give the
    network's GroupNorm statistics of another extent than in training)."""
    x = torch.from_numpy(np.ascontiguousarray(volume, np.float32))[None, None].to(device)
    if patch is None:
        return torch.sigmoid(model(x))[0, 0].float().cpu().numpy()
    weights = window_weights(patch)
    total = np.zeros(volume.shape, np.float32)
    norm = np.zeros(volume.shape, np.float32)
    for a in window_starts(volume.shape[0], patch):
        for b in window_starts(volume.shape[1], patch):
            for c in window_starts(volume.shape[2], patch):
                window = (slice(a, a + patch), slice(b, b + patch), slice(c, c + patch))
                p = torch.sigmoid(model(x[(slice(None), slice(None), *window)]))[0, 0].float().cpu().numpy()
                total[window] += p * weights
                norm[window] += weights
    return total / norm
