"""The phantom's chest: one patient's anatomy drawn from a random generator as z-invariant 2-D maps and
parameters, one function per structure (rendered into slices by :mod:`ctdiff.phantom.scan`).

Geometry is the DICOM patient frame (LPS): ``x`` [1, X] mm toward the patient's Left and ``y`` [Y, 1] mm
toward Posterior, both from the image centre (the reconstruction centre); ``z`` mm above the lowest slice,
toward Superior. Values are Hounsfield units (HU). The heart lies on the patient's left, so a left/right
flip is detectable. In-plane sizes scale with the body scale ``s``, z landmarks with the scan length (the
scan is planned to cover the lungs).

:func:`draw_chest` calls the structures' functions in a fixed order (body, landmarks, spine, ribs, heart,
vessels, table, lung texture), so one generator state gives one patient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

# Tissue values, HU.
AIR, LUNG, FAT, SOFT, MUSCLE, BLOOD, LIVER = -1000.0, -860.0, -100.0, 35.0, 45.0, 40.0, 58.0
CANCELLOUS, CORTICAL, RIB, DISC, CSF, CARTILAGE = 200.0, 650.0, 480.0, 85.0, 20.0, 140.0
TABLE_SHELL, TABLE_FOAM = 250.0, -950.0

Masks = list[tuple[np.ndarray, float]]  # (mask [Y, X], HU) painted in order


def _superellipse(x: np.ndarray, y: np.ndarray, a: float, b: float, p: float = 2.0) -> np.ndarray:
    """Normalised radius ``(|x/a|^p + |y/b|^p)^(1/p)``, float32 on the broadcast grid of x [1, X], y [Y, 1]."""
    return ((np.abs(x / a) ** p + np.abs(y / b) ** p) ** (1.0 / p)).astype(np.float32)


def _interp_matrix(coarse: np.ndarray, fine: np.ndarray) -> np.ndarray:
    """[len(fine), len(coarse)] linear-interpolation weights from a uniform coarse grid onto ``fine``."""
    t = np.clip((fine - coarse[0]) / (coarse[1] - coarse[0]), 0, len(coarse) - 1.000001)
    i, rows = t.astype(int), np.arange(len(fine))
    w = np.zeros((len(fine), len(coarse)), np.float32)
    w[rows, i], w[rows, i + 1] = 1 - (t - i), t - i
    return w


def _bbox(mask: np.ndarray) -> tuple[slice, slice]:
    """Row and column slices of the bounding box of a 2-D mask (a 1x1 box if it is empty)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return slice(0, 1), slice(0, 1)
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


@dataclass(frozen=True, eq=False)
class _Body:
    """Body wall (a fat layer over muscle) and the thoracic cavity inside the rib cage."""

    outline: np.ndarray      # [Y, X] normalised radius of the skin: < 1 inside the body
    fat_depth: float         # subcutaneous fat thickness in units of that radius
    back: float              # y of the back, mm: where the patient lies on the table
    fat: float               # subcutaneous fat thickness, mm
    cavity: np.ndarray       # [Y, X] normalised radius of the thoracic cavity: < 1 inside
    cavity_width: float      # half-width of the cavity, mm
    cavity_depth: float      # half-depth (front to back) of the cavity, mm
    cavity_y: float          # y of the cavity centre, mm


def _body(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, s: float) -> _Body:
    """Body wall with its back flattened on the table (a squarer superellipse behind the centre) under a fat
    layer; the cavity is a superellipse inside the wall, 6 mm (scaled) further forward."""
    half_width = 155 * s * rng.uniform(0.94, 1.06)
    half_depth = 105 * s * rng.uniform(0.93, 1.07)
    centre_y = rng.uniform(-25, -8)
    fat = rng.uniform(6, 20) * s ** 2
    outline = np.where(y < centre_y, _superellipse(x, y - centre_y, half_width, half_depth, 2.4),
                       _superellipse(x, y - centre_y, half_width, half_depth, 3.5))
    cavity_width, cavity_depth = half_width - fat - 16 * s, half_depth - fat - 12 * s
    cavity_y = centre_y - 6 * s
    return _Body(outline=outline, fat_depth=fat / half_depth, back=centre_y + half_depth, fat=fat,
                 cavity=_superellipse(x, y - cavity_y, cavity_width, cavity_depth, 2.2),
                 cavity_width=cavity_width, cavity_depth=cavity_depth, cavity_y=cavity_y)


