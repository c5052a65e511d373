"""Synthetic chest CT cohort written as LIDC-IDRI-like DICOM series: the pipeline's embedded default data.

Geometry is the DICOM patient frame (LPS). Volumes are arrays ``[Z, Y, X]``: column index x increases
toward the patient's Left, row index y toward Posterior, slice index z toward Superior. Lengths are in mm,
values in Hounsfield units (HU). The heart lies on the patient's left, so a left/right flip is detectable.

Each patient comes from one ``np.random.Generator`` (body size, field of view, slice spacing, scan length,
organ shifts). Stored values follow a GE scanner: ``HU = raw - 1024``, raw -2000 (PixelPaddingValue,
-3024 HU) outside the circular reconstruction field of view.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds as _ds  # a float as a DICOM decimal string of <= 16 chars
from scipy.ndimage import gaussian_filter

RESCALE_INTERCEPT = -1024
PADDING_RAW = -2000                              # stored value outside the reconstruction circle
PADDING_HU = PADDING_RAW + RESCALE_INTERCEPT     # -3024 HU after rescale
HU_RANGE = (-1024, 3071)                         # what a 12-bit scanner stores inside the field of view

# Tissue values, HU.
AIR, LUNG, FAT, SOFT, MUSCLE, BLOOD, LIVER = -1000.0, -860.0, -100.0, 35.0, 45.0, 40.0, 58.0
CANCELLOUS, CORTICAL, RIB, DISC, CSF, CARTILAGE = 200.0, 650.0, 480.0, 85.0, 20.0, 140.0
TABLE_SHELL, TABLE_FOAM = 250.0, -950.0


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


class _Chest:
    """One patient's anatomy: random parameters and z-invariant 2-D maps, rendered one axial slice at a time.

    Coordinates: ``x`` [1, X] mm toward Left, ``y`` [Y, 1] mm toward Posterior, both from the image centre
    (the reconstruction centre); ``z`` mm above the lowest slice. In-plane sizes scale with ``body_scale``,
    z landmarks with the scan length (the scan is planned to cover the lungs).
    """

    def __init__(self, rng: np.random.Generator, shape_zyx, spacing_zyx, body_scale: float):
        (nz, ny, nx), (dz, dy, dx) = shape_zyx, spacing_zyx
        self.z = np.arange(nz) * dz
        length = max(float(self.z[-1]), dz)
        self.x = ((np.arange(nx) - (nx - 1) / 2) * dx).astype(np.float32)[None, :]
        self.y = ((np.arange(ny) - (ny - 1) / 2) * dy).astype(np.float32)[:, None]
        x, y, s, u = self.x, self.y, body_scale, rng.uniform
        # Body wall (back flattened on the table) with a fat layer; the rib cage bounds the thoracic cavity.
        a, b, yb, fat = 155 * s * u(0.94, 1.06), 105 * s * u(0.93, 1.07), u(-25, -8), u(6, 20) * s ** 2
        self.r_body = np.where(y < yb, _superellipse(x, y - yb, a, b, 2.4), _superellipse(x, y - yb, a, b, 3.5))
        self.fat_n, ac, bc, self.yc = fat / b, a - fat - 16 * s, b - fat - 12 * s, yb - 6 * s
        self.r_cav, self.rib_n = _superellipse(x, y - self.yc, ac, bc, 2.2), 9 * s / ac
        # z landmarks (mm): deepest lung recess, diaphragm domes (right higher), carina, aortic arch, apex.
        self.z_apex, self.z_recess = length * u(0.88, 0.94), length * u(0.05, 0.12)
        lung_h = self.z_apex - self.z_recess
        self.z_dome_r = self.z_recess + lung_h * u(0.24, 0.30)
        self.z_dome_l = self.z_dome_r - u(10, 25)
        self.apex_taper, self.z_carina = lung_h * u(0.36, 0.44), self.z_recess + lung_h * u(0.64, 0.7)
        self.z_arch, xm = self.z_carina + u(18, 28), u(-3, 5)     # xm: mediastinal midline
        # Lungs: one ellipse per side shrinking toward a medial apex (see _lungs); the diaphragm (two
        # paraboloid domes, lowest posteriorly and laterally) bounds them below.
        lx, self.lung_axes = 0.48 * ac, (ac, bc, self.yc + 0.1 * bc)
        q = lambda cx: ((x - cx) / (0.62 * ac)) ** 2 + ((y - self.yc + 0.3 * bc) / (0.95 * bc)) ** 2  # noqa: E731
        dome = np.where(x < xm, self.z_dome_r - (self.z_dome_r - self.z_recess) * q(-lx),
                        self.z_dome_l - (self.z_dome_l - self.z_recess) * q(lx))
        self.dome = np.maximum(dome, self.z_recess).astype(np.float32)
        self.liver = np.broadcast_to(x < xm + 15 * s, (ny, nx))
        self.med = _superellipse(x - xm, y - self.yc + 0.15 * bc, 25 * s, 0.9 * bc, 1.6) < 1
        # Spine: vertebral body (cortex + cancellous bone, or a disc), canal, arch, spinous and transverse
        # processes, inside a block of paraspinal muscle.
        xs, rv, yv = u(-2, 2), 15 * s, yb + b - fat - 50 * s
        yk = yv + rv + 9 * s                                        # spinal canal centre
        r_vb, r_k = np.hypot(x - xs, (y - yv) * 1.15), np.hypot(x - xs, y - yk)
        self.block = _superellipse(x - xs, y - yv - 20 * s, 28 * s, 42 * s) < 1
        arch = ((r_k >= 8 * s) & (r_k < 13.5 * s) & (y > yk - 4 * s)) | (
            (np.abs(x - xs) < 3.5 * s) & (y > yk + 8 * s) & (y < yk + 34 * s))
        transverse = (np.abs(y - yk + 2 * s) < 4 * s) & (np.abs(x - xs) < 34 * s) & (r_k >= 8 * s)
        self.arch, self.canal = [(arch, CORTICAL - 150)], [(r_k < 8 * s, CSF)]
        self.vertebra = [(transverse, CORTICAL - 200), (r_vb < rv, CORTICAL), (r_vb < rv - 2.2 * s, CANCELLOUS)]
        self.disc, self.spine_box = [(r_vb < rv, DISC)], _bbox(self.block | transverse | (r_k < 14 * s))
        self.v_pitch, self.v_phase, self.disc_h = 27 * s * u(0.95, 1.05), u(0, 27), 6 * s
        # Ribs: a band just outside the cavity; each rib descends anteriorly (z offset grows with angle).
        ang = np.arctan2(np.abs(x), y - self.yc) / np.pi         # 0 = posterior midline, 1 = anterior
        self.rib_dz, self.cartilage = (u(100, 130) * s * ang ** 1.3).astype(np.float32), ang > 0.8
        self.rib_pitch, self.rib_h = (lung_h + 50) / 11.0, 9 * s      # 12 ribs, each 9 mm high
        self.rib_phase = u(0, self.rib_pitch)
        # Heart: rotated ellipsoid on the LEFT, long axis toward left-anterior, in pericardial fat.
        xh, yh, th = xm + 28 * s + u(-6, 6), self.yc - 0.12 * bc + u(-6, 6), np.deg2rad(u(-45, -25))
        ah, bh, self.ch = 56 * s * u(0.9, 1.1), 42 * s * u(0.9, 1.1), 46 * s * u(0.9, 1.1)
        xr, yr = (x - xh) * np.cos(th) - (y - yh) * np.sin(th), (x - xh) * np.sin(th) + (y - yh) * np.cos(th)
        self.r_heart = np.sqrt((xr / ah) ** 2 + (yr / bh) ** 2).astype(np.float32)
        self.z_heart, self.peri_n = self.z_dome_l - 15 + self.ch, 6 * s / bh
        self.heart_box = _bbox(self.r_heart < 1 + self.peri_n)
        # Great vessels, oesophagus and airway: circles (mm) switched on over z ranges; the arch joins the
        # ascending to the descending aorta.
        self.ra = ra = 12 * s * u(0.9, 1.15)
        desc, asc = (xm + 24 * s, yv - 24 * s), (xm - 4 * s, yh - 0.9 * bh)
        seg = np.subtract(desc, asc)
        t = np.clip(((x - asc[0]) * seg[0] + (y - asc[1]) * seg[1]) / (seg @ seg), 0, 1)
        self.d_arch = np.hypot(x - asc[0] - t * seg[0], y - asc[1] - t * seg[1]).astype(np.float32)
        top, z_ha = 2 * length, self.z_heart + 0.3 * self.ch
        self.vessels = [  # (x, y, radius, z_low, z_high, HU)
            (*desc, ra, -1.0, self.z_arch, BLOOD), (*asc, 1.2 * ra, z_ha, self.z_arch, BLOOD),
            (xm - 26 * s, asc[1] + 4 * s, 9 * s, self.z_heart, self.z_arch + 50, BLOOD),     # vena cava
            (xs + 4 * s, yv - 24 * s, 7 * s, -1.0, top, SOFT),                                 # oesophagus
            (xm - 12 * s, asc[1] + 8 * s, 6 * s, self.z_arch, top, BLOOD),
            (xm + 4 * s, asc[1] + 14 * s, 5 * s, self.z_arch, top, BLOOD),
            (xm + 16 * s, asc[1] + 24 * s, 6 * s, self.z_arch, top, BLOOD)]
        self.d_vessel = [np.hypot(x - vx, y - vy).astype(np.float32) for vx, vy, *_ in self.vessels]
        self.trachea = (xm, yv - 44 * s, 9 * s)
        self.gas = (xm + 58 * s, self.yc - 0.3 * bc, self.z_dome_l - 28 * s, 30 * s, 20 * s, 16 * s)  # stomach
        self.sternum = (np.abs(x - xm) < 14 * s) & (np.abs(y - self.yc + bc + 7.5 * s) < 5.5 * s)
        self.z_sternum = (self.z_heart - 0.3 * self.ch, self.z_apex - 20)
        # Table below the back (z-invariant): a cradle of two carbon shells around foam.
        ytop = yb + b + u(0, 5) - 30 * (x / 400.0) ** 2
        self.base = np.full((ny, nx), AIR, np.float32)
        for lo, hi, hu in ((0, 2.5, TABLE_SHELL), (2.5, 14, TABLE_FOAM), (14, 16.5, TABLE_SHELL)):
            self.base[(np.abs(x) < 230) & (y >= ytop + lo) & (y < ytop + hi)] = hu
        self.fov_outside = np.broadcast_to(np.hypot(x, y) > min(nx * dx, ny * dy) / 2, (ny, nx))
        self.hila = [(xm - 55 * s, self.yc + 5), (xm + 55 * s, self.yc + 5)]
        self._lung_texture(rng, length)
        self.noise_sd, self.rng = u(10, 20), rng
        self.noise_bank = rng.standard_normal(4 * ny * nx, dtype=np.float32)

    def _lung_texture(self, rng: np.random.Generator, length: float, step: float = 4.0) -> None:
        """Two smooth random fields on a coarse grid (``step`` mm); vessels run where both are near zero."""
        self.lung_box = ry, rx = _bbox(self._lungs(1.0))
        cy = np.arange(self.y[ry, 0].min() - step, self.y[ry, 0].max() + 2 * step, step)
        cx = np.arange(self.x[0, rx].min() - step, self.x[0, rx].max() + 2 * step, step)
        self.cz = np.arange(-step, length + 2 * step, step)
        fields = gaussian_filter(rng.standard_normal((2, len(self.cz), len(cy), len(cx))), (0, 1.6, 1.6, 1.6))
        self.fields = (fields / fields.std(axis=(1, 2, 3), keepdims=True)).astype(np.float32)
        self.wy, self.wx_t = _interp_matrix(cy, self.y[ry, 0]), _interp_matrix(cx, self.x[0, rx]).T
        # Vessel calibre grows toward each hilum (Gaussian weights, 60 mm wide, separable in y and x).
        self.gy = [np.exp(-((self.y[ry] - hy) / 60.0) ** 2) for _, hy in self.hila]
        self.gx = [np.exp(-((self.x[:, rx] - hx) / 60.0) ** 2) for hx, _ in self.hila]

    def _lungs(self, s_lung: float) -> np.ndarray:
        """[Y, X] mask of both lung ellipses at apex taper ``s_lung`` in [0, 1] (1 = full size)."""
        ac, bc, ly = self.lung_axes
        if s_lung <= 0:
            return np.zeros(self.fov_outside.shape, bool)
        yy = ((self.y - ly) / (bc * s_lung)) ** 2
        right, left = (((self.x - side * (0.3 + 0.18 * s_lung) * ac) / (0.58 * ac * s_lung)) ** 2 + yy < 1
                       for side in (-1, 1))
        return right | left

    def _lung_slice(self, z: float) -> np.ndarray:
        """Lung HU inside ``lung_box`` at height z: parenchyma, gravity gradient, branching vessels."""
        t = np.clip(z / (self.cz[1] - self.cz[0]) + 1, 0, len(self.cz) - 1.000001)
        i, w = int(t), np.float32(t - int(t))
        f1, f2 = self.wy @ ((1 - w) * self.fields[:, i] + w * self.fields[:, i + 1]) @ self.wx_t
        hilum = np.exp(-((z - self.z_carina + 30) / 70.0) ** 2) * (self.gy[0] * self.gx[0] + self.gy[1] * self.gx[1])
        vessel = np.exp(-(f1 * f1 + f2 * f2) / (2 * (0.12 + 0.22 * hilum) ** 2))     # tubes where f1 = f2 = 0
        gravity = 0.5 * (self.y[self.lung_box[0]] - self.yc)             # dependent lung is denser
        return LUNG + gravity + 12 * f1 + (BLOOD - LUNG) * (0.55 + 0.45 * hilum) * vessel

    def render(self, k: int) -> np.ndarray:
        """HU slice k, float32 [Y, X], before noise and field-of-view padding (painter's order)."""
        z, img = float(self.z[k]), self.base.copy()
        s_lung = float(np.clip((self.z_apex - z) / self.apex_taper, 0, 1)) ** 0.6
        s_cav = 0.55 + 0.45 * s_lung if z > self.z_recess else 1.0
        s_body = 1 - 0.07 * np.clip((z - self.z_apex + 30) / 60, 0, 1)      # neck narrower than chest
        np.copyto(img, FAT, where=self.r_body < s_body)
        np.copyto(img, MUSCLE, where=self.r_body < s_body - self.fat_n)
        cavity = self.r_cav < s_cav
        if self.z_recess - 40 < z < self.z_apex + 15:
            band = (self.r_cav < s_cav + self.rib_n) & ~cavity
            height = z + self.rib_dz - self.rib_phase
            rib = band & (height - np.floor(height / self.rib_pitch) * self.rib_pitch < self.rib_h)
            np.copyto(img, RIB, where=rib & ~self.cartilage)
            np.copyto(img, CARTILAGE, where=rib & self.cartilage)
        np.copyto(img, SOFT, where=cavity)
        lung, (ry, rx) = cavity & self._lungs(s_lung) & (z > self.dome), self.lung_box
        if lung[ry, rx].any():
            np.copyto(img[ry, rx], self._lung_slice(z), where=lung[ry, rx])
        np.copyto(img, FAT, where=self.med & cavity & (z > self.dome))
        if z < self.z_dome_r:                                            # upper abdomen under the domes
            below = cavity & (z <= self.dome)
            np.copyto(img, SOFT, where=below)
            np.copyto(img, LIVER, where=below & self.liver)
            gx, gy, gz, ga, gb, gc = self.gas
            if abs(z - gz) < gc:
                inside = ((self.x - gx) / ga) ** 2 + ((self.y - gy) / gb) ** 2 < 1 - ((z - gz) / gc) ** 2
                np.copyto(img, AIR, where=below & inside)
        np.copyto(img, MUSCLE, where=self.block)
        self._paint_heart_and_vessels(img, z)
        (sy, sx), level = self.spine_box, (z - self.v_phase) % self.v_pitch
        arch = [] if 0.55 < level / self.v_pitch < 0.85 else self.arch       # gap between spinous processes
        for mask, hu in self.canal + arch + (self.disc if level < self.disc_h else self.vertebra):
            np.copyto(img[sy, sx], hu, where=mask[sy, sx])
        if self.z_sternum[0] < z < self.z_sternum[1]:
            np.copyto(img, CANCELLOUS + 100, where=self.sternum)
        return img

    def _paint_heart_and_vessels(self, img: np.ndarray, z: float) -> None:
        """Paint heart, pericardial fat, great vessels, oesophagus, trachea and bronchi into ``img`` [Y, X]."""
        dzh = (z - self.z_heart) / self.ch
        if abs(dzh) < 1:
            (hy, hx), s_h = self.heart_box, np.sqrt(1 - dzh * dzh)
            np.copyto(img[hy, hx], FAT - 10, where=self.r_heart[hy, hx] < s_h + self.peri_n)
            np.copyto(img[hy, hx], BLOOD, where=self.r_heart[hy, hx] < s_h)
        for (_, _, radius, lo, hi, hu), d in zip(self.vessels, self.d_vessel):
            if lo < z < hi:
                np.copyto(img, hu, where=d < radius)
        if abs(z - self.z_arch) < self.ra:
            np.copyto(img, BLOOD, where=self.d_arch < np.sqrt(self.ra ** 2 - (z - self.z_arch) ** 2))
        tx, ty, tr = self.trachea
        drop = self.z_carina - z                  # below the carina the main bronchi diverge, the left flatter
        airways = [(tx, tr)] if drop < 0 else [(tx - 0.9 * drop, 0.72 * tr), (tx + 1.4 * drop, 0.68 * tr)]
        for cx, radius in airways if drop < 35 else []:
            d = np.hypot(self.x - cx, self.y - ty)
            np.copyto(img, SOFT, where=d < radius + 2)
            np.copyto(img, AIR, where=d < radius)

    def noise(self) -> np.ndarray:
        """Gaussian scanner noise [Y, X], HU: a random window of a white-noise bank (white itself)."""
        n, start = self.fov_outside.size, int(self.rng.integers(0, self.noise_bank.size - self.fov_outside.size))
        return self.noise_bank[start:start + n].reshape(self.fov_outside.shape) * np.float32(self.noise_sd)


def phantom_volume(rng: np.random.Generator, shape_zyx: tuple[int, int, int],
                   spacing_zyx: tuple[float, float, float], *, body_scale: float = 1.0) -> np.ndarray:
    """int16 HU array [Z, Y, X] in DICOM patient frame (LPS): column index x increases toward patient Left,
    row index y toward Posterior, z index toward Superior (slice k at z = z0 + k*dz).

    ``spacing_zyx`` is (dz, dy, dx) in mm; the image centre is the reconstruction centre. Voxels outside the
    circle of diameter ``min(X*dx, Y*dy)`` hold ``PADDING_HU`` (-3024); inside, values lie in ``HU_RANGE``.
    ``body_scale`` (~0.85-1.15) scales the patient's in-plane size; the lungs span ~80% of the z extent.
    """
    if min(shape_zyx) < 1 or min(spacing_zyx) <= 0 or body_scale <= 0:
        raise ValueError(f"need a positive shape, spacing and body_scale, got {shape_zyx}, {spacing_zyx}, {body_scale}")
    chest, out = _Chest(rng, shape_zyx, spacing_zyx, body_scale), np.empty(shape_zyx, np.int16)
    for k in range(shape_zyx[0]):
        hu = chest.render(k) + chest.noise()
        np.clip(np.rint(hu, out=hu), *HU_RANGE, out=hu)
        hu[chest.fov_outside] = PADDING_HU
        out[k] = hu
    return out


@dataclass(frozen=True)
class _Acquisition:
    """Scanner settings drawn per patient: shape [Z, Y, X], spacing (dz, dy, dx) mm, first slice z0 mm."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    z0: float
    thickness: float
    body_scale: float
    descending: bool
    uid_key: int


def _draw_acquisition(rng: np.random.Generator, matrix: int) -> _Acquisition:
    """Body size, field of view (320-460 mm, larger for larger patients), slice spacing and scan length;
    one patient in three has SliceThickness != slice spacing (overlapping reconstruction), as in LIDC."""
    body_scale = rng.uniform(0.85, 1.15)
    fov = float(np.clip(380 * body_scale + rng.normal(0, 20), 320, 460))
    dz = round(rng.uniform(1.25, 2.5), 3)
    n = int(round(rng.uniform(260, 360) / dz)) + 1
    thickness = dz if rng.random() < 2 / 3 else round(1.6 * dz, 3)
    return _Acquisition((n, matrix, matrix), (dz, round(fov / matrix, 6), round(fov / matrix, 6)),
                        round(rng.uniform(-420, -80), 2), thickness, body_scale, bool(rng.random() < 0.5),
                        int(rng.integers(2 ** 62)))


def _uid(patient_id: str, key: int, *role) -> str:
    """Deterministic UID under pydicom's root, hashed from the patient, its random key and the role."""
    return generate_uid(entropy_srcs=[patient_id, str(key), *map(str, role)])


def _dataset(patient_id: str, study_uid: str, series_uid: str, series_number: int, modality: str,
             description: str) -> Dataset:
    """Header shared by every image of one series (instance-level tags are filled in per image)."""
    ds = Dataset()
    ds.file_meta, ds.preamble = FileMetaDataset(), b"\0" * 128
    ds.file_meta.TransferSyntaxUID, ds.SpecificCharacterSet = ExplicitVRLittleEndian, "ISO_IR 100"
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient_id, patient_id.replace("-", "^"), "", ""
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyDate, ds.SeriesDate, ds.StudyTime, ds.SeriesTime = "20000101", "20000101", "000000", "000000"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
    ds.SeriesNumber, ds.Modality, ds.SeriesDescription = series_number, modality, description
    ds.Manufacturer, ds.ManufacturerModelName = "ctdiff phantom", "synthetic"
    ds.BodyPartExamined, ds.KVP, ds.SamplesPerPixel, ds.PhotometricInterpretation = "CHEST", "120", 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    return ds


def _write_ct_series(folder: Path, ds: Dataset, volume: np.ndarray, acq: _Acquisition, slices: list[int],
                     patient_id: str, image_type: list[str]) -> None:
    """Write ``volume[k]`` for k in ``slices`` as CT images; file names follow instance numbers."""
    folder.mkdir(parents=True, exist_ok=True)
    dz, dy, dx = acq.spacing
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.FrameOfReferenceUID = _uid(patient_id, acq.uid_key, "frame")
    ds.ImageType, ds.PatientPosition, ds.ImageOrientationPatient = image_type, "HFS", ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing, ds.SliceThickness = [_ds(dy), _ds(dx)], _ds(acq.thickness)
    ds.Rows, ds.Columns, ds.PixelRepresentation, ds.PixelPaddingValue = *volume.shape[1:], 1, PADDING_RAW
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = str(RESCALE_INTERCEPT), "1", "HU"
    ds.WindowCenter, ds.WindowWidth, ds.AcquisitionNumber = "-600", "1500", 1
    x0, y0 = -(volume.shape[2] - 1) / 2 * dx, -(volume.shape[1] - 1) / 2 * dy
    for number, k in enumerate(slices[::-1] if acq.descending else slices, start=1):
        z = round(acq.z0 + k * dz, 4)
        ds.InstanceNumber, uid = number, _uid(patient_id, acq.uid_key, ds.SeriesInstanceUID, k)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid
        ds.ImagePositionPatient, ds.SliceLocation = [_ds(x0), _ds(y0), _ds(z)], _ds(z)
        ds.PixelData = (volume[k] - RESCALE_INTERCEPT).astype("<i2").tobytes()   # padding -> PADDING_RAW
        pydicom.dcmwrite(folder / f"{number:04d}.dcm", ds, enforce_file_format=True)


def _write_radiograph(folder: Path, ds: Dataset, volume: np.ndarray, acq: _Acquisition, patient_id: str) -> None:
    """One AP chest radiograph (Modality CR, no ImagePositionPatient): attenuation summed along y; rows run
    head to feet, columns toward patient Left; 12-bit, brighter = more attenuation."""
    folder.mkdir(parents=True, exist_ok=True)
    excess = np.maximum(volume, -1000).sum(axis=1, dtype=np.int64) + 1000 * volume.shape[1]   # [Z, X], HU
    path = excess[::-1] * (0.02 / 1000 * acq.spacing[1])            # line integral of mu (water 0.02 / mm)
    pixels = np.clip(path / max(float(path.max()), 1e-6) * 4095, 0, 4095).astype("<u2")
    uid = _uid(patient_id, acq.uid_key, ds.SeriesInstanceUID, 0)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid
    ds.ImageType, ds.ViewPosition, ds.PatientOrientation = ["ORIGINAL", "PRIMARY"], "AP", ["L", "F"]
    ds.InstanceNumber, ds.ImagerPixelSpacing = 1, [_ds(acq.spacing[0]), _ds(acq.spacing[2])]
    ds.PixelSpacing, (ds.Rows, ds.Columns) = ds.ImagerPixelSpacing, pixels.shape
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.PixelData = 12, 11, 0, pixels.tobytes()
    pydicom.dcmwrite(folder / "0001.dcm", ds, enforce_file_format=True)


def _patient_number(patient_id: str) -> int:
    """Trailing number of an ID ('PHANTOM-0005' -> 5), else a stable hash; decides the distractor series."""
    match = re.search(r"(\d+)$", patient_id)
    return int(match.group(1)) if match else zlib.crc32(patient_id.encode())


def write_patient(root: Path, patient_id: str, rng: np.random.Generator, *, matrix: int = 512,
                  n_slices: int | None = None) -> None:
    """Write one patient as ``root/<PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/<NNNN>.dcm``.

    The main axial CT series (matrix x matrix pixels, ~105-290 slices) is always the series with most images.
    Distractors, as in LIDC-IDRI: patients numbered 1, 4, 7, ... also get a 3-image CT localizer series
    (ImageType LOCALIZER) in the same study; patients numbered 1, 5, 9, ... get a one-image CR radiograph
    in a second study. Slices are written in one z order, ascending or descending per patient.
    ``n_slices`` fixes the number of axial slices (e.g. for a benchmark) instead of drawing it; every other
    setting is drawn as usual.
    """
    if matrix < 16:
        raise ValueError(f"matrix must be >= 16 pixels, got {matrix}")
    if n_slices is not None and n_slices < 4:
        raise ValueError(f"n_slices must be >= 4 or None, got {n_slices}")
    acq = _draw_acquisition(rng, matrix)
    if n_slices is not None:
        acq = replace(acq, shape=(int(n_slices), matrix, matrix))
    volume = phantom_volume(rng, acq.shape, acq.spacing, body_scale=acq.body_scale)
    number, key, folder = _patient_number(patient_id), acq.uid_key, Path(root) / patient_id
    study, main = _uid(patient_id, key, "study"), _uid(patient_id, key, "series", "ct")
    ds = _dataset(patient_id, study, main, 2, "CT", "CHEST CT (phantom)")
    _write_ct_series(folder / study / main, ds, volume, acq, list(range(acq.shape[0])), patient_id,
                     ["ORIGINAL", "PRIMARY", "AXIAL"])
    if (number - 1) % 3 == 0:
        scout, n = _uid(patient_id, key, "series", "localizer"), acq.shape[0]
        _write_ct_series(folder / study / scout, _dataset(patient_id, study, scout, 1, "CT", "LOCALIZER"), volume,
                         acq, [n // 4, n // 2, 3 * n // 4], patient_id, ["ORIGINAL", "PRIMARY", "LOCALIZER"])
    if (number - 1) % 4 == 0:
        cr_study, cr_series = _uid(patient_id, key, "study", "cr"), _uid(patient_id, key, "series", "cr")
        ds = _dataset(patient_id, cr_study, cr_series, 1, "CR", "CHEST AP")
        _write_radiograph(folder / cr_study / cr_series, ds, volume, acq, patient_id)


def write_cohort(root: Path, n_patients: int, seed: int, *, matrix: int = 512) -> list[str]:
    """Write n_patients under root, return the sorted list of patient IDs (e.g. 'PHANTOM-0001').

    Patient i (0-based, ID number i + 1) is drawn from ``np.random.default_rng([seed, i])``, so it is the
    same whatever ``n_patients`` is.
    """
    if n_patients < 1:
        raise ValueError(f"n_patients must be >= 1, got {n_patients}")
    ids = [f"PHANTOM-{i + 1:04d}" for i in range(n_patients)]
    for i, patient_id in enumerate(ids):
        write_patient(Path(root), patient_id, np.random.default_rng([seed, i]), matrix=matrix)
    return sorted(ids)
