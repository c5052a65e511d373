"""From readers' marks to nodules: fill each mark, group the marks of one nodule, vote a consensus.

Grouping (one nodule = at most one mark per reader): two outlined marks of different readers are linked
when their filled voxels overlap, with weight the overlap's intersection over union (IoU), or, failing
that, when their voxels come within one voxel spacing of each other (small nodules on coarse grids, where
readers' few pixels need not coincide). Links are taken overlaps first in decreasing IoU, then by
distance, and join two groups only when the groups share no reader (a greedy, Kruskal-like single-linkage
with a cannot-link constraint). A reader who marked two nodules that touch another
reader's single mark thus keeps them apart, and the other mark joins the one it overlaps most. pylidc
(``Scan.cluster_annotations``) links annotations whose outline points lie within one slice thickness and
shrinks that distance until no group has more than four annotations; here overlap comes first, because
the marks are filled anyway and the consensus needs them to overlap, and the one-mark-per-reader rule
replaces the shrinking.

Points (nodules < 3 mm, which have no outline, and non-nodules' loci) are grouped the same way by
distance: two points of different readers within :data:`POINT_LINK_MM` of each other are linked, nearest
first. They enter the nodule table (``kind`` ``small`` or ``non-nodule``) but not the mask: they carry a
position, not a shape, and a drawn sphere would invent one.

Consensus: a voxel belongs to a nodule when at least ``consensus`` (default 0.5) of the readers who
marked that nodule included it (``count >= consensus * n_readers``); with one reader it is that reader's
mark.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from ctdiff.ingest.annotations.lidc_xml import CHARACTERISTICS, Mark, Reading
from ctdiff.ingest.annotations.rasterise import SliceGrid, flat_pixels, interior, roi_outside, traced_pixels

#: Points of different readers closer than this (mm) are one small nodule (or one non-nodule): the size
#: below which LIDC asked for a point instead of an outline.
POINT_LINK_MM = 3.0

#: Columns of the nodule table, one row per nodule (``label`` is its value in the mask; 0 for points).
TABLE_COLUMNS = ["label", "kind", "n_readers", "readers", "reader_ids", "centroid_x_mm", "centroid_y_mm",
                 "centroid_z_mm", "centroid_i", "centroid_j", "centroid_k", "voxels", "volume_mm3",
                 "diameter_mm", "max_axial_diameter_mm", *CHARACTERISTICS]

#: Columns of the annotation QC table: one row per file read or refused, and per roi, nodule or point
#: skipped, clipped or changed (the reason names the reader and the nodule).
QC_COLUMNS = ["file", "decision", "reason"]


@dataclass
class FilledMark:
    """A reader's outlined mark, filled: flat stack indices of its voxels, sorted and unique."""

    mark: Mark
    voxels: np.ndarray


@dataclass
class PointMark:
    """A reader's point (small nodule or non-nodule): position in the stack ``(column, row, slice)``."""

    reader: int
    nodule_id: str
    crk: np.ndarray
    characteristics: dict[str, int]


def fill(mark: Mark, grid: SliceGrid, problems: list[str]) -> np.ndarray:
    """Flat stack indices of a mark's voxels (inclusions minus exclusions, see the module
    :mod:`~ctdiff.ingest.annotations.rasterise`); unmatched rois and clipped points go to ``problems``."""
    where = f"reader {mark.reader} nodule {mark.nodule_id}"
    included, excluded, traced = [], [], []
    for roi in mark.rois:
        k, how = grid.slice_of(roi)
        if k is None:
            problems.append(f"{where}: roi skipped: {how}")
            continue
        outside = roi_outside(roi, grid.columns, grid.rows)
        if outside:
            problems.append(f"{where}: contour outside the image: {outside} of {len(roi.points)} point(s) "
                            f"clipped on slice {k}")
        x, y = interior(roi.points, grid.columns, grid.rows)
        (included if roi.inclusion else excluded).append(flat_pixels(grid, k, x, y))
        if roi.inclusion:
            t = traced_pixels(roi.points)
            traced.append(flat_pixels(grid, k, t[:, 0], t[:, 1]))
    voxels = np.unique(np.concatenate(included)) if included else np.empty(0, np.int64)
    if excluded:
        voxels = np.setdiff1d(voxels, np.concatenate(excluded), assume_unique=False)
    if voxels.size == 0 and traced:
        problems.append(f"{where}: outlines enclose no pixel; its traced pixels are used")
        voxels = np.unique(np.concatenate(traced))
    return voxels