@dataclass(frozen=True, eq=False)
class _Landmarks:
    """Heights (mm above the lowest slice) that place the organs along z, and the mediastinal midline."""

    apex: float              # top of the lungs
    recess: float            # deepest (posterior, lateral) lung recess
    lung_height: float       # apex - recess
    dome_right: float        # top of the right diaphragm dome (above the liver)
    dome_left: float         # top of the left dome, lower than the right
    apex_taper: float        # height over which the lungs narrow toward the apex
    carina: float            # tracheal bifurcation
    arch: float              # aortic arch
    midline: float           # x of the mediastinal midline, mm


def _landmarks(rng: np.random.Generator, length: float) -> _Landmarks:
    """z landmarks as fractions of the scan length (the scan is planned to cover the lungs), right dome
    higher than the left; the midline lies a few mm left or right of the image centre."""
    apex = length * rng.uniform(0.88, 0.94)
    recess = length * rng.uniform(0.05, 0.12)
    lung_height = apex - recess
    dome_right = recess + lung_height * rng.uniform(0.24, 0.30)
    dome_left = dome_right - rng.uniform(10, 25)
    apex_taper = lung_height * rng.uniform(0.36, 0.44)
    carina = recess + lung_height * rng.uniform(0.64, 0.7)
    arch = carina + rng.uniform(18, 28)
    midline = rng.uniform(-3, 5)
    return _Landmarks(apex=apex, recess=recess, lung_height=lung_height, dome_right=dome_right,
                      dome_left=dome_left, apex_taper=apex_taper, carina=carina, arch=arch, midline=midline)


def _diaphragm(x: np.ndarray, y: np.ndarray, body: _Body, marks: _Landmarks) -> np.ndarray:
    """[Y, X] float32 height of the diaphragm: two paraboloid domes, lowest posteriorly and laterally, never
    below the recess. The lungs lie above it, the upper abdomen below."""
    ac, bc, yc = body.cavity_width, body.cavity_depth, body.cavity_y
    side_x = 0.48 * ac

    def depth(cx: float) -> np.ndarray:  # 0 at a dome's top, 1 where it reaches the recess
        return ((x - cx) / (0.62 * ac)) ** 2 + ((y - yc + 0.3 * bc) / (0.95 * bc)) ** 2

    dome = np.where(x < marks.midline, marks.dome_right - (marks.dome_right - marks.recess) * depth(-side_x),
                    marks.dome_left - (marks.dome_left - marks.recess) * depth(side_x))
    return np.maximum(dome, marks.recess).astype(np.float32)


def _mediastinum(x: np.ndarray, y: np.ndarray, body: _Body, marks: _Landmarks, s: float) -> np.ndarray:
    """[Y, X] mask of the mediastinal fat between the lungs."""
    return _superellipse(x - marks.midline, y - body.cavity_y + 0.15 * body.cavity_depth, 25 * s,
                         0.9 * body.cavity_depth, 1.6) < 1


@dataclass(frozen=True, eq=False)
class _Spine:
    """One vertebra's cross-sections, repeated along z with the vertebral pitch."""

    x: float                 # centre of the vertebral body, mm
    y: float
    muscle: np.ndarray       # [Y, X] block of paraspinal muscle
    canal: Masks             # spinal canal (CSF)
    arch: Masks              # neural arch and spinous process (absent between spinous processes)
    vertebra: Masks          # transverse processes, cortex, cancellous bone
    disc: Masks              # the intervertebral disc in place of the vertebra
    box: tuple[slice, slice]  # bounding box of all of the above
    pitch: float             # vertebral height (one vertebra and disc), mm
    phase: float             # z of the first disc, mm
    disc_height: float       # mm


