"""Figure 1 of the paper: axial, coronal and sagittal mid-slices, real (a) beside synthetic (b).

Both volumes are brought to RAS+ canonical orientation (nibabel) and shown in radiological convention:
the patient's right on the image's left, anterior up in axial views, superior up in coronal and sagittal
views. Both are already windowed to the same HU range and scaled to [0, 1], so one grey scale
(0 → window low, 1 → window high) serves both columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from ctdiff.io import atomic_path  # noqa: E402

VIEWS = ("axial", "coronal", "sagittal")


def canonical(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Load a volume in RAS+ orientation: returns (array [R, A, S] float32, voxel sizes in mm)."""
    img = nib.as_closest_canonical(nib.load(str(path)))
    return np.asarray(img.dataobj, dtype=np.float32), np.asarray(img.header.get_zooms()[:3], dtype=float)


def view(volume: np.ndarray, zooms: np.ndarray, name: str, index: int | None = None) -> tuple[np.ndarray, float]:
    """One radiological-convention slice of a RAS+ volume and its display aspect (row mm / column mm).

    ``index`` defaults to the middle slice along the view's normal.
    """
    axis = {"axial": 2, "coronal": 1, "sagittal": 0}[name]
    index = volume.shape[axis] // 2 if index is None else index
    if not 0 <= index < volume.shape[axis]:
        raise ValueError(f"{name} slice {index} is outside the volume's {volume.shape[axis]} slices")
    plane = np.take(volume, index, axis=axis)  # the two remaining axes keep RAS order
    in_plane = [a for a in range(3) if a != axis]
    # rows: the second remaining axis (A or S) pointing up; columns: the first (R or A) pointing left.
    image = plane.T[::-1, ::-1]
    return image, zooms[in_plane[1]] / zooms[in_plane[0]]


def figure1(real: Path, synthetic: Path, out: Path | Sequence[Path], *, title: str | None = None,
            slices: Sequence[int | None] | None = None) -> None:
    """Write the 3×2 panel figure: rows axial/coronal/sagittal, columns (a) real and (b) synthetic.

    ``out``: one path or several; each file's format follows its suffix (``.png``, ``.pdf``).
    ``slices``: the slice index per view ``[axial, coronal, sagittal]`` in RAS+ voxel order, ``None`` (or
    ``None`` for a view) = the middle slice. An index outside a volume raises ``ValueError``.
    """
    slices = list(slices) if slices is not None else [None, None, None]
    volumes = [canonical(real), canonical(synthetic)]
    fig, axes = plt.subplots(3, 2, figsize=(6.0, 9.0), constrained_layout=True)
    for col, ((volume, zooms), label) in enumerate(zip(volumes, ("(a) real", "(b) synthetic"))):
        for row, name in enumerate(VIEWS):
            image, aspect = view(volume, zooms, name, slices[row])
            ax = axes[row, col]
            ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, aspect=aspect, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(label)
            if col == 0:
                ax.set_ylabel(name)
    if title:
        fig.suptitle(title, fontsize=9)
    _save(fig, out)


def sample_grid(volumes: Sequence[Path], out: Path | Sequence[Path], *, view_name: str = "axial",
                columns: int = 4) -> None:
    """Mid-slices (``view_name``) of many volumes in a grid, labelled by file name."""
    rows = max(1, -(-len(volumes) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.0 * columns, 2.1 * rows), constrained_layout=True,
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, path in zip(axes.flat, volumes):
        image, aspect = view(*canonical(path), view_name)
        ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, aspect=aspect, interpolation="nearest")
        ax.set_title(Path(path).name.split(".")[0], fontsize=8)
    _save(fig, out)


def closest_pairs(pairs: Sequence[tuple[Path, Path, float]], out: Path | Sequence[Path]) -> None:
    """The memorisation audit's closest pairs: per row a synthetic volume and its L2-nearest training
    volume, axial and coronal mid-slices, with the distance."""
    rows = max(1, len(pairs))
    fig, axes = plt.subplots(rows, 4, figsize=(8.0, 2.1 * rows), constrained_layout=True, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row, (synthetic, train, distance) in enumerate(pairs):
        volumes = [canonical(synthetic), canonical(train)]
        for col, ((volume, zooms), name) in enumerate((v, n) for v in volumes for n in ("axial", "coronal")):
            image, aspect = view(volume, zooms, name)
            axes[row, col].imshow(image, cmap="gray", vmin=0.0, vmax=1.0, aspect=aspect, interpolation="nearest")
        axes[row, 0].set_title(f"{Path(synthetic).name.split('.')[0]} (synthetic)", fontsize=8)
        axes[row, 2].set_title(f"{Path(train).name.split('.')[0]} (training), L2 {distance:.3g}", fontsize=8)
    _save(fig, out)


def _save(fig, out: Path | Sequence[Path]) -> None:
    for path in [out] if isinstance(out, (str, Path)) else out:
        path = Path(path)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=150, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