def _group(n: int, readers: list[int], links: list[tuple[float, int, int]]) -> list[list[int]]:
    """Union of ``n`` items along ``links`` ``(weight, a, b)`` in decreasing weight, never two items of
    one reader in a group. Returns the groups (lists of item indices, each sorted), ordered by first item."""
    parent = list(range(n))
    members = {i: {readers[i]} for i in range(n)}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for _, a, b in sorted(links, key=lambda t: (-t[0], t[1], t[2])):
        ra, rb = find(a), find(b)
        if ra != rb and not (members[ra] & members[rb]):
            parent[rb] = ra
            members[ra] |= members.pop(rb)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def touch_mm(grid: SliceGrid) -> float:
    """How close (mm, between voxel centres) two marks must come to be linked without overlapping: the
    largest voxel spacing, so that marks on neighbouring slices or pixels link (pylidc's default link
    distance is the slice thickness)."""
    return max(*grid.pixel_mm, abs(float(np.linalg.norm(grid.index_to_lps[:, 2]))))


def group_filled(marks: list[FilledMark], grid: SliceGrid) -> list[list[FilledMark]]:
    """Marks of one nodule together (module docstring): overlap links first (by IoU), then marks whose
    voxels come within :func:`touch_mm` of each other (nearest first); at most one mark per reader."""
    links = []
    trees = [cKDTree(grid.lps(grid.unravel(m.voxels))) for m in marks]
    reach = touch_mm(grid) * (1 + 1e-6)
    for a in range(len(marks)):
        for b in range(a + 1, len(marks)):
            if marks[a].mark.reader == marks[b].mark.reader:
                continue
            inter = np.intersect1d(marks[a].voxels, marks[b].voxels, assume_unique=True).size
            if inter:
                union = marks[a].voxels.size + marks[b].voxels.size - inter
                links.append((inter / union, a, b))
                continue
            d, _ = trees[b].query(trees[a].data, distance_upper_bound=reach)
            if np.isfinite(d).any():
                links.append((-float(d.min()) / (1 + reach), a, b))      # below every overlap, nearest first
    groups = _group(len(marks), [m.mark.reader for m in marks], links)
    return [[marks[i] for i in g] for g in groups]


def group_points(points: list[PointMark], grid: SliceGrid) -> list[list[PointMark]]:
    """Points of one small nodule (or non-nodule) together: within :data:`POINT_LINK_MM`, or 1.5 voxels
    where voxels are larger, nearest first."""
    if not points:
        return []
    mm = grid.lps(np.array([p.crk for p in points]))
    reach = max(POINT_LINK_MM, 1.5 * touch_mm(grid))
    links = []
    for a in range(len(points)):
        for b in range(a + 1, len(points)):
            d = float(np.linalg.norm(mm[a] - mm[b]))
            if points[a].reader != points[b].reader and d <= reach:
                links.append((-d, a, b))
    groups = _group(len(points), [p.reader for p in points], links)
    return [[points[i] for i in g] for g in groups]


def consensus_voxels(group: list[FilledMark], consensus: float) -> np.ndarray:
    """Flat stack indices marked by at least ``consensus`` of the group's readers (sorted)."""
    voxels, counts = np.unique(np.concatenate([m.voxels for m in group]), return_counts=True)
    return voxels[counts >= consensus * len(group) - 1e-9]


def max_axial_diameter_mm(crk: np.ndarray, grid: SliceGrid) -> float:
    """The largest distance between the centres of two voxels on one slice, plus one pixel (the voxels'
    own width): the longest in-plane extent of the region, as readers measure a nodule. 0 when empty."""
    if len(crk) == 0:
        return 0.0
    dx, dy = grid.pixel_mm
    best = 0.0
    for k in np.unique(crk[:, 2]):
        xy = crk[crk[:, 2] == k][:, :2].astype(np.float64) * (dx, dy)
        if len(xy) > 400:        # only the hull matters: keep the region's extreme points per row and column
            keep = set()
            for axis in (0, 1):
                for value in np.unique(xy[:, axis]):
                    rows = np.flatnonzero(xy[:, axis] == value)
                    other = xy[rows, 1 - axis]
                    keep.update((rows[np.argmin(other)], rows[np.argmax(other)]))
            xy = xy[sorted(keep)]
        diff = xy[:, None, :] - xy[None, :, :]
        best = max(best, float(np.sqrt((diff ** 2).sum(-1)).max()))
    return best + min(dx, dy)


def _median_characteristics(chars: list[dict[str, int]]) -> dict[str, float | str]:
    out: dict[str, float | str] = {}
    for name in CHARACTERISTICS:
        values = [c[name] for c in chars if name in c]
        out[name] = float(np.median(values)) if values else ""
    return out


def _readers(items) -> tuple[str, str]:
    pairs = sorted((m.reader, m.nodule_id) for m in items)
    return ";".join(str(r) for r, _ in pairs), ";".join(n for _, n in pairs)


