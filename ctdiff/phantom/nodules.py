"""The phantom's nodules and the radiologists who annotate them as LIDC-IDRI's readers do.

Drawing (:func:`draw_nodules`, from its own generator, in the rendered scan): 1-3 outlined nodules per patient,
3-30 mm across (log-uniform; ``data.phantom_nodule_mm`` sets another range), ellipsoids with axes within 15 % of
the diameter, solid (+30 HU) or, one in three, part-solid (a solid core of 30-60 % of the radius in a ground-glass
rim at -550 HU); one in three touches the pleura (juxtapleural: its centre lies 20-60 % of its radius from the
chest wall, the rest in the wall), the others lie wholly in lung (away from vessels, airways, heart and
mediastinum). Besides them 0-2 nodules of 2-3 mm (marked as points, as LIDC's readers mark nodules < 3 mm) and 0-1
non-nodule locus. Centres are drawn on a coarse map of where the scan shows lung (about 4 mm cells,
:func:`_lung_map`).

Painting (:func:`paint`): after the scan, with noise of the scan's level; the solid part raises lung and
fat to +30 HU and leaves denser tissue (the chest wall) as it is, the rim raises only what is darker than
-550 HU.

Readers (:func:`reader_sessions`): each outlined nodule is marked by 1-4 of four readers; each reader's
outline is the nodule's cross-section scaled by 1 ± :data:`READER_SCALE` and shifted by up to
:data:`READER_SHIFT_PX` pixel per axis (seeded), traced on the pixels just outside it (LIDC's
convention, see :mod:`ctdiff.ingest.annotations.rasterise`) on every slice whose centre lies inside it.
Points and loci are marked by 1-4 (non-nodules 1-2) readers, within one pixel of the true centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import distance_transform_edt

from ctdiff.ingest.annotations.lidc_xml import CHARACTERISTICS, Mark, NonNodule, Roi

SOLID_HU, GROUND_GLASS_HU = 30.0, -550.0

#: Readers' outlines differ by up to this relative size and this many pixels of shift per axis.
READER_SCALE, READER_SHIFT_PX = 0.06, 0.5
#: The outlined nodules' diameters, mm: LIDC's definition of a nodule a reader outlines.
DIAMETER_MM = (3.0, 30.0)
#: Readers in a session file (LIDC: up to four).
N_READERS = 4


@dataclass(frozen=True)
class PhantomNodule:
    """One painted nodule: centre ``(x, y, z)`` mm in the chest frame (x toward Left and y toward Posterior
    from the image centre, z above the lowest slice), semi-axes ``radii`` mm, ``core`` the solid fraction of
    the radius (1 = solid), kind ``'nodule'`` (outlined), ``'small'`` (a point) or ``'non-nodule'``
    (a locus, nothing painted)."""

    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    core: float
    kind: str
    juxtapleural: bool = False

    @property
    def diameter_mm(self) -> float:
        """The equivalent-sphere diameter, ``2 (rx ry rz)^(1/3)``."""
        return 2 * float(np.prod(self.radii)) ** (1 / 3)


def _lung_map(chest, volume: np.ndarray, dz: float, cell_mm: float):
    """Where the scan shows lung, on cells of about ``cell_mm``: the mean HU of each cell of every
    sampled slice lies in (-960, -600) (lung parenchyma, not air, vessels or soft tissue) inside the thoracic
    cavity. Returns the mask ``[Z, Y, X]``, its distance to the nearest non-lung cell (mm), the in-plane
    distance of each cell to the cavity's wall (mm), the cells' centres ``(x [X], y [Y], z [Z])`` mm and the
    in-plane cell size."""
    nz, ny, nx = volume.shape
    dx, dy = float(chest.x[0, 1] - chest.x[0, 0]), float(chest.y[1, 0] - chest.y[0, 0])
    step, zstep = max(1, int(round(cell_mm / dx))), max(1, int(round(cell_mm / dz)))
    cy, cx = ny // step, nx // step
    ks = np.arange(zstep // 2, nz, zstep)
    blocks = volume[ks, :cy * step, :cx * step].reshape(len(ks), cy, step, cx, step).mean(axis=(2, 4))
    centre = slice(step // 2, None, step)
    cavity = (chest.body.cavity[centre, centre] < 1)[:cy, :cx]
    mask = (blocks > -960) & (blocks < -600) & cavity
    cell = (zstep * dz, step * dy, step * dx)
    dist = distance_transform_edt(mask, sampling=cell)
    wall = distance_transform_edt(cavity, sampling=cell[1:])
    centres = (chest.x[0, centre][:cx], chest.y[centre, 0][:cy], chest.z[ks])
    return mask, dist, np.broadcast_to(wall, mask.shape), centres, step * dx


def draw_nodules(rng: np.random.Generator, chest, volume: np.ndarray, dz: float,
                 diameter_mm: tuple[float, float] = DIAMETER_MM) -> list[PhantomNodule]:
    """The nodules of one patient (module docstring) in the rendered scan ``volume`` ``[Z, Y, X]`` HU of
    slice spacing ``dz`` mm; empty when the lungs are too small to hold one. The outlined nodules' diameters
    are drawn log-uniform in ``diameter_mm`` (LIDC's 3-30 mm by default; another range takes the same draws
    from ``rng``, so every other choice of the patient stays as it was)."""
    mask, dist, wall, (xs, ys, zs), cell = _lung_map(chest, volume, dz, 4.0)
    out: list[PhantomNodule] = []
    if not mask.any():
        return out

    def place(radius: float, juxta: bool):
        if juxta:   # centre 20-60 % of the radius from the chest wall, the rest of the lung around it
            ok = mask & (wall >= 0.2 * radius + cell / 2) & (wall <= 0.6 * radius + cell / 2) \
                & (dist >= np.minimum(wall, 0.6 * radius) - cell)
        else:
            ok = dist >= radius + 1.5 * cell
        cells = np.argwhere(ok)
        if len(cells) == 0:
            return None
        k, j, i = cells[rng.integers(len(cells))]
        jitter = rng.uniform(-cell / 4, cell / 4, 3)                # within the cell
        return float(xs[i] + jitter[0]), float(ys[j] + jitter[1]), float(zs[k] + jitter[2])

    for _ in range(int(rng.integers(1, 4))):
        diameter = float(np.exp(rng.uniform(np.log(diameter_mm[0]), np.log(diameter_mm[1]))))
        axes = diameter / 2 * rng.uniform(0.85, 1.15, 3)
        axes *= diameter / 2 / float(np.prod(axes)) ** (1 / 3)       # keep the drawn equivalent diameter
        juxta = bool(rng.random() < 1 / 3)
        core = float(rng.uniform(0.3, 0.6)) if rng.random() < 1 / 3 else 1.0
        centre = place(float(axes.max()), juxta)
        if centre is not None:
            out.append(PhantomNodule(centre, tuple(float(a) for a in axes), core, "nodule", juxta))
    for _ in range(int(rng.integers(0, 3))):
        r = float(rng.uniform(1.0, 1.5))
        centre = place(r, False)
        if centre is not None:
            out.append(PhantomNodule(centre, (r, r, r), 1.0, "small"))
    for _ in range(int(rng.integers(0, 2))):
        centre = place(3.0, False)
        if centre is not None:
            out.append(PhantomNodule(centre, (0.0, 0.0, 0.0), 1.0, "non-nodule"))
    return out


def paint(volume: np.ndarray, chest, nodules: list[PhantomNodule], rng: np.random.Generator, noise_sd: float,
          hu_range: tuple[int, int]) -> None:
    """Paint the nodules into the scan ``volume`` ``[Z, Y, X]`` (int16 HU, in place), each voxel with white
    noise of ``noise_sd`` HU: the rim raises what is darker than ground glass, the solid part what is darker
    than solid tissue."""
    for n in nodules:
        if n.kind == "non-nodule":
            continue
        (cx, cy, cz), (rx, ry, rz) = n.centre, n.radii
        ks = np.flatnonzero(np.abs(chest.z - cz) < rz)
        rows = np.flatnonzero(np.abs(chest.y[:, 0] - cy) < ry)
        cols = np.flatnonzero(np.abs(chest.x[0] - cx) < rx)
        if ks.size == 0 or rows.size == 0 or cols.size == 0:
            continue
        box = (slice(ks[0], ks[-1] + 1), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        rho = np.sqrt(((chest.x[None, :, box[2]] - cx) / rx) ** 2 + ((chest.y[None, box[1]] - cy) / ry) ** 2
                      + ((chest.z[box[0], None, None] - cz) / rz) ** 2)
        region = volume[box].astype(np.float32)
        noise = rng.standard_normal(region.shape, dtype=np.float32) * np.float32(noise_sd)
        value = np.where(rho < n.core, SOLID_HU, GROUND_GLASS_HU) + noise
        np.copyto(region, np.maximum(region, value), where=rho < 1)
        volume[box] = np.clip(np.rint(region), *hu_range)


def _outline(cx_px: float, cy_px: float, a_px: float, b_px: float) -> np.ndarray:
    """``[n, 2]`` whole-pixel (x, y) chain just outside the ellipse of semi-axes ``a_px``, ``b_px``: points of
    the ellipse half a pixel further out, sampled densely and rounded, consecutive duplicates removed."""
    n = int(np.ceil(8 * np.pi * (max(a_px, b_px) + 1))) + 8
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts = np.rint(np.column_stack([cx_px + (a_px + 0.5) * np.cos(t), cy_px + (b_px + 0.5) * np.sin(t)]))
    keep = np.any(pts != np.roll(pts, 1, axis=0), axis=1)
    return pts[keep] if keep.any() else pts[:1]


def _characteristics(rng: np.random.Generator, n: PhantomNodule, base: dict[str, int]) -> dict[str, int]:
    """One reader's ratings: the nodule's ``base`` ratings, each moved by -1, 0 or +1 and clipped."""
    top = {"calcification": 6, "internalStructure": 4}
    return {k: int(np.clip(v + rng.integers(-1, 2), 1, top.get(k, 5))) for k, v in base.items()}


def reader_sessions(rng: np.random.Generator, nodules: list[PhantomNodule], *, pixel_mm: tuple[float, float],
                    matrix: tuple[int, int], slice_z: np.ndarray, z0: float, sop_uid
                    ) -> list[tuple[list[Mark], list[NonNodule]]]:
    """Four readers' marks of ``nodules`` as LIDC reading sessions (for
    :func:`ctdiff.ingest.annotations.lidc_xml.lidc_xml`).

    ``pixel_mm`` (dx, dy), ``matrix`` (rows, columns), ``slice_z`` the chest-frame z of each slice (mm, index
    k), ``z0`` the DICOM z of slice 0, ``sop_uid(k)`` slice k's SOPInstanceUID.
    """
    dx, dy = pixel_mm
    rows, columns = matrix
    sessions: list[tuple[list[Mark], list[NonNodule]]] = [([], []) for _ in range(N_READERS)]

    def pixel(x: float, y: float) -> tuple[float, float]:
        return x / dx + (columns - 1) / 2, y / dy + (rows - 1) / 2

    def roi(k: int, points: np.ndarray, inclusion: bool = True) -> Roi:
        return Roi(round(z0 + float(slice_z[k]), 4), sop_uid(k), inclusion, points)

    for number, n in enumerate(nodules, start=1):
        many = N_READERS if n.kind != "non-nodule" else 2
        readers = sorted(rng.choice(N_READERS, size=int(rng.integers(1, many + 1)), replace=False))
        texture = 5 if n.core >= 1 else 3
        base = {name: int(rng.integers(1, 6)) for name in CHARACTERISTICS}
        base.update(internalStructure=1, calcification=6, texture=texture)
        cx, cy = pixel(n.centre[0], n.centre[1])
        for reader in readers:
            marks, non_nodules = sessions[reader]
            if n.kind != "nodule":
                k = int(np.argmin(np.abs(slice_z - n.centre[2])))
                point = np.array([[np.rint(cx + rng.integers(-1, 2)), np.rint(cy + rng.integers(-1, 2))]])
                if n.kind == "small":
                    marks.append(Mark(reader + 1, f"small-{number}", (roi(k, point),)))
                else:
                    non_nodules.append(NonNodule(reader + 1, f"non-nodule-{number}", roi(k, point, False)))
                continue
            scale = 1 + rng.uniform(-READER_SCALE, READER_SCALE)
            sx, sy = rng.uniform(-READER_SHIFT_PX, READER_SHIFT_PX, 2)
            (rx, ry, rz), rois = (r * scale for r in n.radii), []
            for k in np.flatnonzero(np.abs(slice_z - n.centre[2]) < rz):
                s = np.sqrt(1 - ((slice_z[k] - n.centre[2]) / rz) ** 2)
                a, b = rx * s / dx, ry * s / dy
                if a < 0.5 and b < 0.5:
                    continue
                rois.append(roi(int(k), _outline(cx + sx, cy + sy, a, b)))
            if rois:
                marks.append(Mark(reader + 1, f"nodule-{number}", tuple(rois), _characteristics(rng, n, base)))
    return sessions
