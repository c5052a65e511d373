"""The downstream stage: does synthetic data help a nodule segmenter?

One **arm** per training set, each a segmenter (:mod:`ctdiff.downstream.segmenter`) trained with the same
budget (``downstream.steps`` steps of ``downstream.batch_size`` volumes, the same seed) and scored alike on the
held-out real volumes (the test split) against their consensus masks (:mod:`ctdiff.downstream.scores`):

- ``real``: the training split's preprocessed volumes with their consensus masks;
- ``synthetic``: a nodule-conditioned model's volumes with the masks they were drawn with (``nodules/`` beside
  them);
- ``combined``: both, drawn 1:1 (each batch position picks real or synthetic with probability 1/2).

Decisions:

- Only a ``model.condition: nodules`` model has a synthetic arm: an unconditional model's samples come without
  masks (the paper's model is one), so for it the stage does not apply, and the workflow plans none.
- The synthetic volumes the stage trains on are a sample set of their own, drawn with the masks of the
  *training* split (sorted, cycled), not the model's main set, whose volumes carry the test split's masks
  (:mod:`ctdiff.sampling.conditions`): a segmenter trained on those would have seen the test nodules' places
  and sizes, and the test split would be no clean evaluation set.
- The real arm depends on no model: the workflow runs it once per run and every model's synthetic arms stand
  beside it.
- Same budget: the arms differ only in where their batches come from, not in steps, batch size, learning rate,
  network or seed; a bigger synthetic set is not more training.
- The prediction is the probability above ``downstream.threshold`` (0.5), not tuned on the test set.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctdiff.config import DownstreamConfig, to_dict
from ctdiff.downstream.scores import summarise, volume_scores
from ctdiff.downstream.segmenter import Case, predict, train_segmenter
from ctdiff.files import load_volume, write_json
from ctdiff.machine import describe
from ctdiff.plan import DOWNSTREAM_ARMS
from ctdiff.sampling.conditions import masks_beside

#: What each arm trains on, as the report says it.
ARM_DATA = {"real": "the real training volumes with their consensus masks",
            "synthetic": "synthetic volumes with the masks they were drawn with",
            "combined": "real and synthetic, drawn 1:1"}


def read_cases(pairs: Sequence[tuple[Path, Path]]) -> list[Case]:
    """The cases of (volume, mask) file pairs; ``ValueError`` naming both files where their grids differ."""
    cases = []
    for volume_path, mask_path in pairs:
        volume, affine = load_volume(Path(volume_path))
        mask, mask_affine = load_volume(Path(mask_path))
        if volume.shape != mask.shape or not np.allclose(affine, mask_affine, atol=1e-3):
            raise ValueError(f"{mask_path} is not on the grid of {volume_path} "
                             f"(shapes {mask.shape} and {volume.shape})")
        cases.append(Case(str(volume_path), volume, np.rint(mask).astype(np.uint8)))
    return cases


def sample_pairs(samples: Sequence[Path]) -> list[tuple[Path, Path]]:
    """Each sample ``{i:04d}.nii.gz`` with the mask it was drawn with, ``nodules/{i:04d}.nii.gz`` beside it;
    ``ValueError`` naming a missing mask (a set drawn by an unconditional model has none)."""
    masks = masks_beside(samples, "the synthetic arm needs the mask each sample was drawn with, which only a "
                                  "model.condition: nodules model writes")
    return [(Path(p), m) for p, m in zip(samples, masks)]


def downstream_arm(arm: str, *, real: Sequence[tuple[Path, Path]] = (), synthetic: Sequence[tuple[Path, Path]] = (),
                   test: Sequence[tuple[Path, Path]], settings: DownstreamConfig, out: Path | None = None,
                   n_boot: int = 200, level: float = 0.95, model: str | None = None,
                   device: str | torch.device = "cpu") -> dict[str, Any]:
    """Train arm ``arm``'s segmenter on ``real`` and/or ``synthetic`` (volume, mask) pairs as the arm takes them,
    score it on the ``test`` pairs and return (and write to ``out``, JSON) the record: the arm, the model, what it
    trained on, the summary (:func:`ctdiff.downstream.scores.summarise`, intervals from ``n_boot`` and ``level``)
    with every test volume's scores, the loss curve's end, the settings and the cost. ``ValueError`` for an
    unknown arm, an arm without its training data, or volumes of different sizes."""
    if arm not in DOWNSTREAM_ARMS:
        raise ValueError(f"downstream arm {arm!r}: must be one of {', '.join(DOWNSTREAM_ARMS)}")
    uses = {"real": (True, False), "synthetic": (False, True), "combined": (True, True)}[arm]
    for used, given, name in zip(uses, (real, synthetic), ("real", "synthetic")):
        if used and not given:
            raise ValueError(f"the {arm} arm trains on {name} volumes, and none were given")
    sources = [read_cases(pairs) for used, pairs in zip(uses, (real, synthetic)) if used]
    test_cases = read_cases(test)
    if not test_cases:
        raise ValueError("no held-out volume to score the segmenter on")
    shapes = {c.volume.shape for cases in (*sources, test_cases) for c in cases}
    if len(shapes) > 1:
        raise ValueError(f"the {arm} arm's volumes differ in size: {sorted(shapes)}")
    device = torch.device(device)
    start = time.perf_counter()
    net, losses = train_segmenter(sources, channels=settings.channels, res_blocks=settings.res_blocks,
                                  groups=settings.groups, steps=settings.steps, batch_size=settings.batch_size,
                                  lr=settings.lr, seed=settings.seed, patch=settings.patch,
                                  foreground=settings.foreground, device=device)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    per_volume = [{"volume": Path(c.name).name,
                   **volume_scores(predict(net, c.volume, device, settings.patch), c.mask, settings.threshold)}
                  for c in test_cases]
    score_s = time.perf_counter() - start
    summary = summarise(per_volume, n_boot=n_boot, level=level, seed=settings.seed)
    tail = losses[-max(1, len(losses) // 10):]
    record = {
        "arm": arm, "model": model, "trains_on": ARM_DATA[arm],
        "n_real": len(real) if uses[0] else 0, "n_synthetic": len(synthetic) if uses[1] else 0,
        **summary,
        "per_volume": per_volume,
        "loss": {"first": losses[0] if losses else None, "last_tenth_mean": float(np.mean(tail)) if losses else None},
        "settings": to_dict(settings),
        "cost": {"train_seconds": train_s, "seconds_per_step": train_s / max(1, settings.steps),
                 "score_seconds": score_s, "device": describe(device)},
        "training_volumes": [str(p) for p, _ in (*(real if uses[0] else ()), *(synthetic if uses[1] else ()))],
    }
    if out is not None:
        write_json(Path(out), record)
    return record