def _spine(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, body: _Body, s: float) -> _Spine:
    """Vertebral body (cortex + cancellous bone, or a disc), canal, arch, spinous and transverse processes,
    inside a block of paraspinal muscle, 50 mm (scaled) in front of the back's fat."""
    centre_x, radius, centre_y = rng.uniform(-2, 2), 15 * s, body.back - body.fat - 50 * s
    canal_y = centre_y + radius + 9 * s
    r_body, r_canal = np.hypot(x - centre_x, (y - centre_y) * 1.15), np.hypot(x - centre_x, y - canal_y)
    muscle = _superellipse(x - centre_x, y - centre_y - 20 * s, 28 * s, 42 * s) < 1
    arch = ((r_canal >= 8 * s) & (r_canal < 13.5 * s) & (y > canal_y - 4 * s)) | (
        (np.abs(x - centre_x) < 3.5 * s) & (y > canal_y + 8 * s) & (y < canal_y + 34 * s))
    transverse = (np.abs(y - canal_y + 2 * s) < 4 * s) & (np.abs(x - centre_x) < 34 * s) & (r_canal >= 8 * s)
    pitch = 27 * s * rng.uniform(0.95, 1.05)
    phase = rng.uniform(0, 27)
    vertebra = [(transverse, CORTICAL - 200), (r_body < radius, CORTICAL), (r_body < radius - 2.2 * s, CANCELLOUS)]
    return _Spine(x=centre_x, y=centre_y, muscle=muscle, canal=[(r_canal < 8 * s, CSF)],
                  arch=[(arch, CORTICAL - 150)], vertebra=vertebra, disc=[(r_body < radius, DISC)],
                  box=_bbox(muscle | transverse | (r_canal < 14 * s)), pitch=pitch, phase=phase, disc_height=6 * s)


@dataclass(frozen=True, eq=False)
class _Ribs:
    """Twelve ribs in a band just outside the cavity, each descending anteriorly."""

    band: float              # rib thickness outside the cavity, in units of its normalised radius
    drop: np.ndarray         # [Y, X] float32 z offset of a rib at each angle around the cavity, mm
    cartilage: np.ndarray    # [Y, X] anterior costal cartilage
    pitch: float             # z distance between ribs, mm
    height: float            # rib height, mm
    phase: float             # z offset of the first rib, mm


def _ribs(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, body: _Body, marks: _Landmarks,
          s: float) -> _Ribs:
    """The z offset grows with the angle from the posterior midline (0) to the anterior one (1); the
    anterior fifth is cartilage. 12 ribs over the lungs, each 9 mm (scaled) high."""
    angle = np.arctan2(np.abs(x), y - body.cavity_y) / np.pi
    drop = (rng.uniform(100, 130) * s * angle ** 1.3).astype(np.float32)
    pitch = (marks.lung_height + 50) / 11.0
    return _Ribs(band=9 * s / body.cavity_width, drop=drop, cartilage=angle > 0.8, pitch=pitch, height=9 * s,
                 phase=rng.uniform(0, pitch))


@dataclass(frozen=True, eq=False)
class _Heart:
    """Rotated ellipsoid on the LEFT in pericardial fat."""

    radius: np.ndarray       # [Y, X] float32 normalised in-plane radius of its widest section
    y: float                 # centre, mm
    short_axis: float        # in-plane half-axis across the long axis, mm
    z: float                 # centre height, mm
    half_height: float       # mm
    pericardium: float       # pericardial fat thickness in units of the radius
    box: tuple[slice, slice]  # bounding box of heart and pericardium


def _heart(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, body: _Body, marks: _Landmarks,
           s: float) -> _Heart:
    """Long axis toward left-anterior (rotated by -45 to -25 degrees), resting on the left dome."""
    centre_x = marks.midline + 28 * s + rng.uniform(-6, 6)
    centre_y = body.cavity_y - 0.12 * body.cavity_depth + rng.uniform(-6, 6)
    theta = np.deg2rad(rng.uniform(-45, -25))
    long_axis = 56 * s * rng.uniform(0.9, 1.1)
    short_axis = 42 * s * rng.uniform(0.9, 1.1)
    half_height = 46 * s * rng.uniform(0.9, 1.1)
    along = (x - centre_x) * np.cos(theta) - (y - centre_y) * np.sin(theta)
    across = (x - centre_x) * np.sin(theta) + (y - centre_y) * np.cos(theta)
    radius = np.sqrt((along / long_axis) ** 2 + (across / short_axis) ** 2).astype(np.float32)
    pericardium = 6 * s / short_axis
    return _Heart(radius=radius, y=centre_y, short_axis=short_axis, z=marks.dome_left - 15 + half_height,
                  half_height=half_height, pericardium=pericardium, box=_bbox(radius < 1 + pericardium))


@dataclass(frozen=True, eq=False)
class _Vessels:
    """Great vessels and oesophagus as circles switched on over z ranges, and the aortic arch."""

    tubes: list[tuple[float, float, float, float, float, float]]  # (x, y, radius, z_low, z_high, HU)
    distance: list[np.ndarray]  # [Y, X] float32 distance from each tube's centre
    aorta: float             # radius of the descending aorta, mm
    arch: np.ndarray         # [Y, X] float32 distance from the arch's centre line
    arch_z: float


