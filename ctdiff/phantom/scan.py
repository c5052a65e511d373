"""The phantom's scan: a drawn chest (:mod:`ctdiff.phantom.anatomy`) rendered slice by slice as a CT
scanner reconstructs it, with white noise, rounding to whole HU, the 12-bit range and padding outside the
circular field of view.

Values follow a GE scanner: stored ``raw = HU + 1024``; outside the reconstruction circle ``PADDING_HU``
(-3024 HU, stored raw -2000), inside the 12-bit range ``HU_RANGE``.
"""

from __future__ import annotations

import numpy as np

from ctdiff.phantom.anatomy import (AIR, BLOOD, CANCELLOUS, CARTILAGE, FAT, LIVER, LUNG, MUSCLE, RIB, SOFT,
                                         Chest, draw_chest, lung_mask)
from ctdiff.phantom.nodules import DIAMETER_MM, PhantomNodule, draw_nodules, paint

RESCALE_INTERCEPT = -1024
PADDING_RAW = -2000                              # stored value outside the reconstruction circle
PADDING_HU = PADDING_RAW + RESCALE_INTERCEPT     # -3024 HU after rescale
HU_RANGE = (-1024, 3071)                         # what a 12-bit scanner stores inside the field of view


def _lung_slice(chest: Chest, z: float) -> np.ndarray:
    """Lung HU inside the texture's box at height z: parenchyma, gravity gradient, branching vessels."""
    tex = chest.texture
    t = np.clip(z / (tex.z[1] - tex.z[0]) + 1, 0, len(tex.z) - 1.000001)
    i, w = int(t), np.float32(t - int(t))
    f1, f2 = tex.weights_y @ ((1 - w) * tex.fields[:, i] + w * tex.fields[:, i + 1]) @ tex.weights_x
    hilum = np.exp(-((z - chest.marks.carina + 30) / 70.0) ** 2) * (
        tex.hilum_y[0] * tex.hilum_x[0] + tex.hilum_y[1] * tex.hilum_x[1])
    vessel = np.exp(-(f1 * f1 + f2 * f2) / (2 * (0.12 + 0.22 * hilum) ** 2))     # tubes where f1 = f2 = 0
    gravity = 0.5 * (chest.y[tex.box[0]] - chest.body.cavity_y)      # dependent lung is denser
    return LUNG + gravity + 12 * f1 + (BLOOD - LUNG) * (0.55 + 0.45 * hilum) * vessel


def _paint_heart_and_vessels(chest: Chest, img: np.ndarray, z: float) -> None:
    """Paint heart, pericardial fat, great vessels, oesophagus, trachea and bronchi into ``img`` [Y, X]."""
    heart, vessels = chest.heart, chest.vessels
    dzh = (z - heart.z) / heart.half_height
    if abs(dzh) < 1:
        (hy, hx), s_h = heart.box, np.sqrt(1 - dzh * dzh)
        np.copyto(img[hy, hx], FAT - 10, where=heart.radius[hy, hx] < s_h + heart.pericardium)
        np.copyto(img[hy, hx], BLOOD, where=heart.radius[hy, hx] < s_h)
    for (_, _, radius, lo, hi, hu), d in zip(vessels.tubes, vessels.distance):
        if lo < z < hi:
            np.copyto(img, hu, where=d < radius)
    if abs(z - vessels.arch_z) < vessels.aorta:
        np.copyto(img, BLOOD, where=vessels.arch < np.sqrt(vessels.aorta ** 2 - (z - vessels.arch_z) ** 2))
    tx, ty, tr = chest.trachea
    drop = chest.marks.carina - z             # below the carina the main bronchi diverge, the left flatter
    airways = [(tx, tr)] if drop < 0 else [(tx - 0.9 * drop, 0.72 * tr), (tx + 1.4 * drop, 0.68 * tr)]
    for cx, radius in airways if drop < 35 else []:
        d = np.hypot(chest.x - cx, chest.y - ty)
        np.copyto(img, SOFT, where=d < radius + 2)
        np.copyto(img, AIR, where=d < radius)


def _lung_scales(chest: Chest, z: float) -> tuple[float, float]:
    """The lungs' apex taper and the cavity's scale at height z."""
    marks = chest.marks
    s_lung = float(np.clip((marks.apex - z) / marks.apex_taper, 0, 1)) ** 0.6
    return s_lung, (0.55 + 0.45 * s_lung if z > marks.recess else 1.0)


