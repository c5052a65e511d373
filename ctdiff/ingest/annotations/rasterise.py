"""Place LIDC outlines on the slices of a converted series and fill them.

Slices: an roi names its slice by ``imageSOP_UID``; when that UID is not one of the series' slices (or is
missing), its ``imageZposition`` is matched to the slice whose ``ImagePositionPatient`` z lies within
:data:`Z_TOLERANCE` slice steps of it. A quarter step cannot match two slices, and is far above the
rounding of the positions LIDC writes (6 decimals), so only an outline between slices or beyond the stack
is left unmatched (and reported).

Filling: an ``edgeMap`` traces the pixels of an outline, consecutive points 8-neighbours. LIDC's readers
were asked to draw the outline just outside the nodule, so that it does not cover nodule pixels
(docs/facts.md says how sure that is); an
inclusion outline therefore marks the pixels whose centres lie strictly inside the polygon through its
points, without the traced pixels themselves. An exclusion outline (``inclusion FALSE``, a hole) removes
the same interior and leaves its traced pixels to the nodule (they lie outside the hole). A reader's mark
whose outlines enclose no pixel at all (an outline of a few points around a tiny nodule) keeps its traced
pixels instead, so that no mark vanishes; the QC rows say so. Points outside the image are clipped to it
and reported.

Voxels are kept as flat indices into the sorted DICOM stack ``(column, row, slice)``, the grid the
outlines are drawn on; :meth:`SliceGrid.to_volume` maps them to the converted NIfTI's voxels through the
world positions (so every orientation the converter writes is handled by its affine alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctdiff.ingest.annotations.lidc_xml import Roi

#: An roi without a matching SOP UID is placed on the slice within this many slice steps of its z.
Z_TOLERANCE = 0.25

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class SliceGrid:
    """The sorted slices of one converted series and the NIfTI they were written to.

    ``index_to_lps`` ``[3, 4]`` maps ``(column, row, slice, 1)`` to LPS mm; ``affine`` ``[4, 4]`` and
    ``shape`` are the converted NIfTI's (RAS mm); ``series_uid`` the series' (annotation files naming
    another series are refused).
    """

    sop_uids: tuple[str, ...]
    z: np.ndarray                    # [K] ImagePositionPatient z of each sorted slice, mm
    columns: int
    rows: int
    index_to_lps: np.ndarray
    affine: np.ndarray
    shape: tuple[int, int, int]
    series_uid: str = ""

    @property
    def n_slices(self) -> int:
        return len(self.sop_uids)

    @property
    def pixel_mm(self) -> tuple[float, float]:
        """Spacing between columns and between rows, mm."""
        return (float(np.linalg.norm(self.index_to_lps[:, 0])), float(np.linalg.norm(self.index_to_lps[:, 1])))

    @property
    def voxel_mm3(self) -> float:
        return float(abs(np.linalg.det(self.index_to_lps[:, :3])))

    def slice_of(self, roi: Roi) -> tuple[int | None, str]:
        """``(slice index, 'sop' | 'z')`` of an roi, or ``(None, reason)``."""
        index = {uid: k for k, uid in enumerate(self.sop_uids)}
        if roi.sop_uid in index:
            return index[roi.sop_uid], "sop"
        if roi.z is None:
            return None, f"SOP UID {roi.sop_uid or '(none)'} is no slice of the series and there is no z"
        step = abs(float(self.z[-1] - self.z[0])) / max(self.n_slices - 1, 1) or 1.0
        k = int(np.argmin(np.abs(self.z - roi.z)))
        if abs(self.z[k] - roi.z) <= Z_TOLERANCE * step:
            return k, "z"
        return None, (f"SOP UID {roi.sop_uid or '(none)'} is no slice of the series and z {roi.z:g} mm is "
                      f"{abs(self.z[k] - roi.z):.2f} mm from the nearest slice (tolerance {Z_TOLERANCE * step:.2f})")

    def lps(self, crk: np.ndarray) -> np.ndarray:
        """``[n, 3]`` LPS mm of ``[n, 3]`` (column, row, slice) indices (float allowed)."""
        crk = np.asarray(crk, dtype=np.float64).reshape(-1, 3)
        return crk @ self.index_to_lps[:, :3].T + self.index_to_lps[:, 3]

    def ijk(self, crk: np.ndarray) -> np.ndarray:
        """``[n, 3]`` float voxel indices in the converted NIfTI of (column, row, slice) indices."""
        ras = self.lps(crk) @ _LPS_TO_RAS.T
        inverse = np.linalg.inv(self.affine)
        return ras @ inverse[:3, :3].T + inverse[:3, 3]

    def unravel(self, flat: np.ndarray) -> np.ndarray:
        """``[n, 3]`` (column, row, slice) of flat stack indices."""
        k, rest = np.divmod(np.asarray(flat, dtype=np.int64), self.rows * self.columns)
        row, col = np.divmod(rest, self.columns)
        return np.column_stack([col, row, k])

    def to_volume(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The converted NIfTI's integer voxel indices ``(i, j, k)`` of flat stack indices.

        The NIfTI's axes are the stack's, permuted and flipped (:func:`ctdiff.ingest.convert._to_las`), so
        rounding recovers whole indices exactly; a mismatch beyond 0.01 voxel is a ValueError.
        """
        ijk = self.ijk(self.unravel(flat))
        whole = np.rint(ijk)
        if ijk.size and np.abs(ijk - whole).max() > 0.01:
            raise ValueError("the stack's pixels do not fall on the converted volume's voxels")
        whole = whole.astype(np.int64)
        if whole.size and (whole.min(axis=0).min() < 0 or np.any(whole.max(axis=0) >= np.array(self.shape))):
            raise ValueError("annotation voxels fall outside the converted volume")
        return whole[:, 0], whole[:, 1], whole[:, 2]