def _vessels(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, length: float, marks: _Landmarks,
             spine: _Spine, heart: _Heart, s: float) -> _Vessels:
    """Descending aorta beside the spine, ascending aorta in front of the heart, the arch joining them above,
    vena cava, oesophagus and the arch's three branches."""
    xm, aorta = marks.midline, 12 * s * rng.uniform(0.9, 1.15)
    desc, asc = (xm + 24 * s, spine.y - 24 * s), (xm - 4 * s, heart.y - 0.9 * heart.short_axis)
    seg = np.subtract(desc, asc)
    t = np.clip(((x - asc[0]) * seg[0] + (y - asc[1]) * seg[1]) / (seg @ seg), 0, 1)
    arch = np.hypot(x - asc[0] - t * seg[0], y - asc[1] - t * seg[1]).astype(np.float32)
    top, ascending_low = 2 * length, heart.z + 0.3 * heart.half_height
    tubes = [
        (*desc, aorta, -1.0, marks.arch, BLOOD), (*asc, 1.2 * aorta, ascending_low, marks.arch, BLOOD),
        (xm - 26 * s, asc[1] + 4 * s, 9 * s, heart.z, marks.arch + 50, BLOOD),         # vena cava
        (spine.x + 4 * s, spine.y - 24 * s, 7 * s, -1.0, top, SOFT),                  # oesophagus
        (xm - 12 * s, asc[1] + 8 * s, 6 * s, marks.arch, top, BLOOD),
        (xm + 4 * s, asc[1] + 14 * s, 5 * s, marks.arch, top, BLOOD),
        (xm + 16 * s, asc[1] + 24 * s, 6 * s, marks.arch, top, BLOOD)]
    distance = [np.hypot(x - vx, y - vy).astype(np.float32) for vx, vy, *_ in tubes]
    return _Vessels(tubes=tubes, distance=distance, aorta=aorta, arch=arch, arch_z=marks.arch)


def _table(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, body: _Body,
           shape: tuple[int, int]) -> np.ndarray:
    """[Y, X] float32 air with the table behind the back (z-invariant): a cradle of two carbon shells around
    foam, 0-5 mm from the skin at the midline, curving up at the sides."""
    top = body.back + rng.uniform(0, 5) - 30 * (x / 400.0) ** 2
    image = np.full(shape, AIR, np.float32)
    for lo, hi, hu in ((0, 2.5, TABLE_SHELL), (2.5, 14, TABLE_FOAM), (14, 16.5, TABLE_SHELL)):
        image[(np.abs(x) < 230) & (y >= top + lo) & (y < top + hi)] = hu
    return image


@dataclass(frozen=True, eq=False)
class _LungTexture:
    """Two smooth random fields on a coarse grid and the separable weights that bring them onto the pixels of
    the lungs' bounding box; vessels run where both are near zero, thicker toward the hila."""

    box: tuple[slice, slice]  # bounding box of the full-size lungs
    z: np.ndarray            # coarse grid heights, mm
    fields: np.ndarray       # [2, len(z), cy, cx] float32, unit standard deviation
    weights_y: np.ndarray    # [box rows, cy]
    weights_x: np.ndarray    # [cx, box columns]
    hilum_y: list[np.ndarray]  # per hilum, [box rows, 1] Gaussian weight (60 mm wide)
    hilum_x: list[np.ndarray]  # per hilum, [1, box columns]


def _lung_texture(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, lungs: np.ndarray,
                  hila: list[tuple[float, float]], length: float, step: float = 4.0) -> _LungTexture:
    """Fields on a ``step`` mm grid covering the ``lungs`` [Y, X] mask's box and the scan length."""
    box = ry, rx = _bbox(lungs)
    cy = np.arange(y[ry, 0].min() - step, y[ry, 0].max() + 2 * step, step)
    cx = np.arange(x[0, rx].min() - step, x[0, rx].max() + 2 * step, step)
    cz = np.arange(-step, length + 2 * step, step)
    fields = gaussian_filter(rng.standard_normal((2, len(cz), len(cy), len(cx))), (0, 1.6, 1.6, 1.6))
    fields = (fields / fields.std(axis=(1, 2, 3), keepdims=True)).astype(np.float32)
    return _LungTexture(box=box, z=cz, fields=fields,
                        weights_y=_interp_matrix(cy, y[ry, 0]), weights_x=_interp_matrix(cx, x[0, rx]).T,
                        hilum_y=[np.exp(-((y[ry] - hy) / 60.0) ** 2) for _, hy in hila],
                        hilum_x=[np.exp(-((x[:, rx] - hx) / 60.0) ** 2) for hx, _ in hila])


