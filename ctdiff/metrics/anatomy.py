"""Anatomical plausibility of one CT volume in Hounsfield units: body, lungs, tissue classes.

A volume in [0, 1] is brought back to HU through the preprocessing window ``(lo, hi)``
(:func:`ctdiff.ingest.intensity.to_hu`, default [-1000, 400]): whole HU, and the window's clipping cannot be
undone, so every number here is a number about the *windowed* volume:

- bone above ``hi`` (400 HU) reads as 400: the bone class's HU histogram ends in a spike at 400 and its HU
  distances (W1) see only the part of bone within the window; cortical bone (~700-1900 HU) is invisible
  as such;
- air below ``lo`` (-1000 HU; padding, -1024 air of a real scanner) reads as -1000: the 'air' class merges
  everything <= -1000 and says nothing about what lies below;
- the thresholds below all lie inside the default window, so masks and class fractions are what they would
  be on the unclipped scan. A narrower window that cuts a threshold makes the corresponding mask empty or full;
  :func:`volume_anatomy` refuses a window that does not contain ``BODY_HU`` and ``AIR_LIKE_HU``.

Per volume (:func:`volume_anatomy`), on the voxel grid of the file's affine (spacing = column norms of the
affine, so volumes in mL; orientation from the affine, NIfTI RAS+ world: +x = patient's Right):

1. body: voxels above ``BODY_HU`` (-500 HU, between air and every tissue), the largest 3-D connected
   component (face connectivity), with its holes filled in every axial slice (a lung open at the top or
   bottom slice of the volume is still a hole of its slice); at least ``MIN_BODY_ML`` or the body is absent.
   The patient table, where it touches the body, is part of it. The component must also be body-shaped: its
   sphericity (below) at least ``MIN_BODY_SPHERICITY`` (0.05). A chest, lungs and airways carved out of it,
   scores 0.29-0.36 (phantom chests at 128³, 3 mm); the solid voxels of white noise through the window form a
   sponge that scores 0.015-0.05 (noise N(m, s) clipped to [0, 1], m = 0.3-0.7, s = 0.25-0.5, 128³); noise
   that is mostly tissue (m ≥ 0.85) is a solid block that passes as a body and then has no lungs (step 2).
   The fill ratio (body / filled body voxels) does not tell them apart (phantoms 0.74-0.81, noise 0.63-0.99).
2. lungs: air-like voxels (below ``AIR_LIKE_HU``, -400 HU; the lung/body thresholds of Hu, Hoffman &
   Reinhardt 2001, IEEE TMI 20:490, lie near -400 to -500) inside the filled body, hence not connected in
   their slice to the outside air; 3-D components of at least ``MIN_LUNG_ML``, largest first. A component is
   a lung only if it is lung-shaped:

   - its share of the filled body's voxels lies in [``MIN_LUNG_SHARE``, ``MAX_LUNG_SHARE``] = [0.01, 0.5]
     (an adult lung holds 1-4 L of a chest that holds tens of litres; phantom lungs: 0.08-0.13 each, both
     together never half the body). Gas pockets (stomach, bowel, a lone airway) fall below;
   - its sphericity (Wadell: π^(1/3)·(6V)^(2/3) / A, V its volume, A the area of its exposed voxel faces;
     1 = a ball, ~0.67 a voxelised ball, since faces overestimate a smooth surface 1.5-fold on average) is
     at least ``MIN_LUNG_SPHERICITY`` (0.1): phantom lungs score 0.31-0.36, two lungs joined by the
     airways 0.26-0.28, pydicom's CT slice's lung regions 0.66-0.68, the air-like sponge of white noise
     0.016-0.05;
   - at least ``MIN_SIDE_SHARE`` (0.8) of its voxels lie on the side of the body's midline (the world x of
     the filled body's centroid) where its centroid lies (phantom lungs: ≥ 0.998), and at most one lung
     per side is kept, the larger.

   Trachea and main bronchi join both lungs into one component at CT resolutions (about half of it on each
   side): a component of a lung's share and sphericity that straddles the midline is eroded (up to
   ``SPLIT_EROSIONS`` times) until it falls into two parts of at least ``MIN_LUNG_ML / 8`` on either side
   of the midline, and its voxels go to the nearer part (one at equal distance from both: the part on its side
   of the midline by its world x, so the split does not depend on how the volume is stored); each part is
   then checked as above. Airways
   inside the body (trachea, bronchi; bowel gas that joins a lung) count as lung. Why a volume has fewer than
   two lungs (or no body) is in its row's ``reason``: each rejected component with the criteria it fails.
   The bounds come from anatomy and were checked on phantom chests and pydicom's real CT slice, not yet on
   LIDC-IDRI volumes: a real scan reported without lungs says which bound it missed.
3. left/right: the lung whose centroid has the smaller world x (RAS+) is the patient's left; a single lung
   is left or right of the body's centroid. Balance = smaller / larger lung volume (1 = equal; the left lung
   is normally ~10 % smaller, the heart lies on the left).
4. tissue classes of the body (filled body: lungs included), by HU, :data:`CLASSES`, half-open ranges
   [low, high) that cover the whole HU axis:
   air < -950 (the emphysema threshold, Gevenois et al. 1996, AJRCCM 154:187; with the window: everything
   <= -1000 too), lung [-950, -190) (aerated parenchyma -950 to -700 and its partial-volume edge up to where
   fat begins), fat [-190, -30) (adipose tissue, Kvist et al. 1988, AJCN 48:1351), soft tissue [-30, 150)
   (muscle -29 to 150, Mitsiopoulos et al. 1998, J Appl Physiol 85:115; blood, organs), bone >= 150
   (cancellous and cortical bone, cartilage calcification; with the window: 150 to 400 only). The classes are
   HU ranges, not segmentations: 'lung' is the HU class, 'lungs' the mask of step 2.
   Each volume's HU histogram of its body voxels (1-HU bins over the window) is kept for the distributions
   (:mod:`ctdiff.metrics.anatomy_compare`).

The lungs are lung-shaped air-like components, not a recognised organ: what the shape checks cannot see
(two smooth air-like blobs, one on each side, of plausible size) the comparison with the real set does: lung
volumes, balance, class fractions and HU distributions (:mod:`ctdiff.metrics.anatomy_compare`).

Cost: ~0.14 CPU s per 128³ phantom chest on a 2-core Xeon VM (~2 ms at 32³), 1.3-4× reading its ``.nii.gz``;
:func:`ctdiff.metrics.anatomy_compare.anatomy_rows` spreads the volumes over processes (``benchmarks/README.md``).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ctdiff.ingest.intensity import to_hu

BODY_HU = -500.0
AIR_LIKE_HU = -400.0
MIN_BODY_ML = 500.0      # an adult chest section in the field of view holds litres
MIN_LUNG_ML = 50.0       # an adult lung holds 1-4 L at CT; 50 mL keeps small gas pockets and a lone trachea out
SPLIT_EROSIONS = 3
MIDLINE_MM = 1e-6        # a voxel this close to the body's midline (world x) lies on it: float round-off
# What makes an air-like component a lung, and the largest component above BODY_HU a body (module docstring):
MIN_LUNG_SHARE, MAX_LUNG_SHARE = 0.01, 0.5   # each lung's share of the filled body's voxels
MIN_LUNG_SPHERICITY = 0.1                    # Wadell's sphericity, face-counted (a voxelised ball: ~0.67)
MIN_SIDE_SHARE = 0.8                         # share of a lung's voxels on its side of the body's midline
MIN_BODY_SPHERICITY = 0.05
# (low, high) HU, half-open [low, high); together they cover every HU value.
CLASSES: dict[str, tuple[float, float]] = {
    "air": (-math.inf, -950.0),
    "lung": (-950.0, -190.0),
    "fat": (-190.0, -30.0),
    "soft_tissue": (-30.0, 150.0),
    "bone": (150.0, math.inf),
}


def hu_bins(hu_window: tuple[float, float]) -> tuple[int, int]:
    """(lowest HU, number of 1-HU bins) of the whole HU values ``to_hu`` can return for ``hu_window``."""
    lo, hi = (float(v) for v in hu_window)
    if not lo < hi:
        raise ValueError(f"hu_window must be (low, high) with low < high, got {hu_window!r}")
    first, last = int(np.rint(lo)), int(np.rint(hi))
    return first, last - first + 1


def class_slices(hu_window: tuple[float, float]) -> dict[str, slice]:
    """Per class of :data:`CLASSES`, the slice of the 1-HU histogram bins (:func:`hu_bins`) it covers."""
    first, n = hu_bins(hu_window)
    out = {}
    for name, (low, high) in CLASSES.items():
        a = 0 if low == -math.inf else int(np.clip(math.ceil(low) - first, 0, n))
        b = n if high == math.inf else int(np.clip(math.ceil(high) - first, 0, n))
        out[name] = slice(a, b)
    return out


def voxel_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in mL from a 4×4 affine in mm (|det| of its 3×3 part / 1000)."""
    return float(abs(np.linalg.det(np.asarray(affine, float)[:3, :3]))) / 1000.0


