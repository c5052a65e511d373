"""Nodule labels as an LIDC annotation file whose outlines ctdiff's rasteriser fills back exactly.

LIDC's fill convention (:mod:`ctdiff.ingest.annotations.rasterise`): an inclusion outline traces the pixels
just outside the nodule, and the nodule is the pixels whose centres lie strictly inside the polygon through
the traced points, the traced pixels left out; an exclusion outline (a hole) removes the same interior of
its own polygon. So, per label and slice, for each 8-connected component of the label's pixels:

- one inclusion outline: the ring of pixels just outside the component (the boundary of its 3 x 3 dilation,
  holes filled), in Moore-neighbour order;
- one exclusion outline around each 4-connected group of pixels that these enclose without being the
  label's (a hole; a notch too narrow for the ring to enter): the ring of pixels just around the group.

Rings are walked as 4-connected chains (a diagonal step of the walk is split through the pixel on its inner
side), because a pixel cut off by a diagonal edge would lie inside the polygon without being traced.

A single pixel thus gets the eight pixels around it. The outlines of each slice are filled again with the
rasteriser's own :func:`~ctdiff.ingest.annotations.rasterise.interior` before they are written; where they
do not give back the slice's pixels exactly (a component inside another's hole, which the hole's exclusion
would remove, and other tangles of one-pixel necks), that slice is written as one outline per
run of pixels along a row instead: the four corners of the rectangle one pixel around the run, which
encloses exactly the run. Both kinds are ordinary LIDC outlines; :class:`Outlines` counts how many slices
needed the runs.

Each label is one reader's mark (one ``readingSession``, marks in label order, no characteristics: no reader
rated the synthetic image), so ctdiff's ingestion numbers the nodules 1, 2, ... in label order and, with one
reader, its consensus is the mark itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ctdiff.ingest.annotations.lidc_xml import Mark, Roi, lidc_xml
from ctdiff.ingest.annotations.rasterise import interior

#: The eight neighbours (dx, dy) of a pixel, clockwise on screen (y grows downward): E, SE, S, SW, W, NW, N, NE.
_NEIGHBOURS = ((1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1))
_DIRECTION = {d: n for n, d in enumerate(_NEIGHBOURS)}
_SQUARE = np.ones((3, 3), bool)
_CROSS = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class Outlines:
    """What writing the outlines of one volume took: label-slices traced as rings, and written as runs."""

    traced: int = 0
    runs: int = 0


def trace(region: np.ndarray) -> np.ndarray:
    """``[n, 2]`` (x, y) of the boundary pixels of one 8-connected ``region`` (bool ``[rows, columns]``) in
    Moore-neighbour order (clockwise from its first pixel in raster order); one row for a single pixel.

    Stops when the walk is about to repeat its first move (a pixel visited twice, as a one-pixel-wide line
    is, does not stop it early).
    """
    ys, xs = np.nonzero(region)
    if len(xs) == 0:
        raise ValueError("trace: empty region")
    rows, columns = region.shape
    start = (int(xs[0]), int(ys[0]))

    def inside(x: int, y: int) -> bool:
        return 0 <= x < columns and 0 <= y < rows and bool(region[y, x])

    chain, p, back, first = [start], start, 4, None      # entered from the west: nothing lies west of start
    for _ in range(8 * region.size + 8):
        for turn in range(1, 9):
            d = (back + turn) % 8
            q = (p[0] + _NEIGHBOURS[d][0], p[1] + _NEIGHBOURS[d][1])
            if inside(*q):
                break
        else:
            return np.array([start])                       # a single pixel
        if first is None:
            first = (p, q)
        elif (p, q) == first:
            break
        prev = _NEIGHBOURS[(d - 1) % 8]                    # the background pixel checked just before q
        back = _DIRECTION[(p[0] + prev[0] - q[0], p[1] + prev[1] - q[1])]
        p = q
        chain.append(q)
    return np.array(chain[:-1])                            # the walk ends back at start


def four_connected(chain: np.ndarray) -> np.ndarray:
    """The closed ``chain`` with each diagonal step split in two through the pixel on its right (inside a
    clockwise walk), so that the polygon through it has only unit axis-parallel edges: a pixel cut off by
    a diagonal edge would lie strictly inside the polygon without being traced."""
    if len(chain) < 2:
        return chain
    out = []
    for p, q in zip(chain, np.roll(chain, -1, axis=0)):
        out.append(p)
        step = q - p
        if abs(step[0]) == 1 and abs(step[1]) == 1:
            a, b = p + (step[0], 0), p + (0, step[1])
            out.append(a if step[0] * (a - p)[1] - step[1] * (a - p)[0] > 0 else b)
    return np.array(out)


def _ring(pixels: np.ndarray) -> np.ndarray:
    """The closed 4-connected chain of the pixels just outside ``pixels`` (one connected region, bool)."""
    return four_connected(trace(ndimage.binary_dilation(pixels, _SQUARE)))


def _rings(region: np.ndarray) -> list[Roi]:
    """Ring outlines of a padded slice ``region``: an inclusion around each 8-connected component, then an
    exclusion around each 4-connected group of the pixels those enclose that are not ``region``'s (holes,
    and pixels in a concavity too narrow for the ring to enter)."""
    components, n = ndimage.label(region, _SQUARE)
    rois = [Roi(None, "", True, _ring(ndimage.binary_fill_holes(components == c))) for c in range(1, n + 1)]
    extra, n_extra = ndimage.label(filled(rois, region.shape[1], region.shape[0]) & ~region, _CROSS)
    return rois + [Roi(None, "", False, _ring(extra == e)) for e in range(1, n_extra + 1)]


def _runs(region: np.ndarray) -> list[Roi]:
    """One outline per run of pixels along a row: the rectangle one pixel around it, four corners."""
    rois = []
    for y in np.flatnonzero(region.any(axis=1)):
        row = np.concatenate([[False], region[y], [False]])
        edges = np.flatnonzero(row[1:] != row[:-1])
        for x0, x1 in zip(edges[::2], edges[1::2] - 1):
            rois.append(Roi(None, "", True, np.array([[x0 - 1, y - 1], [x1 + 1, y - 1], [x1 + 1, y + 1],
                                                      [x0 - 1, y + 1]], dtype=np.float64)))
    return rois


def filled(rois: list[Roi], columns: int, rows: int) -> np.ndarray:
    """bool ``[rows, columns]``: what ctdiff's rasteriser makes of one slice's outlines (inclusions' interiors
    less exclusions' interiors, as :func:`ctdiff.ingest.annotations.nodules.fill` does)."""
    out = np.zeros((2, rows, columns), bool)
    for roi in rois:
        x, y = interior(roi.points, columns, rows)
        out[0 if roi.inclusion else 1, y, x] = True
    return out[0] & ~out[1]


def slice_outlines(region: np.ndarray) -> tuple[list[Roi], bool]:
    """The outlines of one slice's pixels ``region`` (bool ``[rows, columns]``), points in its pixel frame
    (they may lie one pixel outside the image), and whether they are rings (else runs)."""
    rows, columns = region.shape
    y, x = np.nonzero(region)
    y0, y1, x0, x1 = y.min(), y.max(), x.min(), x.max()
    crop = np.pad(region[y0:y1 + 1, x0:x1 + 1], 2)             # room for the rings around it
    shift = np.array([x0 - 2, y0 - 2], dtype=np.float64)
    rings = [Roi(None, "", r.inclusion, r.points + shift) for r in _rings(crop)]
    if np.array_equal(filled(rings, columns, rows), region):
        return rings, True
    return [Roi(None, "", r.inclusion, r.points + shift) for r in _runs(crop)], False


def label_marks(stack: np.ndarray, z: np.ndarray, sop_uids: list[str]) -> tuple[list[Mark], dict[int, int], Outlines]:
    """One reader's marks of every label of ``stack`` (uint ``[columns, rows, slices]``: the DICOM stack's
    column x, row y and slice k), ``z`` and ``sop_uids`` those of each slice.

    Returns the marks (label order; the mark of label ``n`` has nodule id ``str(n)``), ``{label: nodule
    number on re-ingestion}`` (1, 2, ... in label order) and the :class:`Outlines` counts.
    """
    marks, numbers, traced, runs = [], {}, 0, 0
    for label in (int(v) for v in np.unique(stack) if v):
        rois = []
        for k in np.flatnonzero((stack == label).any(axis=(0, 1))):
            outlines, rings = slice_outlines((stack[:, :, k] == label).T)
            traced, runs = traced + rings, runs + (not rings)
            rois += [Roi(round(float(z[k]), 6), sop_uids[k], r.inclusion, r.points) for r in outlines]
        marks.append(Mark(1, str(label), tuple(rois)))
        numbers[label] = len(marks)
    return marks, numbers, Outlines(traced, runs)


def annotation_xml(stack: np.ndarray, z: np.ndarray, sop_uids: list[str], series_uid: str, study_uid: str,
                   ) -> tuple[bytes, dict[int, int], Outlines]:
    """The LIDC annotation file of the labels of ``stack`` (:func:`label_marks`) for the series
    ``series_uid``: one reading session, one mark per label."""
    marks, numbers, counts = label_marks(stack, z, sop_uids)
    return lidc_xml(series_uid, study_uid, [(marks, [])]), numbers, counts


__all__: list[str] = ["Outlines", "trace", "filled", "slice_outlines", "label_marks", "annotation_xml"]
