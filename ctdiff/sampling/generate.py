"""Sampling stage: synthetic volumes from the EMA weights of a checkpoint, resumable and deterministic.

* Sample ``i`` depends only on ``(sample.seed, i)``: each batch element draws all its noise from its own
  generator, so batch size and batch composition do not change a volume.
* Finished samples go to a cache folder keyed by the checkpoint's sha256 and the sampler settings (never a
  declared output); a rerun after a kill skips them. Only when every sample exists are they copied to the
  declared outputs, each write atomic.
* Outputs are float32 in [0, 1] with the affine convention of the training data: the first training
  volume's orientation and spacing, centred on the origin. ``hu_files`` optionally receive the same
  volumes in HU (int16, through the training data's ``hu_window``).
* Several processes (``accelerate launch``, one per GPU) share the work by sample index: process ``r`` of
  ``n`` draws the unfinished samples ``r, r + n, …``; since sample ``i`` depends only on ``(seed, i)``, the
  volumes are the same whatever the number of processes. ``batch_size`` is per process. The main process
  writes the declared outputs once every process has finished.
* ``settings`` is the config's ``sample`` section (its ``n`` and ``hu`` are the caller's: ``out_files`` and
  ``hu_files`` say what to write). ``precision="bf16"`` runs the network under bf16 autocast (the chain
  itself stays float32); ``compile=True`` wraps it in ``torch.compile``. Both are part of the cache key:
  their samples differ from fp32 eager ones by rounding.
* Cost: each cached sample has a ``{i:04d}.json`` beside it with the seconds its batch took per volume, the
  batch size and the machine (:func:`ctdiff.machine.describe`); ``sampling.json`` beside the outputs sums
  them up (:func:`sampling_cost`), whichever run drew them.
* A checkpoint trained with ``model.condition: nodules`` needs ``condition_masks`` (one nodule mask per sample,
  :mod:`ctdiff.sampling.conditions` chooses them): each is checked (shape), encoded (:mod:`ctdiff.model.condition`) and
  given to every network call with classifier-free guidance of scale ``settings.guidance``; the masks'
  sha256s and the scale join the cache key, and each sample's mask and table are written beside it
  (``nodules/``). Cost: 1 network evaluation per step at guidance 0 or 1, a doubled batch otherwise; so
  that ``batch_size`` stays the number of volumes in one network call (what sets the memory), a guided set
  draws ``batch_size // 2`` volumes at a time (at least 1).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

from ctdiff import seeds
from ctdiff.training.checkpoint import load_for_sampling
from ctdiff.sampling.conditions import write_beside
from ctdiff.config import SampleConfig
from ctdiff.ingest.intensity import from_model_range, to_hu
from ctdiff.training.trainset import condition_item
from ctdiff.diffusion.samplers import network_evaluations
from ctdiff.diffusion.sampling import sample
from ctdiff.files import atomic_path, file_sha256, load_volume, save_volume, write_json
from ctdiff.machine import check_compile, describe
from ctdiff.model import representation
from ctdiff.model.condition import copies_per_call, guided, null_condition
from ctdiff.options import PRECISIONS, check_guidance, check_sampler_fits


#: How long a process waits for the others after drawing its share of the samples.
BARRIER_TIMEOUT = timedelta(hours=48)


def sample_generator(seed: int, index: int) -> torch.Generator:
    """The CPU generator that owns every random draw of sample ``index``."""
    return seeds.generator(seed, index)


def sample_affine(reference: np.ndarray, size: int) -> np.ndarray:
    """``reference``'s orientation and spacing, translated so the centre voxel sits at the origin."""
    affine = np.array(reference, dtype=np.float64)
    centre = np.full(3, (size - 1) / 2.0)
    affine[:3, 3] = -affine[:3, :3] @ centre
    return affine


