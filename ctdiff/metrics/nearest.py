"""Nearest volume by L2 distance over voxels: the pairing of the paper's MS-SSIM and the memorisation audit.

The distance between volumes q and r of n voxels is d(q, r) = ‖q − r‖₂ = √D(q, r), D = Σ_v (q_v − r_v)²
summed directly in float64, and the answer for each query is the reference with the smallest D, the lowest
reference index among equal sums. D is computed the same way for every pair, so an exact copy gives exactly
0, two identical references give identical sums, and the answer depends neither on how queries and
references are blocked or chunked nor on the CPU's matrix-product kernel.

Summing D for all pairs would hold Nq × Nr × n differences; the search runs in two passes instead:

1. Expansion: E(q, r) = ‖q‖² + ‖r‖² − 2 q·r, one float64 matrix product per voxel chunk.
2. Check: D is summed directly for every reference whose E lies within the rounding bound T of the
   smallest E (usually one reference, a few for near-ties), and the smallest D wins.

Bound (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1). All arithmetic is float64,
u = 2⁻⁵³, γ_k = k u / (1 − k u); t = ‖q − r‖² is the exact value. E adds 3n rounded products
(q_v², r_v², −2 q_v r_v; the factor 2 is exact) along a tree at most m − 1 deep within a chunk of m
voxels (whatever order the matrix product and the sums take, with or without fused multiply-add),
2 deeper to combine the chunk's three sums and K − 1 deeper across K = ⌈n/m⌉ chunks; m + K ≤ n + 1, so

    |E − t| ≤ γ_{n+2} (‖q‖² + ‖r‖² + 2 Σ_v |q_v r_v|) ≤ γ_{n+2} (‖q‖ + ‖r‖)²   (Cauchy–Schwarz)   (1)

D rounds each difference and its square once and adds n non-negative terms, so

    |D − t| ≤ γ_{n+2} t ≤ γ_{n+2} (‖q‖ + ‖r‖)²                     (triangle inequality)   (2)

and |E − D| ≤ 2 γ_{n+2} (‖q‖ + ‖r‖)² ≤ T(q, r) = 3 γ_{n+3} (‖q‖ + ‖r‖)², T computed from the
computed norms (the third γ covers the rounding of T itself and of the norms). If b has the smallest E
and j the smallest D, then E(j) ≤ D(j) + T_j ≤ D(b) + T_j ≤ E(b) + T_b + T_j: checking every reference
with E − E(b) ≤ T + T_b always includes j. The same bound, D ≥ E − T, lets a chunked search skip the
check of a chunk that cannot beat the best D found so far.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

UNIT_ROUNDOFF = 2.0**-53  # float64, the precision of every sum and product of the search


def as_volumes(v: np.ndarray | Tensor, name: str) -> np.ndarray:
    """``v`` as a numpy array [N, D, H, W] (tensors are detached and copied to the host); ValueError naming
    ``name`` for any other number of axes."""
    a = v.detach().cpu().numpy() if isinstance(v, Tensor) else np.asarray(v)
    if a.ndim != 4:
        raise ValueError(f"{name}: expected [N, D, H, W], got shape {a.shape}")
    return a


def expansion_bound(n_voxels: int) -> float:
    """γ_{n+3} = (n + 3) u / (1 − (n + 3) u), u = 2⁻⁵³: the relative factor of the check window T (module
    docstring) for volumes of ``n_voxels`` voxels."""
    k = (n_voxels + 3) * UNIT_ROUNDOFF
    return k / (1.0 - k)


def _squared_distance(q: np.ndarray, r: np.ndarray) -> float:
    """D = Σ_v (q_v − r_v)² of two flat volumes, summed directly in float64 (exactly 0 for a copy). numpy's
    pairwise sum adds in an order fixed by n alone, so equal inputs give equal sums on every machine."""
    d = np.subtract(q, r, dtype=np.float64)
    np.multiply(d, d, out=d)
    return float(np.sum(d))


def _nearest_squared(
    q: np.ndarray, r: np.ndarray, block: int, beaten: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(index [Nq] int64, D [Nq] float64) of the nearest row of ``r`` [Nr, n] to each row of ``q`` [Nq, n].

    With ``beaten`` [Nq] (the smallest D found so far, e.g. in earlier chunks), a query whose every D here
    must exceed it (E − T > beaten for every reference, by (1)-(2)) is not checked: it gets index −1, D = inf.
    """
    chunk = max(1, (64 << 20) // 8 // (min(block, max(len(q), 1)) + len(r)))
    window = 3.0 * expansion_bound(q.shape[1])
    index = np.full(len(q), -1, dtype=np.int64)
    squared = np.full(len(q), np.inf)
    for i0 in range(0, len(q), block):
        rows = q[i0 : i0 + block]
        expanded = torch.zeros(len(rows), len(r), dtype=torch.float64)
        q_sq = torch.zeros(len(rows), 1, dtype=torch.float64)
        r_sq = torch.zeros(len(r), dtype=torch.float64)
        for v0 in range(0, q.shape[1], chunk):
            a = torch.from_numpy(np.ascontiguousarray(rows[:, v0 : v0 + chunk], dtype=np.float64))
            b = torch.from_numpy(np.ascontiguousarray(r[:, v0 : v0 + chunk], dtype=np.float64))
            a_sq, b_sq = (a * a).sum(1, keepdim=True), (b * b).sum(1)
            expanded += a_sq + b_sq - 2.0 * (a @ b.T)
            q_sq += a_sq
            r_sq += b_sq
        if not torch.isfinite(expanded).all():
            k, j = (int(x) for x in (~torch.isfinite(expanded)).nonzero()[0])
            raise ValueError(f"query volume {i0 + k} or reference volume {j} holds NaN or infinite values")
        tol = window * (q_sq.sqrt() + r_sq.sqrt()) ** 2  # T [rows, Nr]
        best, arg = expanded.min(1)
        floor = (expanded - tol).min(1).values.numpy()  # every D of the row is >= this
        for k in range(len(rows)):
            if beaten is not None and floor[k] > beaten[i0 + k]:
                continue
            check = (expanded[k] - best[k] <= tol[k] + tol[k, arg[k]]).nonzero().flatten().numpy()  # ascending
            exact = [_squared_distance(rows[k], r[j]) for j in check]
            w = int(np.argmin(exact))  # first minimum: the lowest index among equal sums
            index[i0 + k], squared[i0 + k] = check[w], exact[w]
    return index, squared


def _flat_pair(query: np.ndarray | Tensor, reference: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
    q, r = as_volumes(query, "query"), as_volumes(reference, "reference")
    if q.shape[1:] != r.shape[1:]:
        raise ValueError(f"query volumes {q.shape[1:]} and reference volumes {r.shape[1:]} differ in shape")
    if len(r) == 0:
        raise ValueError("no reference volumes to search")
    return q.reshape(len(q), -1), r.reshape(len(r), -1)


def _check_block(block: int) -> None:
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")


def nearest_l2(
    query: np.ndarray | Tensor, reference: np.ndarray | Tensor, block: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest ``reference`` [Nr, D, H, W] volume (L2 over voxels) to each ``query`` [Nq, D, H, W] volume.

    Returns (index [Nq] int64 into ``reference``, distance [Nq] float64, ‖q − r‖₂ = √D over all voxels), the
    reference with the smallest direct sum D, ties to the lowest index (module docstring). ``block`` query
    volumes are searched at a time: three block × Nr float64 tables (E, T, E − T) and (block + Nr) × chunk
    float64 voxel values (~64 MiB) exist at once; the answer does not depend on ``block``.
    """
    _check_block(block)
    q, r = _flat_pair(query, reference)
    index, squared = _nearest_squared(q, r, block)
    return index, np.sqrt(squared)


def nearest_rows(
    query: np.ndarray, reference: np.ndarray, block: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest row of ``reference`` [Nr, C] (L2 over the C entries) to each row of ``query`` [Nq, C]: the search of
    ``nearest_l2`` for vectors, e.g. feature vectors. The bound of the module docstring holds for any finite
    float64 entries (n = C). Returns (index [Nq] int64, distance [Nq] float64); ValueError for other shapes."""
    _check_block(block)
    q, r = np.asarray(query), np.asarray(reference)
    if q.ndim != 2 or r.ndim != 2 or q.shape[1] != r.shape[1]:
        raise ValueError(f"expected query [Nq, C] and reference [Nr, C], got shapes {q.shape} and {r.shape}")
    if len(r) == 0:
        raise ValueError("no reference vectors to search")
    index, squared = _nearest_squared(q, r, block)
    return index, np.sqrt(squared)


def nearest_real(synthetic: np.ndarray | Tensor, real: np.ndarray | Tensor, block: int = 64) -> np.ndarray:
    """Index [Ns] into ``real`` [Nr, D, H, W] of the nearest real volume (L2 over voxels) to each synthetic one
    (``nearest_l2`` without the distances)."""
    return nearest_l2(synthetic, real, block)[0]


def nearest_over_chunks(
    queries: Sequence[np.ndarray], reference_chunks: Iterable[np.ndarray], block: int = 64
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Nearest reference volume for every volume of each query set, the reference given as consecutive chunks
    [n_k, D, H, W] (indices count across chunks), so only the queries and one chunk are held at once.

    Returns one (index [Nq], distance [Nq]) per query set, identical to ``nearest_l2(query, concatenated
    reference)`` whatever the chunk sizes: chunks are compared on the direct sums D, and an equal sum keeps
    the earlier chunk's (lower) index.
    """
    _check_block(block)
    best = [(np.full(len(q), -1, np.int64), np.full(len(q), np.inf)) for q in queries]
    offset = 0
    for chunk in reference_chunks:
        for q, (index, squared) in zip(queries, best):
            i, d2 = _nearest_squared(*_flat_pair(q, chunk), block, beaten=squared)
            closer = d2 < squared
            index[closer], squared[closer] = i[closer] + offset, d2[closer]
        offset += len(chunk)
    if offset == 0:
        raise ValueError("no reference volumes to search")
    return [(index, np.sqrt(squared)) for index, squared in best]
