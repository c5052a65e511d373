"""Shared tiny fixtures: a handful of 8³ volumes in [0, 1] and a matching tiny model configuration."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ctdiff.config import Config, DiffusionConfig, ModelConfig, PreprocessConfig, TrainConfig
from ctdiff.ingest.cohort import summarise
from ctdiff.ingest.convert import VOLUME_NAME, convert_or_reject
from ctdiff.ingest.discover import discover
from ctdiff.ingest.preprocess import preprocess
from ctdiff.files import save_volume

# The tests' networks and volumes are tiny (8³ to 16³): one torch thread runs them as fast as two on an idle
# 2-core machine and many times faster on a busy one, where the second OpenMP thread waits for a core at every
# operation. Processes the tests start keep torch's default.
torch.set_num_threads(1)

#: Most parallel test processes ``-n auto`` starts (pyproject's addopts): each imports torch, and the longest
#: modules (the end-to-end workflow run, the README's commands in a fresh venv) bound the wall time beyond that.
MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one process per CPU this run may use, at most :data:`MAX_WORKERS`."""
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))


def pytest_collection_modifyitems(config, items):
    """Modules holding ``slow`` tests first, most slow tests first, each module's tests in their own order:
    the parallel processes take one module at a time in this order (``--dist loadscope``), so the longest ones
    start at once instead of last."""
    slow: dict[str, int] = {}
    for item in items:
        slow.setdefault(item.module.__name__, 0)
        slow[item.module.__name__] += item.get_closest_marker("slow") is not None
    rank = {name: k for k, name in enumerate(sorted(slow, key=lambda name: -slow[name]))}
    items.sort(key=lambda item: rank[item.module.__name__])


SIZE = 8
TINY_MODEL = ModelConfig(channels=(4, 8), res_blocks=1, attention=False, groups=2)
TINY_DIFFUSION = DiffusionConfig(timesteps=20)
AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])
AFFINE[:3, 3] = [-120.0, -100.0, -50.0]


def write_volumes(folder: Path, n: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"V{i:02d}.nii.gz"
        save_volume(path, rng.random((SIZE,) * 3, dtype=np.float32), AFFINE)
        paths.append(path)
    return paths


@pytest.fixture
def volumes(tmp_path):
    return write_volumes(tmp_path / "volumes", 4)


def unactivated_env() -> dict[str, str]:
    """The environment with this interpreter's bin folder removed from ``PATH``: a user who runs
    ``.venv/bin/snakemake`` without activating the venv."""
    env = dict(os.environ)
    here = Path(sys.executable).parent.resolve()
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and Path(p).resolve() != here)
    env.pop("VIRTUAL_ENV", None)
    return env


def bin_env() -> dict[str, str]:
    """The environment with this interpreter's bin folder first, so ``accelerate`` is this env's."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def tiny_train_config(**overrides) -> TrainConfig:
    values = dict(steps=6, batch_size=2, lr=1e-3, ema_decay=0.9, checkpoint_every=2, log_every=1, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


def tiny_config(**train_overrides) -> Config:
    """The tiny model and diffusion, :func:`tiny_train_config` with ``train_overrides``, 8³ volumes of 3 mm."""
    return Config(preprocess=PreprocessConfig(size=SIZE, spacing_mm=3.0), model=TINY_MODEL,
                  diffusion=TINY_DIFFUSION, train=tiny_train_config(**train_overrides))


def write_train_folder(folder: Path, *, rows=((10, 5.0), (20, 6.0), (30, 7.5), (40, 8.5)), machine=None) -> Path:
    """A train/ folder as the variants table reads it: a checkpoint at the last logged step (recording
    ``machine`` when given) and its log.csv of ``(step, elapsed_s)`` rows."""
    from ctdiff.training.checkpoint import save_checkpoint
    from ctdiff.training.loop import write_log

    folder.mkdir(parents=True, exist_ok=True)
    payload = {"config": {}, "ema": {}, "step": rows[-1][0]}
    if machine is not None:
        payload["machine"] = machine
    save_checkpoint(folder / "model.pt", payload)
    write_log(folder / "log.csv", [{"step": s, "loss": 0.1, "lr": 1e-3, "elapsed_s": e} for s, e in rows])
    return folder


def run_ingestion(root: Path, out: Path, *, size: int, spacing_mm: float) -> tuple[dict[str, dict], list[str]]:
    """discover -> convert_or_reject for every item -> cohort summary -> preprocess the converted ones, as the
    workflow's data rules do, without Snakemake. Returns (each item's QC row, the usable items)."""
    items = discover(root, out / "qc" / "inventory.tsv", out / "discover" / "series.json",
                     annotations_tsv=out / "discover" / "annotations.tsv")
    rows = {}
    for item in items:
        rows[item] = convert_or_reject(root, out / "discover" / "series.json", item, out / "nifti" / item,
                                       out / "qc" / "convert" / f"{item}.tsv")
    usable = summarise(out / "qc" / "inventory.tsv", sorted((out / "qc" / "convert").glob("*.tsv")),
                       out / "qc" / "cohort.tsv", out / "qc" / "summary.tsv",
                       found_xml_tsv=out / "discover" / "annotations.tsv",
                       nifti_dirs=[out / "nifti" / item for item in items], root=root,
                       xml_tsv=out / "qc" / "annotations.tsv")
    for item in usable:
        preprocess(out / "nifti" / item / VOLUME_NAME, out / "preprocessed" / f"{item}.nii.gz",
                   size=size, spacing_mm=spacing_mm)
    return rows, usable
