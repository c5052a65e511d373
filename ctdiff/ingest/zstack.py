"""What the slice positions of one series show, and the one consistent stack they hold, if any.

A CT series is one volume when its slices, sorted by position along the slice normal (mm), sit on one
uniform grid, each position once. :func:`diagnose` names what the positions show otherwise, as a rejection
reason ``'category: detail'`` with numbers (:mod:`ctdiff.ingest.cohort` counts reasons by category):

- ``stray slice(s)``: at most :data:`STRAY_MAX_SLICES` slices, and at most a tenth of the series, lie
  farther than :data:`STRAY_MIN_SPACINGS` spacings (plus the tolerance) beyond either end of an otherwise
  uniform stack: farther than a single missing slice would put them;
- ``missing slice(s)``: every spacing is a whole multiple of the grid spacing, some more than one;
- ``shifted grid``: uniform runs of at least two slices, the grid moving by a fraction of the spacing
  between runs (slices missing on the way are counted too);
- ``overlapping sub-stacks``: two uniform sub-stacks of one spacing, offset by a fraction of it, interleave
  over part of their length;
- ``duplicate slice position(s)``: files share a position; when every position is held by the same number
  of files and the positions form one uniform grid, the stack was stored that many times over;
- ``irregular spacing``: anything else.

Positions closer than :data:`DUPLICATE_TOLERANCE_MM` are one position. A spacing equals the grid spacing
``s`` within ``SPACING_ATOL_MM + SPACING_RTOL * s`` (dicom2nifti's own tolerances); ``s`` is the most
common spacing. Two interleaved sub-stacks whose alternating spacings (the offset, and the spacing less
the offset) agree within that tolerance are one grid of half the spacing, and are described as that grid.

Several descriptions can fit one set of positions (a slice far beyond the end, on the grid, is a stray
slice and also a gap). The one with the fewest events wins: one per end with stray slices, one per gap,
one per shift, one for an extra sub-stack; ties go to the first in the list above.

Only two findings hold one consistent stack that needs no invented data, and :func:`recover` returns it:
stray slices (dropped) and a stack stored several times over (one file kept per position, the first in the
given file order, and only where the repeated files hold identical pixel data). Gaps, overlaps and shifted
grids would need interpolation and are never recovered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pydicom

#: Slices closer than this along the normal (mm) occupy the same position.
DUPLICATE_TOLERANCE_MM = 1e-3

#: A spacing may differ from the grid spacing ``s`` by ``ATOL + RTOL * s`` mm (dicom2nifti's own
#: increment check uses the same tolerances).
SPACING_ATOL_MM = 0.1
SPACING_RTOL = 0.05

#: A stray slice lies more than this many spacings (plus the tolerance) beyond the end of the stack ...
STRAY_MIN_SPACINGS = 2
#: ... and there are at most this many of them, and at most a tenth of the series.
STRAY_MAX_SLICES = 3

Kind = Literal["uniform", "missing slices", "overlapping sub-stacks", "shifted grid", "stray slices",
               "duplicated stack", "duplicates", "irregular"]

#: Findings :func:`recover` turns into one consistent stack.
RECOVERABLE = ("stray slices", "duplicated stack")


@dataclass(frozen=True)
class ZStack:
    """What the positions of one series show.

    ``keep`` indexes the positions given to :func:`diagnose`, in ascending position: every file for a
    uniform stack, the one consistent stack for a recoverable finding, empty otherwise. ``groups`` (a
    stack stored several times over only) holds, per kept position, the indices of the files there, in
    the given order, and ``positions_mm`` their positions. ``reason`` is ``''`` for a uniform stack, else
    ``'category: detail'``; ``recovery`` says what keeping ``keep`` does (``''`` unless recoverable).
    """

    kind: Kind
    spacing_mm: float
    reason: str
    keep: tuple[int, ...]
    recovery: str = ""
    groups: tuple[tuple[int, ...], ...] = ()
    positions_mm: tuple[float, ...] = ()


def _tolerance(spacing: float) -> float:
    return SPACING_ATOL_MM + SPACING_RTOL * spacing


def _mm(values) -> str:
    """Positions as text with their unit: at most five, then how many more."""
    values = list(values)
    text = ", ".join(f"{v:.3f}" for v in values[:5]) + " mm"
    return text + (f" and {len(values) - 5} more" if len(values) > 5 else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _clusters(values: np.ndarray) -> list[np.ndarray]:
    """Sorted ``values`` split where a value exceeds its cluster's first by more than the tolerance."""
    values = np.sort(values)
    out, start = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] - values[start] > _tolerance(values[start]):
            out.append(values[start:i])
            start = i
    return out