def traced_pixels(points: np.ndarray) -> np.ndarray:
    """``[m, 2]`` integer (x, y) pixels of the closed chain through ``points`` (segments drawn by rounding
    points sampled one pixel apart), unique."""
    pts = np.rint(np.asarray(points, dtype=np.float64)).astype(np.int64)
    if len(pts) == 1:
        return pts
    nxt = np.roll(pts, -1, axis=0)
    out = [pts]
    for a, b in zip(pts, nxt):
        n = int(np.abs(b - a).max())
        if n > 1:
            t = np.arange(1, n)[:, None] / n
            out.append(np.rint(a + t * (b - a)).astype(np.int64))
    return np.unique(np.concatenate(out), axis=0)


def interior(points: np.ndarray, columns: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` integer pixels of the image (``columns`` x ``rows``) whose centres lie strictly inside the
    polygon through ``points`` (even-odd rule), without the traced pixels; both arrays 1-D."""
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) < 3:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    lo = np.maximum(np.floor(pts.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(pts.max(axis=0)).astype(int), [columns - 1, rows - 1])
    if np.any(hi < lo):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    xs = np.arange(lo[0], hi[0] + 1, dtype=np.float64)
    ys = np.arange(lo[1], hi[1] + 1, dtype=np.float64)
    a, b = pts, np.roll(pts, -1, axis=0)
    inside = np.zeros((ys.size, xs.size), bool)
    for (x0, y0), (x1, y1) in zip(a, b):
        if y0 == y1:
            continue
        crosses = (y0 > ys) != (y1 > ys)                                   # [Y] rows this edge crosses
        if not crosses.any():
            continue
        x_at = x0 + (ys[crosses] - y0) * (x1 - x0) / (y1 - y0)             # where it crosses each row
        inside[crosses] ^= xs[None, :] < x_at[:, None]
    yy, xx = np.nonzero(inside)
    x, y = xx + lo[0], yy + lo[1]
    traced = traced_pixels(pts)
    on_edge = np.isin(x * (rows + 2) + y, traced[:, 0] * (rows + 2) + traced[:, 1])
    return x[~on_edge], y[~on_edge]


def roi_outside(roi: Roi, columns: int, rows: int) -> int:
    """How many of an roi's points lie outside the image."""
    x, y = roi.points[:, 0], roi.points[:, 1]
    return int(np.count_nonzero((x < 0) | (y < 0) | (x > columns - 1) | (y > rows - 1)))


def flat_pixels(grid: SliceGrid, k: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Flat stack indices of pixels (x, y) on slice ``k``, clipped to the image (outside ones dropped)."""
    x, y = np.asarray(x, np.int64), np.asarray(y, np.int64)
    keep = (x >= 0) & (y >= 0) & (x < grid.columns) & (y < grid.rows)
    return (k * grid.rows + y[keep]) * grid.columns + x[keep]
