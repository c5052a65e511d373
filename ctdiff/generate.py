"""Sampling stage: synthetic volumes from the EMA weights of a checkpoint, resumable and deterministic.

* Sample ``i`` depends only on ``(sample.seed, i)``: each batch element draws all its noise from its own
  generator, so batch size and batch composition do not change a volume.
* Finished samples go to a cache folder keyed by the checkpoint's sha256 and the sampler settings (never a
  declared output); a rerun after a kill skips them. Only when every sample exists are they copied to the
  declared outputs, each write atomic.
* Outputs are float32 in [0, 1] with the affine convention of the training data: the first training
  volume's orientation and spacing, centred on the origin.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ctdiff.checkpoint import load_for_sampling
from ctdiff.diffusion.samplers import sample
from ctdiff.io import atomic_path, file_sha256, save_volume, write_json


def sample_generator(seed: int, index: int) -> torch.Generator:
    """The CPU generator that owns every random draw of sample ``index``."""
    state = np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def sample_affine(reference: np.ndarray, size: int) -> np.ndarray:
    """``reference``'s orientation and spacing, translated so the centre voxel sits at the origin."""
    affine = np.array(reference, dtype=np.float64)
    centre = np.full(3, (size - 1) / 2.0)
    affine[:3, 3] = -affine[:3, :3] @ centre
    return affine


def generate(
    checkpoint: Path,
    out_files: Sequence[Path],
    cache_dir: Path,
    *,
    sampler: str = "ddpm",
    steps: int | None = None,
    eta: float = 0.0,
    batch_size: int = 8,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
) -> None:
    """Write ``len(out_files)`` samples; ``out_files[i]`` holds sample ``i``."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, schedule, meta = load_for_sampling(checkpoint, device)
    data = meta["config"]["data"]
    size = int(data["size"])
    affine = sample_affine(np.asarray(data["affine"]), size)

    settings = {"checkpoint_sha256": file_sha256(Path(checkpoint)), "sampler": sampler, "steps": steps,
                "eta": eta, "seed": seed}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / key
    cache.mkdir(parents=True, exist_ok=True)
    write_json(cache / "settings.json", settings)

    def cached(i: int) -> Path:
        return cache / f"{i:04d}.nii.gz"

    todo = [i for i in range(len(out_files)) if not cached(i).exists()]
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        x = sample(
            model, schedule, (1, size, size, size), [sample_generator(seed, i) for i in chunk],
            sampler=sampler, steps=steps, eta=eta, device=device, progress=progress,
        )
        volumes = ((x.float().cpu().numpy()[:, 0] + 1.0) / 2.0).clip(0.0, 1.0).astype(np.float32)
        for i, volume in zip(chunk, volumes):
            save_volume(cached(i), volume, affine)

    for i, out in enumerate(out_files):
        with atomic_path(Path(out)) as tmp:
            shutil.copyfile(cached(i), tmp)