def _grid_spacing(gaps: np.ndarray) -> float:
    """The most common spacing: the median of the largest cluster of spacings (the first on a tie)."""
    return float(np.median(max(_clusters(gaps), key=len)))


def _phase_labels(u: np.ndarray, s: float) -> np.ndarray:
    """Cluster label of each position's phase ``(u - u[0]) mod s`` on the circle, in order of phase."""
    phase = np.mod(u - u[0], s)
    phase[phase > s - _tolerance(s)] = 0.0  # just below s is phase 0 on the circle
    order = np.argsort(phase, kind="stable")
    labels = np.empty(len(u), dtype=int)
    label, start = 0, phase[order[0]]
    for i in order:
        if phase[i] - start > _tolerance(s):
            label, start = label + 1, phase[i]
        labels[i] = label
    return labels


def _is_uniform(u: np.ndarray, s: float) -> bool:
    """Whether every spacing of sorted positions ``u`` is ``s`` within the tolerance."""
    return bool(np.all(np.abs(np.diff(u) - s) <= _tolerance(s)))


# --- the descriptions: each returns (events, ZStack) when it fits the sorted distinct positions u -------

def _stray(u: np.ndarray, s: float, keep: np.ndarray):
    gaps, n = np.diff(u), len(u)
    far = gaps > STRAY_MIN_SPACINGS * s + _tolerance(s)
    lo = max((i for i in range(1, STRAY_MAX_SLICES + 1) if i <= n - 2 and far[i - 1]), default=0)
    hi = max((i for i in range(1, STRAY_MAX_SLICES + 1) if i <= n - 2 and far[n - 1 - i]), default=0)
    n_stray = lo + hi
    if n_stray == 0 or n_stray > STRAY_MAX_SLICES or 10 * n_stray > n or n - n_stray < 2:
        return None
    core = u[lo:n - hi]
    if not _is_uniform(core, s):
        return None
    ends = []
    if lo:
        ends.append((lo, core[0] - u[:lo], "before the first slice"))
    if hi:
        ends.append((hi, u[n - hi:] - core[-1], "beyond the last slice"))

    def phrase(stray: str) -> str:
        parts = [f"{_plural(k, stray + 'slice')} {', '.join(f'{d:.1f}' for d in dist)} mm {where}"
                 for k, dist, where in ends]
        return f"{' and '.join(parts)} of a uniform {len(core)}-slice stack ({s:.3f} mm)"

    return len(ends), ZStack("stray slices", s, f"stray slice(s): {phrase('')}", tuple(keep[lo:n - hi]),
                             recovery=f"recovered: dropped {phrase('stray ')}")


