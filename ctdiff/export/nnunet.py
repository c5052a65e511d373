"""nnU-Net v2 raw datasets: the real training split, a model's synthetic samples, or both, as a training set.

nnU-Net (Isensee et al., Nature Methods 2021) reads a dataset from its "raw" format
(nnU-Net v2's ``documentation/dataset_format.md``)::

    DatasetNNN_Name/
        dataset.json                  channel_names, labels, numTraining, file_ending (and a name, a description)
        imagesTr/{case}_0000.nii.gz   the image of each case: channel 0000, the only one
        labelsTr/{case}.nii.gz        its labels, on the image's grid (same shape and affine)
        cases.tsv                     ctdiff's own: where each case came from (nnU-Net reads no other file)

Images are in HU, float32: ``lo + v (hi - lo)`` of a preprocessed or synthetic volume ``v`` in [0, 1] with
the run's ``preprocess.hu_window`` ``(lo, hi)`` (:mod:`ctdiff.ingest.intensity`; nothing is rounded, so the
image is the source to float rounding), and the channel is named ``CT``, which gives them nnU-Net's CT
normalisation: HU clipped to the 0.5-99.5 percentiles of the labelled voxels of the whole training set (here
the nodules), minus their mean, over their SD. Labels are uint8: 0 background, 1 nodule, every nodule of a
consensus mask (``ctdiff.ingest.annotations``) or of the mask a synthetic volume was drawn with
(:mod:`ctdiff.sampling.conditions`) merged into label 1. Case names say where a case came from and are unique
in a dataset holding both: ``real_{item}`` for a real volume, ``synthetic_{i:04d}`` for sample ``i``.

A dataset is written into a temporary sibling folder and renamed into place when complete
(:func:`ctdiff.files.atomic_folder`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np

from ctdiff import __version__
from ctdiff.files import atomic_folder, save_volume, write_json, write_tsv
from ctdiff.sampling.conditions import masks_beside

#: A dataset folder's name as nnU-Net v2 finds it by id: ``Dataset``, three digits, ``_``, a name.
DATASET_REGEX = r"Dataset(\d{3})_([A-Za-z0-9][A-Za-z0-9_.+-]*)"
#: The one input channel; nnU-Net picks its intensity normalisation by this name ("CT": clipped to percentiles
#: of the labelled voxels' HU, then z-scored with their mean and SD).
CHANNEL_NAMES = {"0": "CT"}
LABELS = {"background": 0, "nodule": 1}
FILE_ENDING = ".nii.gz"
#: The columns of ``cases.tsv``: each case's name, whether it is real or synthetic, its source volume and mask,
#: and its nodule voxels.
CASE_COLUMNS = ("case", "source", "image", "labels", "nodule_voxels")
#: How far (mm) an image's and its mask's affines may differ, entry by entry: nnU-Net compares spacing,
#: origin and direction with a tolerance of its own; the labels are written with the image's affine.
AFFINE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Case:
    """One training case: its ``name`` (``real_{item}`` or ``synthetic_{i:04d}``), whether it is ``real`` or
    ``synthetic``, its volume in [0, 1] (``image``) and its nodule mask on the same grid (``labels``)."""

    name: str
    source: Literal["real", "synthetic"]
    image: Path
    labels: Path


def real_cases(volumes: Path, masks: Path, items: Sequence[str]) -> list[Case]:
    """The cases of the real ``items`` (sorted): ``volumes/{item}.nii.gz`` (preprocessed, [0, 1]) and its
    consensus mask ``masks/{item}.nii.gz``. ``ValueError`` names the first missing file."""
    cases = [Case(f"real_{item}", "real", Path(volumes) / f"{item}.nii.gz", Path(masks) / f"{item}.nii.gz")
             for item in sorted(items)]
    for case in cases:
        for path in (case.image, case.labels):
            if not path.exists():
                raise ValueError(f"{path} does not exist: {case.name} cannot be exported")
    return cases


def sample_volumes(folder: Path) -> list[Path]:
    """The samples of a sample set folder: its ``{i:04d}.nii.gz`` files, in index order."""
    return sorted((p for p in Path(folder).iterdir() if re.fullmatch(r"\d{4,}\.nii\.gz", p.name)),
                  key=lambda p: int(p.name.removesuffix(".nii.gz")))


def synthetic_cases(samples: Sequence[Path]) -> list[Case]:
    """The cases of synthetic ``samples`` (``{i:04d}.nii.gz`` of a sample set): each with the mask it was drawn
    with, ``nodules/{i:04d}.nii.gz`` beside it. A sample without one comes from an unconditional model, which
    gives no labels to train on: ``ValueError`` naming the mask and ``model.condition``."""
    masks = masks_beside(samples, "a sample with no nodule mask beside it was drawn by an unconditional model "
                                  "(model.condition: none), and an nnU-Net training case needs its labels; export "
                                  "samples of a model trained with model.condition: nodules")
    return [Case(f"synthetic_{Path(sample).name.removesuffix('.nii.gz')}", "synthetic", Path(sample), mask)
            for sample, mask in zip(samples, masks)]


def hu_image(volume: np.ndarray, hu_window: tuple[float, float]) -> np.ndarray:
    """A volume in [0, 1] in HU, float32: ``lo + v (hi - lo)``, unrounded (unlike the int16 HU copies of
    :func:`ctdiff.ingest.intensity.to_hu`)."""
    lo, hi = (float(v) for v in hu_window)
    return (lo + np.asarray(volume, np.float64) * (hi - lo)).astype(np.float32)


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


def write_case(case: Case, images: Path, labels: Path, hu_window: tuple[float, float]) -> int:
    """Write ``case``'s image (HU, :func:`hu_image`) to ``images/{name}_0000.nii.gz`` and its labels (0/1,
    uint8) to ``labels/{name}.nii.gz``, both with the image's affine; returns its nodule voxels. Refuses
    (``ValueError`` naming the files) an image outside [0, 1], a mask that is not whole non-negative labels,
    and a mask whose shape or affine is not the image's."""
    volume, affine = _read(case.image)
    mask, mask_affine = _read(case.labels)
    if volume.ndim != 3 or mask.shape != volume.shape:
        raise ValueError(f"{case.labels}: shape {mask.shape} is not the shape {volume.shape} of {case.image}")
    if not np.allclose(mask_affine, affine, rtol=0, atol=AFFINE_TOLERANCE):
        raise ValueError(f"{case.labels}: its affine is not the affine of {case.image} (largest difference "
                         f"{np.abs(mask_affine - affine).max():.3g} mm)")
    lo, hi = float(np.min(volume)), float(np.max(volume))
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"{case.image}: values in [{lo:g}, {hi:g}], not a volume in [0, 1] (a preprocessed "
                         "volume or a sample, not HU)")
    if np.any(mask < 0) or np.any(mask != np.round(mask)):
        raise ValueError(f"{case.labels}: not a label mask (whole numbers >= 0)")
    binary = (mask > 0).astype(np.uint8)
    save_volume(images / f"{case.name}_0000{FILE_ENDING}", hu_image(volume, hu_window), affine)
    save_volume(labels / f"{case.name}{FILE_ENDING}", binary, affine)
    return int(binary.sum())