def lung_mask(x: np.ndarray, y: np.ndarray, axes: tuple[float, float, float], s_lung: float) -> np.ndarray:
    """[Y, X] mask of both lung ellipses at apex taper ``s_lung`` in [0, 1] (1 = full size); ``axes`` is the
    cavity's (half-width, half-depth) and the lungs' centre y."""
    ac, bc, ly = axes
    if s_lung <= 0:
        return np.zeros((y.size, x.size), bool)
    yy = ((y - ly) / (bc * s_lung)) ** 2
    right, left = (((x - side * (0.3 + 0.18 * s_lung) * ac) / (0.58 * ac * s_lung)) ** 2 + yy < 1
                   for side in (-1, 1))
    return right | left


@dataclass(frozen=True, eq=False)
class Chest:
    """One patient's anatomy on the slice grid: every structure's maps and parameters."""

    x: np.ndarray            # [1, X] mm toward Left
    y: np.ndarray            # [Y, 1] mm toward Posterior
    z: np.ndarray            # [Z] mm above the lowest slice
    body: _Body
    marks: _Landmarks
    lung_axes: tuple[float, float, float]  # for lung_mask
    dome: np.ndarray         # [Y, X] diaphragm height, mm
    liver: np.ndarray        # [Y, X] the liver's side under the domes
    mediastinum: np.ndarray  # [Y, X]
    spine: _Spine
    ribs: _Ribs
    heart: _Heart
    vessels: _Vessels
    trachea: tuple[float, float, float]  # x, y, radius
    stomach: tuple[float, float, float, float, float, float]  # gas ellipsoid: centre x, y, z, half-axes
    sternum: np.ndarray      # [Y, X]
    sternum_z: tuple[float, float]
    table: np.ndarray        # [Y, X] HU of air and table, the background of every slice
    texture: _LungTexture


def draw_chest(rng: np.random.Generator, shape_zyx: tuple[int, int, int],
               spacing_zyx: tuple[float, float, float], body_scale: float) -> Chest:
    """Draw one patient's chest on a grid of ``shape_zyx`` voxels of ``spacing_zyx`` (dz, dy, dx) mm."""
    (nz, ny, nx), (dz, dy, dx) = shape_zyx, spacing_zyx
    z = np.arange(nz) * dz
    length = max(float(z[-1]), dz)
    x = ((np.arange(nx) - (nx - 1) / 2) * dx).astype(np.float32)[None, :]
    y = ((np.arange(ny) - (ny - 1) / 2) * dy).astype(np.float32)[:, None]
    s = body_scale
    # The order of these calls is the order of the random draws: it decides every patient.
    body = _body(rng, x, y, s)
    marks = _landmarks(rng, length)
    ac, bc = body.cavity_width, body.cavity_depth
    lung_axes = (ac, bc, body.cavity_y + 0.1 * bc)
    spine = _spine(rng, x, y, body, s)
    ribs = _ribs(rng, x, y, body, marks, s)
    heart = _heart(rng, x, y, body, marks, s)
    vessels = _vessels(rng, x, y, length, marks, spine, heart, s)
    table = _table(rng, x, y, body, (ny, nx))
    hila = [(marks.midline - 55 * s, body.cavity_y + 5), (marks.midline + 55 * s, body.cavity_y + 5)]
    texture = _lung_texture(rng, x, y, lung_mask(x, y, lung_axes, 1.0), hila, length)
    return Chest(
        x=x, y=y, z=z, body=body, marks=marks, lung_axes=lung_axes, dome=_diaphragm(x, y, body, marks),
        liver=np.broadcast_to(x < marks.midline + 15 * s, (ny, nx)), mediastinum=_mediastinum(x, y, body, marks, s),
        spine=spine, ribs=ribs, heart=heart, vessels=vessels, trachea=(marks.midline, spine.y - 44 * s, 9 * s),
        stomach=(marks.midline + 58 * s, body.cavity_y - 0.3 * bc, marks.dome_left - 28 * s, 30 * s, 20 * s, 16 * s),
        sternum=(np.abs(x - marks.midline) < 14 * s) & (np.abs(y - body.cavity_y + bc + 7.5 * s) < 5.5 * s),
        sternum_z=(heart.z - 0.3 * heart.half_height, marks.apex - 20), table=table, texture=texture)