def _on_grid(gaps: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
    """Each spacing in whole grid steps (rounded) and whether it is that many steps within tolerance."""
    k = np.rint(gaps / s).astype(int)
    return k, (k >= 1) & (np.abs(gaps - k * s) <= _tolerance(s))


def _missing(u: np.ndarray, s: float):
    gaps = np.diff(u)
    k, on = _on_grid(gaps, s)
    wide = np.flatnonzero(k >= 2)
    if not on.all() or wide.size == 0:
        return None
    sizes = " and ".join(f"{_plural(int(np.sum(k[wide] == j)), 'gap')} of {np.mean(gaps[k == j]):.3f} mm"
                         for j in np.unique(k[wide]))
    missing = int(np.sum(k[wide] - 1))
    reason = (f"missing slice(s): {sizes} in a {s:.3f} mm stack ({_plural(missing, 'slice')} missing; "
              f"gaps after {_mm(u[wide])})")
    return wide.size, ZStack("missing slices", s, reason, ())


def _shifted(u: np.ndarray, s: float):
    gaps = np.diff(u)
    k, on = _on_grid(gaps, s)
    shifts = np.flatnonzero(~on)
    if shifts.size == 0 or shifts[0] == 0 or shifts[-1] == len(gaps) - 1 or np.any(np.diff(shifts) < 2):
        return None  # every run between shifts must hold at least two slices to show its grid
    by = np.abs((np.mod(gaps[shifts] / s + 0.5, 1.0) - 0.5) * s)  # the shift folded into [0, s/2]
    amounts = " and ".join(f"{np.median(c):.3f}" for c in _clusters(by))
    wide = np.flatnonzero(k >= 2)
    missing = int(np.sum(k[wide] - 1))
    reason = (f"shifted grid: the {s:.3f} mm grid shifts by {amounts} mm at {_plural(shifts.size, 'place')} "
              f"(after {_mm(u[shifts])})")
    if missing:
        reason += f", and {_plural(missing, 'slice')} {'is' if missing == 1 else 'are'} missing"
    return shifts.size + int(np.sum(on & (k >= 2))), ZStack("shifted grid", s, reason, ())


def _overlap(u: np.ndarray, s: float):
    labels = _phase_labels(u, s)
    if labels.max() != 1:
        return None
    a, b = u[labels == 0], u[labels == 1]
    if len(a) < 2 or len(b) < 2 or not (a[0] < b[-1] and b[0] < a[-1]):
        return None
    if not (_is_uniform(a, s) and _is_uniform(b, s)):
        return None
    delta = float(np.mod(b[0] - a[0], s))
    offset = min(delta, s - delta)
    if abs((s - offset) - offset) <= _tolerance(s / 2):
        return None  # its alternating spacings agree: one grid of half the spacing, described as such
    overlap = min(a[-1], b[-1]) - max(a[0], b[0])
    reason = (f"overlapping sub-stacks: two interleaved {s:.3f} mm grids offset by {offset:.3f} mm "
              f"({len(a)} and {len(b)} slices, overlapping over {overlap:.1f} mm)")
    return 1, ZStack("overlapping sub-stacks", s, reason, ())


def _describe(u: np.ndarray, keep: np.ndarray) -> ZStack:
    """The best description of sorted distinct positions ``u`` (``keep``: their indices in the input)."""
    gaps = np.diff(u)
    s = _grid_spacing(gaps)
    if _is_uniform(u, s):
        return ZStack("uniform", s, "", tuple(keep))
    fits = [_stray(u, s, keep), _missing(u, s), _shifted(u, s)]
    # An overlap's spacing is the sum of two neighbouring spacings where its sub-stacks interleave.
    pair_sums = sorted(_clusters(gaps[:-1] + gaps[1:]), key=len, reverse=True)[:3] if len(gaps) > 1 else []
    fits += [_overlap(u, spacing) for spacing in [s] + [float(np.median(c)) for c in pair_sums]]
    best = min((fit for fit in fits if fit is not None), key=lambda fit: fit[0], default=None)
    if best is not None:
        return best[1]
    return ZStack("irregular", s, f"irregular spacing: spacing between slices varies from {gaps.min():.3f} "
                                  f"to {gaps.max():.3f} mm (most common {s:.3f} mm)", ())


def diagnose(positions_mm) -> ZStack:
    """What the slice positions along the normal show (see the module docstring).

    Args:
        positions_mm: ``[N]`` positions (``ImagePositionPatient . normal``, mm) of a series' files, in the
            series table's file order, N >= 2. A position held by several files is stood for by the first
            of them in this order (the one a stack stored several times over keeps).

    Returns:
        The :class:`ZStack`; its indices refer to ``positions_mm``.
    """
    pos = np.asarray(positions_mm, dtype=np.float64)
    if pos.ndim != 1 or len(pos) < 2:
        raise ValueError(f"need the positions of at least 2 slices, got shape {pos.shape}")
    order = np.argsort(pos, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(pos[order]) > DUPLICATE_TOLERANCE_MM])
    groups = [tuple(sorted(int(i) for i in g)) for g in np.split(order, starts[1:])]
    first = np.array([g[0] for g in groups])
    u = pos[first]
    if len(groups) == len(pos):
        return _describe(u, first)

    if len(groups) == 1:
        return ZStack("duplicates", 0.0, f"duplicate slice position(s): all {len(pos)} files share one "
                                         f"position ({u[0]:.3f} mm)", ())
    rest = _describe(u, first)
    sizes = {len(g) for g in groups}
    m = max(sizes)
    if len(sizes) == 1:
        detail = f"every one of the {len(u)} positions is held by {m} files"
    else:
        repeated = [float(u[j]) for j, g in enumerate(groups) if len(g) > 1]
        detail = (f"{len(pos) - len(groups)} file(s) repeat a position along the slice normal "
                  f"(at {_mm(repeated)})")
    if len(sizes) > 1 or rest.kind != "uniform":
        reason = f"duplicate slice position(s): {detail}"
        if rest.kind != "uniform":
            reason += f"; the distinct positions show {rest.reason}"
        return ZStack("duplicates", rest.spacing_mm, reason, ())
    s = rest.spacing_mm
    times = {2: "twice", 3: "three times"}.get(m, f"{m} times")
    return ZStack("duplicated stack", s,
                  f"duplicate slice position(s): {detail} (one uniform {s:.3f} mm stack stored {times})",
                  tuple(first),
                  recovery=(f"recovered: kept the first of {m} identical files at each of the {len(u)} "
                            f"positions of one uniform {s:.3f} mm stack"),
                  groups=tuple(groups), positions_mm=tuple(float(v) for v in u))


