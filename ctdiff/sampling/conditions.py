"""The nodule masks conditioned samples are drawn with (``model.condition: nodules``), and the copies written
beside the samples.

Two sources, chosen on the ``ctdiff sample`` command line:

* held-out masks (``--nodules-from DIR --nodule-items LIST``, what the workflow passes: the preprocessed masks
  of the test split): synthetic volume ``i`` takes the mask of the ``i``-th item of the sorted list, cycling
  when ``sample.n`` exceeds the list (volume ``i`` takes item ``i mod n_test``), so the synthetic and real
  sets share their nodule layouts and the metrics compare like with like;
* requested nodules (``--nodule x,y,z,diameter_mm``, repeatable): balls painted on the sample's grid, one
  label each, the same mask for every volume. Centres are voxel indices ``i, j, k`` of the sample's array,
  or with ``--nodule-mm`` patient millimetres (LPS, as the nodule tables' ``centroid_*_mm``) in the frame
  samples are written in, whose origin is the volume's centre voxel. A centre outside the volume or a
  diameter <= 0 is refused, naming the value.

Beside sample ``{i:04d}.nii.gz`` go ``nodules/{i:04d}.nii.gz`` (the labels it was drawn with, on the
sample's affine) and ``nodules/{i:04d}.tsv`` (the held-out item's nodule table, its ``centroid_i/j/k`` valid
on the sample's grid and its millimetre columns in the real scan's frame; or the requested nodules' table).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ctdiff.ingest.annotations.nodules import TABLE_COLUMNS
from ctdiff.files import atomic_path, save_volume, write_tsv

_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


def parse_nodule(text: str) -> tuple[float, float, float, float]:
    """``"x,y,z,diameter_mm"`` → four floats; ``ValueError`` naming the text otherwise, or a diameter <= 0."""
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or not all(np.isfinite(values)):
        raise ValueError(f"--nodule {text!r} must be four numbers x,y,z,diameter_mm")
    if values[3] <= 0:
        raise ValueError(f"--nodule {text!r}: diameter {values[3]:g} mm must be > 0")
    return values


def held_out_items(items: Sequence[str], n: int) -> list[str]:
    """The held-out item each of ``n`` samples takes its mask from: the sorted ``items``, cycled."""
    order = sorted(items)
    return [order[i % len(order)] for i in range(n)] if order else []


def held_out_masks(folder: Path, items: Sequence[str], n: int) -> list[Path]:
    """The mask of each of ``n`` samples: ``folder/{item}.nii.gz`` of :func:`held_out_items`."""
    if not items:
        raise ValueError(f"no held-out item to take nodule masks from (folder {folder})")
    masks = [Path(folder) / f"{item}.nii.gz" for item in sorted(items)]
    missing = [str(m) for m in masks if not m.exists()]
    if missing:
        raise ValueError(f"nodule mask {missing[0]} does not exist ({len(missing)} of {len(masks)} missing)")
    return [Path(folder) / f"{item}.nii.gz" for item in held_out_items(items, n)]


def evaluation_masks(checkpoint: Path, synthetic: Sequence[Path], test_items: Sequence[str], volumes: Path
                     ) -> tuple[list[Path], list[Path]] | None:
    """For the evaluation of a set drawn from ``checkpoint``: None when it is unconditioned, else (the mask
    each synthetic volume was drawn with, beside it in ``nodules/``; the real volume ``volumes/{item}.nii.gz``
    that mask came from, :func:`held_out_items` of ``test_items``)."""
    from ctdiff.training.checkpoint import checkpoint_config, read_checkpoint

    if checkpoint_config(read_checkpoint(Path(checkpoint))["config"]).model.condition == "none":
        return None
    real = [Path(volumes) / f"{item}.nii.gz" for item in held_out_items(test_items, len(synthetic))]
    return drawn_masks(checkpoint, synthetic), real


def requested_mask(nodules: Sequence[tuple[float, float, float, float]], size: int, affine: np.ndarray, *,
                   mm: bool) -> tuple[np.ndarray, list[dict]]:
    """uint8 labels ``[size]*3`` with nodule ``n`` (1-based) a ball of its diameter around its centre (voxels
    whose centres lie within diameter/2 mm, distances measured with ``affine``'s spacing; at least the voxel
    nearest the centre), later nodules over earlier ones; and their table rows (:data:`TABLE_COLUMNS`).
    ``mm``: centres in LPS millimetres of ``affine``'s frame, else voxel indices. Refuses a centre outside
    the volume (``ValueError`` naming it)."""
    affine = np.asarray(affine, dtype=float)
    labels = np.zeros((size,) * 3, np.uint8)
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), axis=-1).astype(float)
    world = grid @ affine[:3, :3].T + affine[:3, 3]                       # RAS mm of every voxel centre
    rows = []
    for n, (x, y, z, diameter) in enumerate(nodules, start=1):
        if diameter <= 0:
            raise ValueError(f"--nodule {x:g},{y:g},{z:g},{diameter:g}: diameter {diameter:g} mm must be > 0")
        if mm:
            ras = np.array([x, y, z]) * _LPS_TO_RAS
            ijk = np.linalg.solve(affine[:3, :3], ras - affine[:3, 3])
        else:
            ijk = np.array([x, y, z], float)
            ras = affine[:3, :3] @ ijk + affine[:3, 3]
        if not np.all((ijk >= -0.5) & (ijk <= size - 0.5)):
            unit = "mm (LPS)" if mm else "voxels"
            raise ValueError(f"--nodule {x:g},{y:g},{z:g},{diameter:g}: centre ({x:g}, {y:g}, {z:g}) {unit} lies "
                             f"outside the {size}^3 volume (voxel {np.round(ijk, 2).tolist()})")
        ball = np.linalg.norm(world - ras, axis=-1) <= diameter / 2
        ball[tuple(np.clip(np.round(ijk).astype(int), 0, size - 1))] = True
        labels[ball] = n
        lps = ras * _LPS_TO_RAS
        rows.append({"label": n, "kind": "nodule", "n_readers": 0, "centroid_x_mm": round(float(lps[0]), 3),
                     "centroid_y_mm": round(float(lps[1]), 3), "centroid_z_mm": round(float(lps[2]), 3),
                     "centroid_i": round(float(ijk[0]), 3), "centroid_j": round(float(ijk[1]), 3),
                     "centroid_k": round(float(ijk[2]), 3), "diameter_mm": diameter})
    for row in rows:  # voxels and volume as painted (a later ball may cover part of an earlier one)
        row["voxels"] = int((labels == row["label"]).sum())
        row["volume_mm3"] = round(row["voxels"] * abs(float(np.linalg.det(affine[:3, :3]))), 3)
    return labels, rows


def write_requested(folder: Path, labels: np.ndarray, rows: list[dict], affine: np.ndarray) -> Path:
    """Write the requested mask and table as ``folder/requested.nii.gz`` and ``.tsv``; returns the mask."""
    folder.mkdir(parents=True, exist_ok=True)
    save_volume(folder / "requested.nii.gz", labels, affine)
    write_tsv(folder / "requested.tsv", rows, TABLE_COLUMNS)
    return folder / "requested.nii.gz"


def masks_beside(samples: Sequence[Path], why: str) -> list[Path]:
    """The mask each of ``samples`` was drawn with: ``nodules/{name}`` beside it (:func:`write_beside`).
    ``ValueError`` naming the first missing one and how many are missing, then ``why`` the caller needs them."""
    masks = [Path(p).parent / "nodules" / Path(p).name for p in samples]
    missing = [str(m) for m in masks if not m.exists()]
    if missing:
        raise ValueError(f"{missing[0]} does not exist ({len(missing)} of {len(masks)} missing): {why}")
    return masks


def drawn_masks(checkpoint: Path, samples: Sequence[Path]) -> list[Path]:
    """:func:`masks_beside` of samples drawn from the nodule-conditioned ``checkpoint``."""
    return masks_beside(samples, f"checkpoint {checkpoint} is nodule-conditioned, but the mask each sample was "
                                 "drawn with must lie beside it (draw the set again)")


def write_beside(out_dir: Path, index: int, labels: np.ndarray, affine: np.ndarray, source: Path) -> None:
    """``out_dir/nodules/{index:04d}.nii.gz`` (``labels`` on the sample's ``affine``) and ``.tsv`` (a copy of
    the table beside ``source``, ``source`` with ``.tsv`` for ``.nii.gz``; an empty table when there is none)."""
    folder = Path(out_dir) / "nodules"
    folder.mkdir(parents=True, exist_ok=True)
    save_volume(folder / f"{index:04d}.nii.gz", np.asarray(labels, np.uint8), affine)
    table = Path(str(source).removesuffix(".nii.gz") + ".tsv")
    if table.exists():
        with atomic_path(folder / f"{index:04d}.tsv") as tmp:
            shutil.copyfile(table, tmp)
    else:
        write_tsv(folder / f"{index:04d}.tsv", [], TABLE_COLUMNS)


__all__ = ["parse_nodule", "held_out_items", "evaluation_masks", "held_out_masks", "requested_mask",
           "write_requested", "write_beside"]