def dataset_json(name: str, cases: Sequence[Case], hu_window: tuple[float, float]) -> dict[str, Any]:
    """nnU-Net v2's ``dataset.json`` of ``cases``: the four keys it reads (``channel_names``, ``labels``,
    ``numTraining``, ``file_ending``) and a name and description, as its ``generate_dataset_json`` writes."""
    n_real = sum(c.source == "real" for c in cases)
    n_synthetic = len(cases) - n_real
    parts = [f"{n} {kind} chest CT volume{'s' * (n != 1)}" for n, kind in
             ((n_real, "real (training split)"), (n_synthetic, "synthetic")) if n]
    return {
        "channel_names": CHANNEL_NAMES,
        "labels": LABELS,
        "numTraining": len(cases),
        "file_ending": FILE_ENDING,
        "name": name,
        "description": (f"{' and '.join(parts)} in HU (window {list(hu_window)}); labels: 1 = nodule (consensus "
                        "mask, or the mask a synthetic volume was drawn with). Cases real_* and synthetic_*; "
                        "cases.tsv names their sources."),
        "converted_by": f"ctdiff {__version__}",
    }


def write_dataset(folder: Path, cases: Sequence[Case], hu_window: tuple[float, float]) -> dict[str, Any]:
    """Write ``cases`` as the nnU-Net v2 raw dataset ``folder`` (``.../DatasetNNN_Name``), atomically: the
    images, the labels, ``dataset.json`` and ``cases.tsv`` (:data:`CASE_COLUMNS`). Returns the dataset.json.
    Refuses (``ValueError``) a folder name nnU-Net would not find, no case, a case name given twice, cases
    without a single nodule voxel between them (nnU-Net's planning takes its CT intensity statistics from the
    labelled voxels and stops on a dataset that has none), and what :func:`write_case` refuses."""
    folder = Path(folder)
    match = re.fullmatch(DATASET_REGEX, folder.name)
    if match is None:
        raise ValueError(f"{folder}: an nnU-Net dataset folder is named Dataset<3 digits>_<name> "
                         f"(e.g. Dataset500_real), got {folder.name!r}")
    if not cases:
        raise ValueError(f"{folder}: no case to export")
    names = [c.name for c in cases]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{folder}: case {twice[0]} is given twice")
    lo, hi = (float(v) for v in hu_window)
    if not lo < hi:
        raise ValueError(f"HU window {[lo, hi]}: must be [low, high] with low < high")
    meta = dataset_json(match.group(2), cases, (lo, hi))
    with atomic_folder(folder) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        rows = []
        for case in cases:
            voxels = write_case(case, tmp / "imagesTr", tmp / "labelsTr", (lo, hi))
            rows.append({"case": case.name, "source": case.source, "image": str(case.image),
                         "labels": str(case.labels), "nodule_voxels": voxels})
        if not any(row["nodule_voxels"] for row in rows):
            raise ValueError(f"{folder}: none of its {len(rows)} cases has a nodule voxel (at this grid the nodules "
                             "may be smaller than a voxel); nnU-Net plans its CT normalisation on labelled voxels "
                             "and cannot train on it")
        write_tsv(tmp / "cases.tsv", rows, CASE_COLUMNS)
        write_json(tmp / "dataset.json", meta)
    return meta


def export(folder: Path, hu_window: tuple[float, float], *, volumes: Path | None = None, masks: Path | None = None,
           items: Sequence[str] = (), samples: Sequence[Path] = ()) -> dict[str, Any]:
    """Write the nnU-Net dataset ``folder`` of the real ``items`` (:func:`real_cases` of ``volumes`` and
    ``masks``, default ``volumes/nodules``) followed by the synthetic ``samples`` (:func:`synthetic_cases`):
    one arm or the other, or both in one dataset. Returns its dataset.json (:func:`write_dataset`)."""
    cases = []
    if items:
        if volumes is None:
            raise ValueError("real items to export, and no folder of preprocessed volumes to take them from")
        cases += real_cases(Path(volumes), Path(masks) if masks else Path(volumes) / "nodules", items)
    cases += synthetic_cases(samples)
    return write_dataset(folder, cases, hu_window)


__all__ = ["export", "Case", "real_cases", "sample_volumes", "synthetic_cases", "hu_image", "write_case",
           "dataset_json", "write_dataset", "DATASET_REGEX", "CHANNEL_NAMES", "LABELS", "FILE_ENDING", "CASE_COLUMNS"]
