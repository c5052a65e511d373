"""3-D multi-scale SSIM and the two ways it is reported for volume generators.

SSIM (Wang, Bovik, Sheikh & Simoncelli 2004, Eq. 13), with Gaussian-weighted local statistics:

    SSIM(x, y) = l · cs,   l = (2 μx μy + C1) / (μx² + μy² + C1),   cs = (2 σxy + C2) / (σx² + σy² + C2)     (1)

with C1 = (0.01 L)², C2 = (0.03 L)², L = 1 (data range). MS-SSIM (Wang, Simoncelli & Bovik 2003, Eq. 7) over
M scales, each a 2× average-pool of the previous one:

    MS-SSIM = SSIM_M^{w_M} · Π_{j<M} cs_j^{w_j}                                                      (2)

This follows pytorch-msssim 1.0's ``ms_ssim`` exactly (separable Gaussian window σ = 1.5 applied without
padding, ReLU on cs_j and SSIM_M, ``avg_pool3d(kernel 2, padding = side % 2)`` between scales) and gives the
same numbers wherever that function accepts the input (checked in tests). It is written out here because
pytorch-msssim asserts min(H, W) > (win − 1)·2⁴ whatever the number of scales, which rules out the small demo
volumes even with fewer weights. At 128³ with a 7-voxel window the five standard weights apply.

Two protocols, not to be confused:
- ``paired_msssim``: the paper's. Each synthetic volume is paired with its nearest real volume (L2 voxel
  distance) and MS-SSIM is averaged over these pairs. Higher = closer to real data (paper: 0.266).
- ``diversity_msssim``: WDM-3D's. Mean MS-SSIM over random pairs of distinct synthetic volumes.
  Lower = more diverse samples.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ctdiff.metrics.nearest import as_volumes, nearest_real

STANDARD_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SIGMA = 1.5
_K1, _K2 = 0.01, 0.03
_PAIR_BATCH = 4  # volume pairs per MS-SSIM call: bounds the ~15 full-size temporaries it creates


def msssim_settings(size: int, window: int = 7) -> tuple[int, list[float]]:
    """Window and scale weights usable for volumes whose smallest side is ``size``.

    Scale j (0-based) sees sides ⌈size / 2ʲ⌉, and its Gaussian window must fit: M scales need
    size > (window − 1)·2^(M−1). Up to five scales keep the standard weights (truncated to the first M and
    renormalised to sum 1 when M < 5; used as published when M = 5). If not even one scale fits, the window
    shrinks to the largest odd size ≤ ``size``. 128 → (7, 5 weights); 32 → (7, 3); 16 → (7, 2).
    """
    if window < 3 or window % 2 == 0:
        raise ValueError(f"MS-SSIM window must be an odd integer >= 3, got {window}")
    if size < 3:
        raise ValueError(f"volume side {size} is too small for MS-SSIM (needs at least 3 voxels)")
    if size < window:
        window = size if size % 2 == 1 else size - 1
    levels = max(m for m in range(1, len(STANDARD_WEIGHTS) + 1) if size > (window - 1) * 2 ** (m - 1))
    if levels == len(STANDARD_WEIGHTS):
        return window, list(STANDARD_WEIGHTS)
    w = np.asarray(STANDARD_WEIGHTS[:levels])
    return window, (w / w.sum()).tolist()


def _gauss_1d(window: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    coords = torch.arange(window, dtype=torch.float64) - window // 2
    g = torch.exp(-(coords**2) / (2 * SIGMA**2))
    return (g / g.sum()).to(device=device, dtype=dtype)


def _blur(x: Tensor, g: Tensor) -> Tensor:
    """Separable Gaussian filter over the three spatial axes of ``x`` [B, 1, D, H, W], 'valid' (no padding)."""
    n = g.numel()
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = n
        x = F.conv3d(x, g.view(shape))
    return x


def _ssim_cs(x: Tensor, y: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """Mean SSIM and mean cs of Eq. (1) per item, for x, y [B, 1, D, H, W] with data range 1 → ([B], [B])."""
    c1, c2 = _K1**2, _K2**2
    mu_x, mu_y = _blur(x, g), _blur(y, g)
    var_x = _blur(x * x, g) - mu_x**2
    var_y = _blur(y * y, g) - mu_y**2
    cov = _blur(x * y, g) - mu_x * mu_y
    cs = (2 * cov + c2) / (var_x + var_y + c2)
    ssim = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs
    return ssim.flatten(1).mean(1), cs.flatten(1).mean(1)


def msssim(x: Tensor, y: Tensor, *, window: int = 7) -> Tensor:
    """MS-SSIM (2) of each pair: x, y [B, 1, D, H, W] in [0, 1] → [B], with ``msssim_settings`` of the
    smallest side (computed in the inputs' floating dtype, at least float32)."""
    if x.shape != y.shape or x.ndim != 5 or x.shape[1] != 1:
        raise ValueError(
            f"expected two [B, 1, D, H, W] tensors of one shape, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, y = x.to(dtype), y.to(dtype)
    window, weights = msssim_settings(min(x.shape[2:]), window)
    g = _gauss_1d(window, dtype, x.device)
    factors = []
    for level in range(len(weights)):
        ssim, cs = _ssim_cs(x, y, g)
        if level < len(weights) - 1:
            factors.append(torch.relu(cs))
            pad = [s % 2 for s in x.shape[2:]]
            x, y = F.avg_pool3d(x, 2, padding=pad), F.avg_pool3d(y, 2, padding=pad)
    factors.append(torch.relu(ssim))
    w = torch.tensor(weights, dtype=dtype, device=x.device).view(-1, 1)
    return torch.prod(torch.stack(factors) ** w, dim=0)


def _pairs_msssim(
    x: np.ndarray, y: np.ndarray, i: np.ndarray, j: np.ndarray, window: int, device
) -> np.ndarray:
    """MS-SSIM of (x[i[k]], y[j[k]]) for every k, ``_PAIR_BATCH`` pairs at a time → [K] float64."""
    vals = []
    for k in range(0, len(i), _PAIR_BATCH):
        a = torch.as_tensor(x[i[k : k + _PAIR_BATCH]], device=device).unsqueeze(1)
        b = torch.as_tensor(y[j[k : k + _PAIR_BATCH]], device=device).unsqueeze(1)
        vals.append(msssim(a, b, window=window).double().cpu().numpy())
    return np.concatenate(vals) if vals else np.empty(0)


def _summary(values: np.ndarray) -> dict:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    return {
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
    }


def paired_msssim(
    synthetic: np.ndarray | Tensor, real: np.ndarray | Tensor, *, window: int = 7, device="cpu"
) -> dict:
    """The paper's protocol: MS-SSIM between each synthetic volume and its nearest real one (``nearest_real``).

    synthetic [Ns, D, H, W], real [Nr, D, H, W], both in [0, 1]. Higher = closer to real data.
    Returns {'mean', 'std', 'n', 'values' [Ns], 'nearest' [Ns] (indices into real), 'window', 'weights'}.
    """
    s, r = as_volumes(synthetic, "synthetic"), as_volumes(real, "real")
    if len(s) == 0:
        raise ValueError("no synthetic volumes")
    nearest = nearest_real(s, r)
    window, weights = msssim_settings(min(s.shape[1:]), window)
    values = _pairs_msssim(s, r, np.arange(len(s)), nearest, window, device)
    return {**_summary(values), "n": len(values), "values": values.tolist(), "nearest": nearest.tolist(),
            "window": window, "weights": weights}


def diversity_msssim(
    synthetic: np.ndarray | Tensor, *, n_pairs: int, seed: int, window: int = 7, device="cpu"
) -> dict:
    """WDM-3D's protocol: mean MS-SSIM over ``n_pairs`` random pairs of distinct synthetic volumes.

    Pairs {i, j}, i < j, are drawn without replacement from all Ns(Ns − 1)/2 pairs with
    ``numpy.random.default_rng(seed)``. Lower = more diverse samples.
    Returns {'mean', 'std', 'n_pairs', 'values' [n_pairs], 'pairs' [n_pairs, 2], 'window', 'weights'}.
    """
    s = as_volumes(synthetic, "synthetic")
    total = len(s) * (len(s) - 1) // 2
    if not 1 <= n_pairs <= total:
        raise ValueError(f"n_pairs must be in 1..{total} for {len(s)} synthetic volumes, got {n_pairs}")
    rows, cols = np.triu_indices(len(s), k=1)
    pick = np.sort(np.random.default_rng(seed).choice(total, size=n_pairs, replace=False))
    i, j = rows[pick], cols[pick]
    window, weights = msssim_settings(min(s.shape[1:]), window)
    values = _pairs_msssim(s, s, i, j, window, device)
    return {**_summary(values), "n_pairs": n_pairs, "values": values.tolist(),
            "pairs": np.stack([i, j], 1).tolist(), "window": window, "weights": weights}