def _render(chest: Chest, k: int) -> np.ndarray:
    """HU slice k, float32 [Y, X], before noise and field-of-view padding (painter's order)."""
    body, marks, ribs, spine = chest.body, chest.marks, chest.ribs, chest.spine
    z, img = float(chest.z[k]), chest.table.copy()
    s_lung, s_cav = _lung_scales(chest, z)
    s_body = 1 - 0.07 * np.clip((z - marks.apex + 30) / 60, 0, 1)      # neck narrower than chest
    np.copyto(img, FAT, where=body.outline < s_body)
    np.copyto(img, MUSCLE, where=body.outline < s_body - body.fat_depth)
    cavity = body.cavity < s_cav
    if marks.recess - 40 < z < marks.apex + 15:
        band = (body.cavity < s_cav + ribs.band) & ~cavity
        height = z + ribs.drop - ribs.phase
        rib = band & (height - np.floor(height / ribs.pitch) * ribs.pitch < ribs.height)
        np.copyto(img, RIB, where=rib & ~ribs.cartilage)
        np.copyto(img, CARTILAGE, where=rib & ribs.cartilage)
    np.copyto(img, SOFT, where=cavity)
    lung, (ry, rx) = cavity & lung_mask(chest.x, chest.y, chest.lung_axes, s_lung) & (z > chest.dome), chest.texture.box
    if lung[ry, rx].any():
        np.copyto(img[ry, rx], _lung_slice(chest, z), where=lung[ry, rx])
    np.copyto(img, FAT, where=chest.mediastinum & cavity & (z > chest.dome))
    if z < marks.dome_right:                                         # upper abdomen under the domes
        below = cavity & (z <= chest.dome)
        np.copyto(img, SOFT, where=below)
        np.copyto(img, LIVER, where=below & chest.liver)
        gx, gy, gz, ga, gb, gc = chest.stomach
        if abs(z - gz) < gc:
            inside = ((chest.x - gx) / ga) ** 2 + ((chest.y - gy) / gb) ** 2 < 1 - ((z - gz) / gc) ** 2
            np.copyto(img, AIR, where=below & inside)
    np.copyto(img, MUSCLE, where=spine.muscle)
    _paint_heart_and_vessels(chest, img, z)
    (sy, sx), level = spine.box, (z - spine.phase) % spine.pitch
    arch = [] if 0.55 < level / spine.pitch < 0.85 else spine.arch    # gap between spinous processes
    for mask, hu in spine.canal + arch + (spine.disc if level < spine.disc_height else spine.vertebra):
        np.copyto(img[sy, sx], hu, where=mask[sy, sx])
    if chest.sternum_z[0] < z < chest.sternum_z[1]:
        np.copyto(img, CANCELLOUS + 100, where=chest.sternum)
    return img


def phantom_volume(rng: np.random.Generator, shape_zyx: tuple[int, int, int],
                   spacing_zyx: tuple[float, float, float], *, body_scale: float = 1.0,
                   nodules: bool = False) -> np.ndarray:
    """The HU volume of :func:`phantom_scan` (with its nodules painted when ``nodules``)."""
    return phantom_scan(rng, shape_zyx, spacing_zyx, body_scale=body_scale, nodules=nodules)[0]


def phantom_scan(rng: np.random.Generator, shape_zyx: tuple[int, int, int],
                 spacing_zyx: tuple[float, float, float], *, body_scale: float = 1.0,
                 nodules: bool = True, nodule_mm: tuple[float, float] = DIAMETER_MM
                 ) -> tuple[np.ndarray, list[PhantomNodule], np.random.Generator]:
    """int16 HU array [Z, Y, X] in DICOM patient frame (LPS): column index x increases toward patient Left,
    row index y toward Posterior, z index toward Superior (slice k at z = z0 + k*dz).

    ``spacing_zyx`` is (dz, dy, dx) in mm; the image centre is the reconstruction centre. Voxels outside the
    circle of diameter ``min(X*dx, Y*dy)`` hold ``PADDING_HU`` (-3024); inside, values lie in ``HU_RANGE``.
    ``body_scale`` (~0.85-1.15) scales the patient's in-plane size; the lungs span ~80% of the z extent.
    Noise is white, Gaussian, 10-20 HU (drawn per patient): each slice takes a random window of a bank of
    4 slices' worth of normal numbers drawn after the anatomy.

    Returns the volume, its nodules (:mod:`ctdiff.phantom.nodules`, outlined ones ``nodule_mm`` across; empty
    unless ``nodules``) and the generator their readers are drawn from. The nodules come from a generator of
    their own, seeded from
    ``rng`` right after the anatomy whether or not they are drawn, and are painted (with noise of the
    scan's level) after the scan, so switching them off changes no other voxel.
    """
    if min(shape_zyx) < 1 or min(spacing_zyx) <= 0 or body_scale <= 0:
        raise ValueError(f"need a positive shape, spacing and body_scale, got {shape_zyx}, {spacing_zyx}, {body_scale}")
    (_, ny, nx), (_, dy, dx) = shape_zyx, spacing_zyx
    chest = draw_chest(rng, shape_zyx, spacing_zyx, body_scale)
    nodule_rng = np.random.default_rng(int(rng.integers(2 ** 63)))
    noise_sd, noise_bank = rng.uniform(10, 20), rng.standard_normal(4 * ny * nx, dtype=np.float32)
    outside = np.broadcast_to(np.hypot(chest.x, chest.y) > min(nx * dx, ny * dy) / 2, (ny, nx))
    out = np.empty(shape_zyx, np.int16)
    for k in range(shape_zyx[0]):
        start = int(rng.integers(0, noise_bank.size - ny * nx))
        hu = _render(chest, k) + noise_bank[start:start + ny * nx].reshape(ny, nx) * np.float32(noise_sd)
        np.clip(np.rint(hu, out=hu), *HU_RANGE, out=hu)
        hu[outside] = PADDING_HU
        out[k] = hu
    drawn = draw_nodules(nodule_rng, chest, out, float(spacing_zyx[0]), nodule_mm) if nodules else []
    paint(out, chest, drawn, nodule_rng, noise_sd, HU_RANGE)
    return out, drawn, nodule_rng
