"""How well a nodule-conditioned model puts nodules where it was asked (``model.condition: nodules``).

For every synthetic volume ``i`` drawn with nodule mask ``m_i`` (``samples/nodules/{i:04d}.nii.gz``), and for
the real volume the mask came from (the held-out item, :mod:`ctdiff.sampling.conditions`), so that every number has
its real counterpart measured the same way on the same layout:

- **contrast** of each requested nodule (a label of the mask): mean HU inside it minus mean HU of the lung
  around it, a shell of voxels within :data:`SHELL_MM` of the nodule that lie outside every nodule and are
  air-like (below ``AIR_LIKE_HU``, -400 HU) in that volume; None when the shell holds no such voxel (a
  nodule surrounded by tissue). A solid nodule in lung reads ~+800 HU; a model that ignored the mask ~0.
- **detection**: scikit-image's Laplacian-of-Gaussian blob detector (``blob_log``, bright blobs) on the
  volume in [0, 1] with σ from 1 voxel to :data:`MAX_SIGMA_MM` (a 30 mm nodule, LIDC's largest, is a blob
  of σ = 30 / (2√3) mm), :data:`NUM_SIGMA` scales and threshold :data:`THRESHOLD`; a nodule is detected when
  a blob's centre lies in it or within one voxel of it. Its **size** is then compared: the blob's diameter
  2√3·σ (mm, the voxel spacing of the volume's affine) against the nodule's equivalent-sphere diameter
  (6V/π)^(1/3), as a ratio (1 = agreement, up to the σ grid's spacing).
- **spurious blobs**: blobs whose centre lies in the lungs (the body's enclosed air and what it encloses:
  the filled body, slice by slice as in :mod:`ctdiff.metrics.anatomy`, minus the body's largest connected
  component) and farther than one voxel from every nodule of the mask: nodule-like things nobody asked for
  (vessels seen end-on are blobs too, so the real volumes' count is the reference, not zero).

The detector's settings are fixed here, not tuned to a set, so synthetic and real volumes are measured alike;
its absolute rates depend on them and mean little alone, the comparison with the real column is the result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.feature import blob_log

from ctdiff.ingest.intensity import to_hu
from ctdiff.files import load_volume
from ctdiff.metrics.anatomy import AIR_LIKE_HU, BODY_HU, axial_axis
from ctdiff.model.condition import spacing_of

#: The lung shell around a nodule: voxels within this many millimetres of it.
SHELL_MM = 6.0
#: Largest blob scale searched (mm): a 30 mm sphere.
MAX_SIGMA_MM = 30.0 / (2.0 * math.sqrt(3.0))
#: Scales between 1 voxel and MAX_SIGMA_MM, and the LoG response threshold (volume in [0, 1]).
NUM_SIGMA = 8
THRESHOLD = 0.05


def blobs(volume: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """``[n, 4]``: the LoG blobs of ``volume`` (``[X, Y, Z]`` in [0, 1]) as voxel centre ``i, j, k`` and σ
    in voxels (module docstring for the settings)."""
    max_sigma = max(1.0, MAX_SIGMA_MM / min(spacing))
    found = blob_log(np.asarray(volume, np.float32), min_sigma=1.0, max_sigma=max_sigma,
                     num_sigma=NUM_SIGMA, threshold=THRESHOLD)
    return np.asarray(found, float).reshape(-1, 4)


def lung_region(hu: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """bool: what the body encloses (filled slice by slice along the axial axis) minus the body's largest
    connected component (voxels above ``BODY_HU``): the lungs with the vessels and nodules inside them."""
    labels, n = ndimage.label(hu > BODY_HU)
    if not n:
        return np.zeros(hu.shape, bool)
    body = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    axis = axial_axis(affine)
    filled = np.stack([ndimage.binary_fill_holes(np.take(body, k, axis=axis)) for k in range(body.shape[axis])],
                      axis=axis)
    return filled & ~body


def _centres_in(points: np.ndarray, region: np.ndarray) -> np.ndarray:
    """bool ``[n]``: whether each blob centre (rounded voxel) lies in ``region``."""
    if not len(points):
        return np.zeros(0, bool)
    ijk = np.clip(np.round(points[:, :3]).astype(int), 0, np.array(region.shape) - 1)
    return region[ijk[:, 0], ijk[:, 1], ijk[:, 2]]


def measure(volume: np.ndarray, affine: np.ndarray, labels: np.ndarray, hu_window: tuple[float, float]) -> dict:
    """Contrast, detection and size of each nodule of ``labels`` in ``volume`` ([0, 1], same grid), and the
    spurious blobs in its lungs: ``{"nodules": [{"label", "diameter_mm", "contrast_hu", "detected",
    "blob_diameter_mm"}], "spurious": n}``."""
    if volume.shape != labels.shape:
        raise ValueError(f"volume of shape {volume.shape} and nodule mask of shape {labels.shape} differ")
    spacing = spacing_of(affine)
    hu = to_hu(volume, hu_window).astype(np.float32)
    found = blobs(volume, spacing)
    any_nodule = labels > 0
    near_any = ndimage.binary_dilation(any_nodule, np.ones((3, 3, 3), bool))
    voxel_mm3 = float(np.prod(spacing))
    rows = []
    for label in (int(v) for v in np.unique(labels) if v > 0):
        inside = labels == label
        near = ndimage.binary_dilation(inside, np.ones((3, 3, 3), bool))
        distance = ndimage.distance_transform_edt(~inside, sampling=spacing)
        shell = (distance <= SHELL_MM) & ~any_nodule & (hu < AIR_LIKE_HU)
        hits = found[_centres_in(found, near)]
        best = hits[np.argmax(hits[:, 3])] if len(hits) else None
        rows.append({
            "label": label,
            "diameter_mm": (6.0 * inside.sum() * voxel_mm3 / math.pi) ** (1.0 / 3.0),
            "contrast_hu": float(hu[inside].mean() - hu[shell].mean()) if shell.any() else None,
            "detected": best is not None,
            "blob_diameter_mm": None if best is None else float(2.0 * math.sqrt(3.0) * best[3] * np.mean(spacing)),
        })
    in_lungs = _centres_in(found, lung_region(hu, affine)) & ~_centres_in(found, near_any)
    return {"nodules": rows, "spurious": int(in_lungs.sum())}


def _summary(measured: list[dict]) -> dict:
    """Detection rate, mean contrast, median size ratio (detected nodules) and spurious blobs per volume."""
    nodules = [n for m in measured for n in m["nodules"]]
    contrasts = [n["contrast_hu"] for n in nodules if n["contrast_hu"] is not None]
    ratios = [n["blob_diameter_mm"] / n["diameter_mm"] for n in nodules if n["detected"]]
    return {
        "n_volumes": len(measured),
        "n_nodules": len(nodules),
        "detection_rate": sum(n["detected"] for n in nodules) / len(nodules) if nodules else None,
        "contrast_hu_mean": float(np.mean(contrasts)) if contrasts else None,
        "size_ratio_median": float(np.median(ratios)) if ratios else None,
        "spurious_per_volume": float(np.mean([m["spurious"] for m in measured])) if measured else None,
    }


def nodule_control(synthetic: Sequence[Path], masks: Sequence[Path], real: Sequence[Path | None],
                   hu_window: tuple[float, float]) -> dict:
    """Score synthetic volume ``synthetic[i]``, drawn with ``masks[i]``, and ``real[i]`` (the real volume with
    that mask; None for requested nodules) alike (module docstring). Returns ``{"per_volume": [...],
    "synthetic": summary, "real": summary, "settings": {...}}``; the real summary covers the volumes that
    have one (each real volume measured once however often its mask was cycled)."""
    if not len(synthetic) == len(masks) == len(real):
        raise ValueError(f"{len(synthetic)} synthetic volumes, {len(masks)} masks and {len(real)} real volumes")
    per_volume, real_done = [], {}
    for syn, mask, ref in zip(synthetic, masks, real):
        labels, _ = load_volume(Path(mask))
        volume, affine = load_volume(Path(syn))
        row = {"synthetic": Path(syn).name, "mask": Path(mask).name, "real": None if ref is None else Path(ref).name,
               "synthetic_measures": measure(volume, affine, labels, hu_window)}
        if ref is not None:
            if str(ref) not in real_done:
                real_volume, real_affine = load_volume(Path(ref))
                real_done[str(ref)] = measure(real_volume, real_affine, labels, hu_window)
            row["real_measures"] = real_done[str(ref)]
        per_volume.append(row)
    return {
        "per_volume": per_volume,
        "synthetic": _summary([r["synthetic_measures"] for r in per_volume]),
        "real": _summary(list(real_done.values())),
        "settings": {"shell_mm": SHELL_MM, "max_sigma_mm": MAX_SIGMA_MM, "num_sigma": NUM_SIGMA,
                     "threshold": THRESHOLD, "detector": "skimage.feature.blob_log"},
    }


__all__ = ["nodule_control", "measure", "blobs", "lung_region", "SHELL_MM", "MAX_SIGMA_MM", "NUM_SIGMA",
           "THRESHOLD"]