def _same_pixels(datasets: list[pydicom.Dataset]) -> bool:
    """Whether the files hold the same HU: equal decoded pixels, RescaleSlope and RescaleIntercept."""
    first = datasets[0]
    return all(float(ds.RescaleSlope) == float(first.RescaleSlope)
               and float(ds.RescaleIntercept) == float(first.RescaleIntercept)
               and np.array_equal(ds.pixel_array, first.pixel_array) for ds in datasets[1:])


def recover(stack: ZStack, datasets: list[pydicom.Dataset]) -> tuple[tuple[int, ...], str]:
    """The one consistent stack of a recoverable finding: ``(keep, note)``.

    ``datasets`` are the files whose positions were given to :func:`diagnose`, in the same order; ``keep``
    indexes them in ascending position, ``note`` is the QC reason of the converted item (``'recovered:
    ...'``). Raises ValueError with the reason when nothing is recoverable: any finding but stray slices or
    a stack stored several times over, or repeated files whose pixel data differ.
    """
    if stack.kind not in RECOVERABLE:
        raise ValueError(stack.reason)
    if stack.kind == "duplicated stack":
        differ = []
        for group, at in zip(stack.groups, stack.positions_mm):
            try:
                same = _same_pixels([datasets[i] for i in group])
            except Exception as err:  # noqa: BLE001 - undecodable pixels cannot be shown identical
                raise ValueError(f"{stack.reason}, and their pixel data cannot be compared: "
                                 f"{type(err).__name__}: {err}") from err
            if not same:
                differ.append(at)
        if differ:
            raise ValueError(f"{stack.reason}, but the files differ in pixel data at {len(differ)} of "
                             f"them (at {_mm(differ)})")
    return stack.keep, stack.recovery