def network(model: torch.nn.Module, device: torch.device, precision: str, compile: bool):
    """``model`` as the sampler calls it: optionally compiled, optionally under bf16 autocast."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    net = torch.compile(model) if compile else model
    if precision == "fp32":
        return net

    def bf16(x: torch.Tensor, t: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        # ``cond``: the condition a nodule-conditioned network takes as its third argument (ctdiff.model.condition)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return net(x, t, *cond)

    return bf16


def generate(
    checkpoint: Path,
    out_files: Sequence[Path],
    cache_dir: Path,
    settings: SampleConfig,
    *,
    hu_files: Sequence[Path] | None = None,
    device: str | None = None,
    progress: bool = True,
    condition_masks: Sequence[Path] | None = None,
) -> None:
    """Write ``len(out_files)`` samples; ``out_files[i]`` (and ``hu_files[i]``) holds sample ``i``.

    ``settings`` gives the sampler, steps, eta, batch size (per process), seed, precision, compile and
    guidance; ``condition_masks[i]`` is the nodule mask sample ``i`` is drawn with (conditioned checkpoints).
    """
    if hu_files is not None and len(hu_files) != len(out_files):
        raise ValueError(f"{len(hu_files)} HU files for {len(out_files)} samples")
    if condition_masks is not None and len(condition_masks) != len(out_files):
        raise ValueError(f"{len(condition_masks)} nodule masks for {len(out_files)} samples")
    # cpu=True lets Accelerate set up its CPU (gloo) process group when launched without GPUs.
    cpu = device == "cpu" or not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU")
    # The processes meet after sampling, when the slowest has drawn its share: give the group a timeout for that
    # instead of NCCL's 10 minutes (a batch of DDPM-1000 at 128³ alone takes several).
    state = PartialState(cpu=cpu, timeout=BARRIER_TIMEOUT)
    dev = torch.device(device) if device else state.device
    if settings.compile:  # before any work: a host that cannot compile fails at the first network call otherwise
        check_compile("sample.compile", dev.type)
    model, schedule, cfg = load_for_sampling(checkpoint, dev)
    # Before any sampling: the sampler must fit the objective the checkpoint was trained with, and the steps
    # must suit the sampler (both raise ValueError naming the key and the allowed values).
    objective = cfg.diffusion.objective
    check_sampler_fits(settings.sampler, objective, where=f"checkpoint {checkpoint}: ")
    try:
        network_evaluations(settings.sampler, settings.steps, schedule.timesteps)
    except ValueError as err:
        raise ValueError(f"sample.steps={settings.steps} with checkpoint {checkpoint}: {err}") from None
    conditioned = cfg.model.condition != "none"
    if conditioned and condition_masks is None:
        raise ValueError(f"checkpoint {checkpoint} was trained with model.condition: {cfg.model.condition}: give "
                         "the nodule masks to draw with (ctdiff sample --nodules-from DIR or --nodule x,y,z,d)")
    check_guidance(settings.guidance, conditioned, masks=condition_masks is not None,
                   where=f"checkpoint {checkpoint}: ")
    forward = network(model, dev, settings.precision, settings.compile)
    size = cfg.data.size
    affine = sample_affine(np.asarray(cfg.data.affine), size)
    # The chain runs in the checkpoint's representation (voxels, or 8 Haar sub-bands at half resolution); its
    # x0 clip keeps the voxels in [-1, 1], and the final x0 goes back to voxels.
    rep = cfg.model.representation
    shape = representation.network_shape(rep, size)

    key_fields = {"checkpoint_sha256": file_sha256(Path(checkpoint)), "sampler": settings.sampler,
                  "steps": settings.steps, "eta": settings.eta, "seed": settings.seed,
                  "precision": settings.precision, "compile": settings.compile}
    if conditioned:
        key_fields |= {"guidance": settings.guidance,
                       "masks_sha256": hashlib.sha256("".join(file_sha256(Path(m)) for m in condition_masks)
                                                      .encode()).hexdigest()}
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / key
    if state.is_main_process:
        cache.mkdir(parents=True, exist_ok=True)
        write_json(cache / "settings.json", key_fields)
    state.wait_for_everyone()

    def cached(i: int) -> Path:
        return cache / f"{i:04d}.nii.gz"

    todo = [i for i in range(len(out_files)) if not cached(i).exists()]
    state.wait_for_everyone()  # every process has listed the same unfinished samples before any is written
    mine = todo[state.process_index :: state.num_processes]
    print(f"process {state.process_index} of {state.num_processes}: {len(mine)} of {len(todo)} unfinished "
          f"samples {mine}", flush=True)
    machine = describe(dev, state.num_processes)
    # Volumes drawn together: one network call holds copies_per_call of each (guidance doubles the batch).
    drawn = max(1, settings.batch_size // copies_per_call(settings.guidance))  # guidance 1 (unconditioned): all
    for start in range(0, len(mine), drawn):
        chunk = mine[start : start + drawn]
        began = time.perf_counter()
        cond = null = None
        if conditioned:  # encoded in voxels, then brought into the diffusion's representation like x
            voxel_cond = torch.from_numpy(np.stack([_encoded(Path(condition_masks[i]), size) for i in chunk])).to(dev)
            cond = representation.encode(voxel_cond, rep)
            null = representation.encode(null_condition(voxel_cond), rep)
        x = sample(
            guided(forward, cond, settings.guidance, null) if conditioned else forward, schedule, shape,
            [sample_generator(settings.seed, i) for i in chunk],
            sampler=settings.sampler, steps=settings.steps, eta=settings.eta, objective=objective, device=dev,
            progress=progress and state.is_local_main_process, clip=representation.x0_clip(rep),
        )
        x = representation.decode(x, rep).clamp(-1.0, 1.0)  # voxels: x unchanged (already clamped)
        volumes = from_model_range(x.float().cpu().numpy()[:, 0]).astype(np.float32)  # .cpu() waits for the device
        seconds = (time.perf_counter() - began) / len(chunk)
        for i, volume in zip(chunk, volumes):
            write_json(cached(i).with_name(f"{i:04d}.json"), {"seconds": seconds, "batch": len(chunk),
                                                            "machine": machine})
            save_volume(cached(i), volume, affine)
    state.wait_for_everyone()

    if state.is_main_process:
        for i, out in enumerate(out_files):
            with atomic_path(Path(out)) as tmp:
                shutil.copyfile(cached(i), tmp)
            if hu_files is not None:
                write_hu([cached(i)], [Path(hu_files[i])], cfg.data.hu_window)
            if conditioned:
                labels, _ = load_volume(Path(condition_masks[i]))
                write_beside(Path(out).parent, i, labels, affine, Path(condition_masks[i]))
        write_json(Path(out_files[0]).parent / "sampling.json",
                   sampling_cost([cached(i).with_name(f"{i:04d}.json") for i in range(len(out_files))]))
    state.wait_for_everyone()


def write_hu(samples: Sequence[Path], hu_files: Sequence[Path], hu_window: tuple[float, float]) -> None:
    """Write each sample (float32 in [0, 1]) to the HU file at the same position, int16 through ``hu_window``
    (the preprocessing window the model was trained on), on the sample's own affine."""
    if len(samples) != len(hu_files):
        raise ValueError(f"{len(hu_files)} HU files for {len(samples)} samples")
    for path, out in zip(samples, hu_files):
        volume, affine = load_volume(Path(path))
        save_volume(Path(out), to_hu(volume, hu_window), affine)