def nodule_row(label: int, group: list[FilledMark], voxels: np.ndarray, grid: SliceGrid) -> dict:
    """The table row of an outlined nodule from its consensus ``voxels`` (flat stack indices)."""
    crk = grid.unravel(voxels)
    centre = crk.mean(axis=0) if len(crk) else np.full(3, np.nan)
    lps, ijk = grid.lps(centre)[0], grid.ijk(centre)[0]
    volume = len(voxels) * grid.voxel_mm3
    readers, ids = _readers([m.mark for m in group])
    row = {"label": label, "kind": "nodule", "n_readers": len(group), "readers": readers, "reader_ids": ids,
           "voxels": len(voxels), "volume_mm3": round(volume, 3),
           "diameter_mm": round((6 * volume / np.pi) ** (1 / 3), 3),
           "max_axial_diameter_mm": round(max_axial_diameter_mm(crk, grid), 3)}
    row.update(_position(lps, ijk))
    row.update(_median_characteristics([m.mark.characteristics for m in group]))
    return row


def point_row(kind: str, group: list[PointMark], grid: SliceGrid) -> dict:
    """The table row of a small nodule or a non-nodule: the mean of its readers' points, no voxels."""
    centre = np.mean([p.crk for p in group], axis=0)
    readers, ids = _readers(group)
    row = {"label": 0, "kind": kind, "n_readers": len(group), "readers": readers, "reader_ids": ids,
           "voxels": 0, "volume_mm3": "", "diameter_mm": "", "max_axial_diameter_mm": ""}
    row.update(_position(grid.lps(centre)[0], grid.ijk(centre)[0]))
    row.update(_median_characteristics([p.characteristics for p in group]))
    return row


def _position(lps: np.ndarray, ijk: np.ndarray) -> dict:
    return {"centroid_x_mm": round(float(lps[0]), 3), "centroid_y_mm": round(float(lps[1]), 3),
            "centroid_z_mm": round(float(lps[2]), 3), "centroid_i": round(float(ijk[0]), 3),
            "centroid_j": round(float(ijk[1]), 3), "centroid_k": round(float(ijk[2]), 3)}


def _point(reader: int, nodule_id: str, roi, chars: dict, grid: SliceGrid, problems: list[str],
           what: str) -> PointMark | None:
    k, how = grid.slice_of(roi)
    if k is None:
        problems.append(f"reader {reader} {what} {nodule_id}: point skipped: {how}")
        return None
    x, y = roi.points.mean(axis=0)
    if roi_outside(roi, grid.columns, grid.rows):
        problems.append(f"reader {reader} {what} {nodule_id}: point outside the image: clipped on slice {k}")
        x, y = np.clip(x, 0, grid.columns - 1), np.clip(y, 0, grid.rows - 1)
    return PointMark(reader, nodule_id, np.array([x, y, k], float), chars)


def nodules(readings: list[Reading], grid: SliceGrid, consensus: float
            ) -> tuple[list[dict], list[np.ndarray], list[str]]:
    """The nodule table, the consensus voxels of each labelled row, and the problems found.

    Readers are counted per file (``readingSession`` order); the marks of several files of one series
    are pooled, each file's readers numbered after the previous file's. Rows: outlined nodules first
    (labels 1, 2, ... in the order of their first mark), then small nodules, then non-nodules.
    """
    if not 0 < consensus <= 1:
        raise ValueError(f"consensus must be in (0, 1], got {consensus!r}")
    problems: list[str] = []
    filled, small, non = [], [], []
    offset = 0
    for reading in readings:
        for mark in reading.marks:
            mark = Mark(mark.reader + offset, mark.nodule_id, mark.rois, mark.characteristics)
            if mark.small:
                p = _point(mark.reader, mark.nodule_id, mark.rois[0], mark.characteristics, grid, problems,
                           "nodule")
                if p is not None:
                    small.append(p)
                continue
            voxels = fill(mark, grid, problems)
            if voxels.size:
                filled.append(FilledMark(mark, voxels))
            else:
                problems.append(f"reader {mark.reader} nodule {mark.nodule_id}: no voxel on the series; skipped")
        for nn in reading.non_nodules:
            p = _point(nn.reader + offset, nn.nodule_id, nn.roi, {}, grid, problems, "non-nodule")
            if p is not None:
                non.append(p)
        offset += reading.n_readers
    rows, masks = [], []
    for group in group_filled(filled, grid):
        voxels = consensus_voxels(group, consensus)
        rows.append(nodule_row(len(rows) + 1, group, voxels, grid))
        masks.append(voxels)
        if voxels.size == 0:
            problems.append(f"nodule {len(rows)}: no voxel reaches the consensus of {consensus:g} "
                            f"of {len(group)} readers")
    for kind, points in (("small", small), ("non-nodule", non)):
        rows += [point_row(kind, g, grid) for g in group_points(points, grid)]
    return rows, masks, problems

