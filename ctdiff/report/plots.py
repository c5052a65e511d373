"""Every plot of a run, each written to a file: Figure 1 of the paper, the sample grid, the memorisation
audit's closest pairs and distance histogram, the learning curve, and the anatomy in HU.

Volumes are brought to RAS+ canonical orientation (nibabel) and shown in radiological convention: the
patient's right on the image's left, anterior up in axial views, superior up in coronal and sagittal
views. Real and synthetic volumes are already windowed to the same HU range and scaled to [0, 1], so one
grey scale (0 → window low, 1 → window high) serves every panel.

The functions ending the module are what the workflow's figure rules call: they pick the volumes to show
from the run's files (the test split, ``metrics.json``) and refuse a choice that names no volume.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ctdiff.config import FigureConfig  # noqa: E402
from ctdiff.ingest.split import read_ids  # noqa: E402
from ctdiff.files import atomic_path  # noqa: E402
from ctdiff.metrics import keys  # noqa: E402

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


def memorisation_histogram(memorisation: dict, out: Path | Sequence[Path]) -> None:
    """Histogram of the synthetic-to-train against the test-to-train L2 distances, with the near-copy
    threshold; ``memorisation`` is the audit record of ``ctdiff.metrics.memorisation.audit``."""
    syn = [p["distance"] for p in memorisation["per_sample"]]
    test = [p["distance"] for p in memorisation["test_to_train"]["per_sample"]]
    fig, ax = plt.subplots(figsize=(5.0, 3.0), constrained_layout=True)
    bins = np.histogram_bin_edges(np.concatenate([syn, test]), bins=min(30, max(5, len(syn) + len(test))))
    ax.hist(test, bins=bins, alpha=0.6, label=f"test → nearest train ({len(test)})")
    ax.hist(syn, bins=bins, alpha=0.6, label=f"synthetic → nearest train ({len(syn)})")
    ax.axvline(memorisation["threshold"], color="k", linestyle="--", linewidth=1, label="near-copy threshold")
    ax.set_xlabel("L2 distance to the nearest training volume")
    ax.set_ylabel("volumes")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7)
    _save(fig, out, dpi=120)


def learning_curve(log_csv: Path, out: Path | Sequence[Path]) -> None:
    """The training loss of ``train/log.csv`` against the step (log scale)."""
    log = pd.read_csv(log_csv)
    fig, ax = plt.subplots(figsize=(5.0, 3.0), constrained_layout=True)
    ax.plot(log["step"], log["loss"])
    ax.set_xlabel("step")
    ax.set_ylabel("ε-MSE loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    _save(fig, out, dpi=120)


def anatomy_plot(anatomy: dict, out: Path | Sequence[Path]) -> None:
    """The anatomy in HU, real against synthetic (``metrics.json``'s ``anatomy``, see
    ``ctdiff.metrics.anatomy_compare``): (a) the pooled HU histogram of the bodies' voxels with the tissue
    classes' limits, (b) every volume's total lung volume, (c) each class's HU W1 with its interval beside the
    real-vs-real floor. An absent class or set is written where its bar would be."""
    fig, axes = plt.subplots(1, 3, figsize=(12.0, 3.4), constrained_layout=True)
    hist, colours = anatomy["histograms"], {"real": "tab:blue", "synthetic": "tab:orange"}
    width = 10  # HU per displayed bin: the 1-HU histograms summed in groups (the last holds the window's top)
    starts = np.arange(0, len(hist["real"]), width)
    hu = hist["first_hu"] + starts * hist["bin_hu"]
    ax = axes[0]
    for kind in ("real", "synthetic"):
        counts = np.add.reduceat(np.asarray(hist[kind], float), starts)
        if counts.sum():
            ax.step(hu, counts / counts.sum(), where="post", color=colours[kind], linewidth=0.8, label=kind)
        else:
            ax.plot([], [], color=colours[kind], label=f"{kind}: no body")
    for name, entry in anatomy["classes"].items():
        if entry["hu_range"][0] is not None:
            ax.axvline(entry["hu_range"][0], color="0.6", linestyle=":", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel(f"HU (window {anatomy['hu_window'][0]:g} to {anatomy['hu_window'][1]:g}; dotted: class limits)")
    ax.set_ylabel(f"share of body voxels per {width} HU")
    ax.set_title("(a) HU of the body", fontsize=9)
    ax.legend(fontsize=7)

    ax = axes[1]
    for x, kind in enumerate(("real", "synthetic")):
        litres = np.array([r["lung_ml"] for r in anatomy["per_volume"][kind]]) / 1000.0
        jitter = np.random.default_rng(x).uniform(-0.15, 0.15, len(litres))
        ax.scatter(x + jitter, litres, s=10, alpha=0.6, color=colours[kind])
        ax.hlines(litres.mean(), x - 0.3, x + 0.3, color="k", linewidth=1)
    ax.set_xticks([0, 1], ["real", "synthetic"])
    ax.set_ylabel("total lung volume (L)")
    ax.set_title("(b) lungs per volume (line: mean)", fontsize=9)

    ax = axes[2]
    names, labelled = list(anatomy["classes"]), set()
    for k, name in enumerate(names):
        entry = anatomy["classes"][name]
        if entry["w1_hu"] is None:
            ax.text(k, 0, "absent", rotation=90, ha="center", va="bottom", fontsize=7)
        else:
            ci = entry.get("interval")
            err = None if not ci else [[max(entry["w1_hu"] - ci["low"], 0)], [max(ci["high"] - entry["w1_hu"], 0)]]
            ax.bar(k, entry["w1_hu"], color=colours["synthetic"], yerr=err, capsize=3,
                   label=None if "bar" in labelled else "synthetic vs real")
            labelled.add("bar")
        floor = entry["floor"]["w1_hu"]
        if floor is not None:
            ax.plot(k, floor, "D", color="tab:blue", markersize=6, label=None if "floor" in labelled else "floor: real vs real")
            labelled.add("floor")
    ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names])
    ax.set_ylabel("W1 of the HU distribution (HU)")
    ax.set_title("(c) per tissue class (lower = closer)", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, out, dpi=120)


def _save(fig, out: Path | Sequence[Path], dpi: int = 150) -> None:
    for path in [out] if isinstance(out, (str, Path)) else out:
        path = Path(path)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)


# The figure rules' calls: which volumes a figure shows.


def chosen_figures(test_ids: Path, volumes: Path, synthetic: Sequence[Path], choice: FigureConfig,
                   out_figure1: Path | Sequence[Path], out_grid: Path, *, grid: int) -> None:
    """Figure 1 of the chosen volumes, and the grid of the first ``grid`` synthetic volumes.

    Args:
        test_ids: the test split (``splits/test.txt``); ``choice.real`` indexes it.
        volumes: folder of the preprocessed real volumes, ``<id>.nii.gz``.
        synthetic: the synthetic volumes in sample order; ``choice.synthetic`` indexes them.
        choice: the figure section (``real``, ``synthetic``, ``slices``).
        out_figure1, out_grid: written (see :func:`figure1`, :func:`sample_grid`).
        grid: how many synthetic volumes the grid shows at most.

    Raises ``ValueError`` when ``choice.real`` or ``choice.synthetic`` names no volume.
    """
    test = read_ids(test_ids)
    if not 0 <= choice.real < len(test):
        raise ValueError(f"figure.real={choice.real} but the test set holds {len(test)} volumes")
    if not 0 <= choice.synthetic < len(synthetic):
        raise ValueError(f"figure.synthetic={choice.synthetic} but there are {len(synthetic)} synthetic volumes")
    figure1(Path(volumes) / f"{test[choice.real]}.nii.gz", Path(synthetic[choice.synthetic]), out_figure1,
            slices=choice.slices)
    sample_grid([Path(p) for p in synthetic[:grid]], out_grid)


def _audit(metrics_json: Path) -> dict:
    """The memorisation audit recorded in ``metrics.json``; ``ValueError`` when it records none."""
    metrics = json.loads(Path(metrics_json).read_text())
    if keys.MEMORISATION not in metrics:
        raise ValueError(f"{metrics_json} records no memorisation audit")
    return metrics[keys.MEMORISATION]


def audit_closest_pairs(metrics_json: Path, samples: Path, train_volumes: Path, out: Path, *, n: int) -> None:
    """:func:`closest_pairs` of the audit's ``n`` closest synthetic/training pairs (closest first), the
    synthetic volume read from ``samples``, the training volume from ``train_volumes``."""
    pairs = _audit(metrics_json)["closest_pairs"][:n]
    closest_pairs([(Path(samples) / p["synthetic"], Path(train_volumes) / p["train"], p["distance"]) for p in pairs],
                  out)


def audit_histogram(metrics_json: Path, out: Path) -> None:
    """:func:`memorisation_histogram` of the audit recorded in ``metrics.json``."""
    memorisation_histogram(_audit(metrics_json), out)


def anatomy_figure(metrics_json: Path, out: Path) -> None:
    """:func:`anatomy_plot` of the anatomy recorded in ``metrics.json``; ``ValueError`` when it records none."""
    metrics = json.loads(Path(metrics_json).read_text())
    if keys.ANATOMY not in metrics:
        raise ValueError(f"{metrics_json} records no anatomy (not a metrics.json of ctdiff's evaluate stage)")
    anatomy_plot(metrics[keys.ANATOMY], out)


def nodule_crops(rows: Sequence[tuple[Path, Path, Path, int]], out: Path | Sequence[Path], *,
                 half_width: int = 12) -> None:
    """Crops through requested nodules' centres: one row per ``(real volume, synthetic volume, mask, label)``,
    columns real and synthetic in the axial, coronal and sagittal planes (radiological convention, as
    :func:`view`), the nodule's contour in red. Crops are ``2·half_width`` voxels, or wider for a nodule
    larger than that, centred on the nodule's centroid (rounded, kept inside the volume)."""
    if not rows:
        raise ValueError("no nodule to show")
    fig, axes = plt.subplots(len(rows), 6, figsize=(12, 2.1 * len(rows)), squeeze=False)
    for r, (real, synthetic, mask, label) in enumerate(rows):
        labels, zooms = canonical(mask)
        inside = labels == label
        centre = np.round(np.argwhere(inside).mean(axis=0)).astype(int)
        extent = np.ptp(np.argwhere(inside), axis=0).max() + 1
        half = max(half_width, int(extent))
        for c, (source, name) in enumerate([(real, "real"), (synthetic, "synthetic")]):
            volume, _ = canonical(source)
            for v, plane in enumerate(VIEWS):
                axis = {"axial": 2, "coronal": 1, "sagittal": 0}[plane]
                image, aspect = view(volume, zooms, plane, int(centre[axis]))
                contour, _ = view(inside.astype(np.float32), zooms, plane, int(centre[axis]))
                # the crop around the centre in the view's rows and columns (both flipped by view)
                in_plane = [a for a in range(3) if a != axis]
                row_c = volume.shape[in_plane[1]] - 1 - centre[in_plane[1]]
                col_c = volume.shape[in_plane[0]] - 1 - centre[in_plane[0]]
                rs = slice(max(0, row_c - half), min(image.shape[0], row_c + half))
                cs = slice(max(0, col_c - half), min(image.shape[1], col_c + half))
                ax = axes[r, 3 * c + v]
                ax.imshow(image[rs, cs], cmap="gray", vmin=0.0, vmax=1.0, aspect=aspect, interpolation="nearest")
                if contour[rs, cs].any():
                    ax.contour(contour[rs, cs], levels=[0.5], colors="red", linewidths=0.8)
                ax.set_xticks([]), ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"{name} {plane}", fontsize=8)
        axes[r, 0].set_ylabel(f"{Path(synthetic).name}\nnodule {label}", fontsize=7)
    fig.tight_layout()
    _save(fig, out, dpi=120)


def nodule_figure(metrics_json: Path, samples: Path, real_volumes: Path, out: Path, *, n: int = 6) -> None:
    """:func:`nodule_crops` of the first ``n`` nodules the nodule control of ``metrics.json`` measured (each
    synthetic volume from ``samples``, its mask from ``samples/nodules``, the real volume from
    ``real_volumes``); a set without nodules gives a figure that says so. ``ValueError`` when the metrics
    hold no nodule control."""
    metrics = json.loads(Path(metrics_json).read_text())
    if keys.NODULES not in metrics:
        raise ValueError(f"{metrics_json} records no nodule control (model.condition: none?)")
    rows = []
    for entry in metrics[keys.NODULES]["per_volume"]:
        for nodule in entry["synthetic_measures"]["nodules"]:
            if entry["real"] is not None and len(rows) < n:
                rows.append((Path(real_volumes) / entry["real"], Path(samples) / entry["synthetic"],
                             Path(samples) / "nodules" / entry["mask"], nodule["label"]))
    if rows:
        nodule_crops(rows, out)
        return
    fig, ax = plt.subplots(figsize=(4, 1))
    ax.axis("off")
    ax.text(0.5, 0.5, "no requested nodule in this set's masks", ha="center", va="center")
    _save(fig, out)