def axial_axis(affine: np.ndarray) -> int:
    """The voxel axis closest to the world's superior-inferior (z) axis."""
    return int(np.argmax(np.abs(np.asarray(affine, float)[2, :3])))


def _spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel side lengths in mm (column norms of the affine's 3×3 part)."""
    return np.linalg.norm(np.asarray(affine, float)[:3, :3], axis=0)


def _largest(mask: np.ndarray) -> tuple[np.ndarray | None, tuple[slice, ...] | None, int]:
    """The largest connected component of ``mask`` (face connectivity) cut to its bounding box, the box, and its
    voxel count ((None, None, 0): empty). Ties go to the lowest label (scan order). Labelled within the
    bounding box of ``mask``, which holds every component."""
    outer = _bounding_box(mask)
    if outer is None:
        return None, None, 0
    labels, n = ndimage.label(mask[outer])
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    k = int(np.argmax(sizes))
    inner = ndimage.find_objects(labels, max_label=k)[k - 1]
    box = tuple(slice(o.start + i.start, o.start + i.stop) for o, i in zip(outer, inner))
    return labels[inner] == k, box, int(sizes[k])


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of a mask's True voxels (None: none), from its projections on the axes."""
    box = []
    for ax in range(mask.ndim):
        hit = np.flatnonzero(mask.any(tuple(a for a in range(mask.ndim) if a != ax)))
        if hit.size == 0:
            return None
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def _in_plane(axis: int) -> np.ndarray:
    """3×3×3 face-connectivity structure that links voxels within slices across ``axis`` only."""
    structure = np.moveaxis(np.zeros((3, 3, 3), bool), axis, 0)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    return np.moveaxis(structure, 0, axis)


def _fill_slices(mask: np.ndarray, axis: int) -> np.ndarray:
    """``mask`` with the holes of every slice across ``axis`` filled (2-D, face connectivity): the background
    components of each slice that touch no edge of it, found for all slices in one labelling."""
    background, n = ndimage.label(~mask, _in_plane(axis))
    hole = np.ones(n + 1, bool)
    for ax in range(3):
        if ax != axis:
            hole[np.take(background, 0, ax)] = False
            hole[np.take(background, -1, ax)] = False
    hole[0] = True  # label 0: the mask itself
    return hole[background]


def _centroid(mask: np.ndarray) -> np.ndarray:
    """Mean voxel index [3] of a non-empty mask, from its projections on the three axes."""
    n = np.count_nonzero(mask)
    return np.array([np.dot(np.arange(mask.shape[ax]), mask.sum(tuple(a for a in range(3) if a != ax)))
                     for ax in range(3)], float) / n


def _world_x(points_ijk: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World x (mm, RAS+: toward the patient's Right) of voxel coordinates [K, 3]."""
    a = np.asarray(affine, float)
    return np.asarray(points_ijk, float) @ a[0, :3] + a[0, 3]


def _grid_x(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World x (mm, RAS+) of every voxel of an array of ``shape`` [X, Y, Z] with that ``affine``, broadcast to
    ``shape``."""
    a = np.asarray(affine, float)
    x = a[0, 3] + sum(a[0, ax] * np.arange(shape[ax]).reshape([-1 if k == ax else 1 for k in range(3)])
                      for ax in range(3))
    return np.broadcast_to(x, shape)


def sphericity(mask: np.ndarray, spacing: np.ndarray) -> float:
    """Wadell's sphericity π^(1/3) (6V)^(2/3) / A of a non-empty mask, V its volume and A the area of its
    exposed voxel faces (mm², spacing [3] in mm). 1 = a ball; face counting overestimates a smooth surface
    (by 1.5 on average over a sphere's directions), so a voxelised ball scores ~0.67."""
    n = np.count_nonzero(mask)
    area = 0.0
    for ax in range(3):
        a, b = (slice(None),) * ax + (slice(1, None),), (slice(None),) * ax + (slice(None, -1),)
        faces = 2 * n - 2 * np.count_nonzero(mask[a] & mask[b])
        area += faces * float(np.prod(np.delete(spacing, ax)))
    return float(np.pi ** (1 / 3) * (6 * n * float(np.prod(spacing))) ** (2 / 3) / area)


def _split(component: np.ndarray, min_voxels: int, body_x: float, affine: np.ndarray) -> list[np.ndarray]:
    """Two lungs joined by the airways as one component (a mask on a box whose ``affine`` is given, with a
    background margin): erode until two parts of at least ``min_voxels / 8`` lie on either side of ``body_x``,
    then give every voxel of ``component`` to the nearer part. Returns the two masks, or ``[component]`` when
    no erosion separates it so.

    Distances are in voxels, so equal distances are exactly equal (square roots of whole numbers). A voxel at
    equal distance from both parts goes to the part on its side of ``body_x`` (world x; one within
    ``MIDLINE_MM`` of it, to the part at larger x, the side :func:`_shape` counts it on): the rule follows the
    voxel's position in the patient, not the array order in which a feature transform meets the parts, which
    changed with the storage order (RAS or LPS) of one volume."""
    eroded = component
    for _ in range(SPLIT_EROSIONS):
        eroded = ndimage.binary_erosion(eroded)
        labels, n = ndimage.label(eroded)
        if n < 2:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        a, b = np.argsort(sizes)[::-1][:2] + 1
        if sizes[b - 1] * 8 < min_voxels:
            continue
        boxes = ndimage.find_objects(labels, max_label=max(a, b))
        xa, xb = (_world_x(_centroid(labels[boxes[k - 1]] == k) + [side.start for side in boxes[k - 1]], affine)
                  for k in (a, b))
        if (xa - body_x) * (xb - body_x) >= 0:
            continue
        # every voxel's Euclidean distance to each part; ties by side of the midline (docstring)
        to_a = ndimage.distance_transform_edt(labels != a)
        to_b = ndimage.distance_transform_edt(labels != b)
        right, left = (a, b) if xa > body_x else (b, a)
        tied = np.where(_grid_x(component.shape, affine) >= body_x - MIDLINE_MM, right, left)
        nearest = np.where(to_a < to_b, a, np.where(to_b < to_a, b, tied))
        return [component & (nearest == a), component & (nearest == b)]
    return [component]


def _shape(mask: np.ndarray, affine: np.ndarray, spacing: np.ndarray, n_body: int, body_x: float) -> dict:
    """What decides whether a component (a mask on a box with that ``affine``) is a lung: its voxel count,
    share of the body's voxels, sphericity, world x of its centroid, and the share of its voxels on that side
    of the body's midline ``body_x``."""
    n = np.count_nonzero(mask)
    x = _grid_x(mask.shape, affine)
    centre = float(x[mask].mean())
    on_side = np.count_nonzero(mask & ((x < body_x) if centre < body_x else (x >= body_x))) / n
    return {"voxels": n, "share": n / n_body, "sphericity": sphericity(mask, spacing), "x": centre,
            "side_share": on_side}


def _faults(shape: dict, *, side: bool) -> list[str]:
    """Why a component of :func:`_shape` is not a lung (empty: it is one); ``side``: check the side too."""
    out = []
    if not MIN_LUNG_SHARE <= shape["share"] <= MAX_LUNG_SHARE:
        out.append(f"{shape['share']:.3g} of the body (a lung: {MIN_LUNG_SHARE:g} to {MAX_LUNG_SHARE:g})")
    if shape["sphericity"] < MIN_LUNG_SPHERICITY:
        out.append(f"sphericity {shape['sphericity']:.3g} (a lung: at least {MIN_LUNG_SPHERICITY:g})")
    if side and shape["side_share"] < MIN_SIDE_SHARE:
        out.append(f"{shape['side_share']:.3g} of it on one side of the body's midline "
                   f"(a lung: at least {MIN_SIDE_SHARE:g})")
    return out


def _lungs(air: np.ndarray, affine: np.ndarray, spacing: np.ndarray, body_x: float, n_body: int,
           min_voxels: int, ml: float) -> tuple[list[dict], str | None]:
    """The lungs among the air-like components ``air`` inside the body (on the body's box, ``affine`` of the
    box): at most one per side of the midline, each a dict of :func:`_shape`; and why fewer than two were
    found (None with two). Components of at least ``min_voxels`` are taken largest first; one of a lung's share
    and sphericity that straddles the midline is split (:func:`_split`) before its side is checked."""
    labels, n = ndimage.label(air)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    order = [int(k) for k in np.argsort(sizes)[::-1] if sizes[k] >= min_voxels]
    if not order:
        return [], (f"no air-like component (below {AIR_LIKE_HU:g} HU) inside the body of at least "
                    f"{min_voxels * ml:.4g} mL")
    objects = ndimage.find_objects(labels)
    pieces, faults = [], []
    for k in order:
        # the component's bounding box with a margin of one voxel, as the erosions in _split need
        box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in objects[k - 1])
        box_affine = np.array(affine, float)
        box_affine[:3, 3] += box_affine[:3, :3] @ np.array([b.start for b in box], float)
        mask = labels[box] == k
        shape = _shape(mask, box_affine, spacing, n_body, body_x)
        bad = _faults(shape, side=False)
        if bad:
            faults.append((sizes[k] * ml, bad))
            continue
        parts = _split(mask, min_voxels, body_x, box_affine) if shape["side_share"] < MIN_SIDE_SHARE else [mask]
        pieces += [shape] if len(parts) == 1 else [_shape(m, box_affine, spacing, n_body, body_x) for m in parts]
        if len(pieces) >= 2:
            break
    lungs = []
    for shape in sorted(pieces, key=lambda s: -s["voxels"]):
        bad = _faults(shape, side=True)
        if not bad and any((s["x"] < body_x) == (shape["x"] < body_x) for s in lungs):
            bad = ["a larger one lies on its side of the midline"]
        if bad:
            faults.append((shape["voxels"] * ml, bad))
        else:
            lungs.append(shape)
    if len(lungs) == 2:
        return lungs, None
    if not faults:
        return lungs, "one air-like component of a lung's share and shape, none on the other side of the midline"
    shown = [f"{volume:.4g} mL air-like component: " + ", ".join(bad) for volume, bad in faults[:3]]
    more = f"; and {len(faults) - 3} more" if len(faults) > 3 else ""
    return lungs, "not lungs: " + "; ".join(shown) + more


def volume_anatomy(volume: np.ndarray, affine: np.ndarray, hu_window: tuple[float, float], *,
                   min_body_ml: float = MIN_BODY_ML, min_lung_ml: float = MIN_LUNG_ML) -> tuple[dict, np.ndarray]:
    """Body, lungs and tissue classes of one volume [X, Y, Z] in [0, 1] (see the module docstring; the size
    thresholds can be lowered for a small field of view).

    Returns (row, histogram): the row holds ``status`` ('two lungs', 'one lung', 'no lungs', 'no body'),
    ``reason`` (why the body or a lung is missing; None with two lungs), ``body_ml``, ``n_lungs`` (0, 1 or 2),
    ``lung_ml`` (total, 0 without lungs), ``left_lung_ml``, ``right_lung_ml``, ``lung_balance`` (smaller /
    larger; None with fewer than two lungs) and ``fractions`` {class: share of the body's voxels} (None per
    class without a body); the histogram [n_bins] int64 counts the body's voxels per whole HU from the
    window's low end (:func:`hu_bins`; all zero without a body).
    """
    first, n_bins = hu_bins(hu_window)
    lo, hi = (float(v) for v in hu_window)
    if not (lo < BODY_HU < hi and lo < AIR_LIKE_HU < hi):
        raise ValueError(f"hu_window {list(hu_window)} must contain the body ({BODY_HU}) and air-like "
                         f"({AIR_LIKE_HU}) thresholds for the anatomy to be measured")
    if volume.ndim != 3:
        raise ValueError(f"expected a 3-D volume, got shape {volume.shape}")
    hu = to_hu(volume, hu_window)
    ml, spacing = voxel_ml(affine), _spacing(affine)
    hist = np.zeros(n_bins, np.int64)
    row: dict = {"status": "no body", "reason": None, "body_ml": 0.0, "n_lungs": 0, "lung_ml": 0.0,
                 "left_lung_ml": 0.0, "right_lung_ml": 0.0, "lung_balance": None,
                 "fractions": {c: None for c in CLASSES}}
    body, box, size = _largest(hu > BODY_HU)
    if size * ml < min_body_ml:
        row["reason"] = (f"no connected component above {BODY_HU:g} HU of at least {min_body_ml:g} mL "
                         f"(largest: {size * ml:.4g} mL)")
        return row, hist
    body_sphericity = sphericity(body, spacing)
    if body_sphericity < MIN_BODY_SPHERICITY:
        row["reason"] = (f"the largest component above {BODY_HU:g} HU ({size * ml:.4g} mL) is not body-shaped: "
                         f"sphericity {body_sphericity:.3g} (a body: at least {MIN_BODY_SPHERICITY:g}; noise?)")
        return row, hist
    # Everything else happens inside the body's bounding box: the affine moves its origin there.
    affine = np.array(affine, float)
    affine[:3, 3] += affine[:3, :3] @ np.array([b.start for b in box], float)
    hu, body = hu[box], _fill_slices(body, axial_axis(affine))
    hist = np.bincount((hu[body].astype(np.int64) - first).clip(0, n_bins - 1), minlength=n_bins)
    n_body = int(np.count_nonzero(body))
    slices = class_slices(hu_window)
    row.update(status="no lungs", body_ml=n_body * ml,
               fractions={c: float(hist[s].sum()) / n_body for c, s in slices.items()})
    body_x = float(_world_x(_centroid(body), affine))
    lungs, row["reason"] = _lungs((hu < AIR_LIKE_HU) & body, affine, spacing, body_x, n_body,
                                  max(1, math.ceil(min_lung_ml / ml)), ml)
    if not lungs:
        return row, hist
    volumes = [lung["voxels"] * ml for lung in lungs]
    if len(lungs) == 2:
        left, right = (0, 1) if lungs[0]["x"] < lungs[1]["x"] else (1, 0)
        row.update(status="two lungs", left_lung_ml=volumes[left], right_lung_ml=volumes[right],
                   lung_balance=min(volumes) / max(volumes))
    else:
        side = "left_lung_ml" if lungs[0]["x"] < body_x else "right_lung_ml"
        row.update({"status": "one lung", side: volumes[0]})
    row.update(n_lungs=len(lungs), lung_ml=sum(volumes))
    return row, hist