def _encoded(mask: Path, size: int) -> np.ndarray:
    """The condition of nodule mask ``mask`` (``[2, S, S, S]``, :func:`ctdiff.model.condition.encode_mask` with
    the spacing of its affine); ``ValueError`` naming it when it is not ``size``³ whole labels."""
    labels, mask_affine = load_volume(mask)
    return condition_item(mask, labels, mask_affine, size)


def sampling_cost(timings: Sequence[Path]) -> dict:
    """What drawing a set cost, from the per-sample timing files :func:`generate` writes before each cached
    volume (a file missing is left out): ``seconds_per_volume``, the median over the timed samples of
    one device's seconds per volume in its batch (the median, so that a first batch that paid for
    ``torch.compile`` or cuDNN's algorithm search does not count), ``timed`` of ``n`` samples, and the
    ``machines`` that drew them. ``seconds_per_volume`` is None when no sample was timed."""
    records = [json.loads(p.read_text()) for p in timings if p.exists()]
    machines = []
    for r in records:
        if r["machine"] not in machines:
            machines.append(r["machine"])
    return {"seconds_per_volume": statistics.median(r["seconds"] for r in records) if records else None,
            "timed": len(records), "n": len(timings), "batch": max((r["batch"] for r in records), default=None),
            "machines": machines}
