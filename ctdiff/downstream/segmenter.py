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
  volume of it (uniformly) and its augmentation (a flip of each of the three axes with probability 1/2, the
  mirroring nnU-Net uses). The same seed gives the same batches on any machine, and the same numbers on the
  same machine;
- loss: binary cross-entropy on the logits plus the soft Dice loss over the whole batch,

      L = BCE(z, g) + 1 − (2 Σ σ(z)·g + 1) / (Σ σ(z) + Σ g + 1)                                          (1)

  with the sums over every voxel of the batch (a batch Dice: a volume without nodules gives the Dice term
  nothing to divide by on its own), z the logits [B, 1, D, H, W] and g the mask in {0, 1}.
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
    dice = (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    return bce + 1 - dice


def draw_batch(sources: Sequence[Sequence[Case]], step: int, batch_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """The batch of step ``step``: per position, a source (uniformly among the non-empty ``sources``), a case of
    it and three axis flips, all from ``seeds.generator(seed, step, position, BATCH_STREAM)``. Returns the volumes
    and the 0/1 masks, [B, 1, D, H, W] float32 on the CPU."""
    pools = [s for s in sources if len(s)]
    xs, ys = [], []
    for position in range(batch_size):
        g = seeds.generator(seed, step, position, BATCH_STREAM)
        pool = pools[int(torch.randint(len(pools), (1,), generator=g))]
        case = pool[int(torch.randint(len(pool), (1,), generator=g))]
        flips = [axis for axis, flip in enumerate(torch.rand(3, generator=g) < 0.5) if flip]
        x, y = torch.from_numpy(case.volume), torch.from_numpy((case.mask > 0).astype(np.float32))
        if flips:
            x, y = x.flip(flips), y.flip(flips)
        xs.append(x)
        ys.append(y)
    return torch.stack(xs)[:, None].float(), torch.stack(ys)[:, None]


def train_segmenter(sources: Sequence[Sequence[Case]], *, channels: Sequence[int], res_blocks: int, groups: int,
                    steps: int, batch_size: int, lr: float, seed: int, device: str | torch.device = "cpu"
                    ) -> tuple[Segmenter, list[float]]:
    """A :class:`Segmenter` trained for ``steps`` steps on batches drawn from ``sources`` (one list of cases per
    source: one for the real or the synthetic arm, two for the combined one), and its loss at every step.
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
        x, y = draw_batch(sources, step, batch_size, seed)
        loss = loss_fn(model(x.to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))  # a sync point: one per step, for the loss curve in the record
    model.eval()
    return model, losses


@torch.no_grad()
def predict(model: Segmenter, volume: np.ndarray, device: str | torch.device = "cpu") -> np.ndarray:
    """The probability of "nodule" per voxel of ``volume`` [D, H, W] in [0, 1]: float32 [D, H, W]."""
    x = torch.from_numpy(np.ascontiguousarray(volume, np.float32))[None, None].to(device)
    return torch.sigmoid(model(x))[0, 0].float().cpu().numpy()
