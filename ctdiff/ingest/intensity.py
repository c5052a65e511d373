"""The intensity maps between preprocessed volumes ([0, 1], the HU window scaled linearly), the network's
range ([-1, 1]) and HU: numpy alone, so that training, sampling and evaluation need none of preprocessing's
imaging libraries (:mod:`ctdiff.ingest.preprocess` re-exports them).
"""

from __future__ import annotations

import numpy as np


def to_model_range(volume: np.ndarray) -> np.ndarray:
    """``[0, 1]`` → ``[-1, 1]``, the range the network is trained and sampled in: ``2 v - 1``, in the
    array's own dtype (float32 volumes stay float32)."""
    return volume * 2 - 1


def from_model_range(x: np.ndarray) -> np.ndarray:
    """``[-1, 1]`` → ``[0, 1]``: ``(x + 1) / 2``, clipped to ``[0, 1]`` (a sample may overshoot the range).

    The inverse of :func:`to_model_range` on ``[-1, 1]``, up to one float rounding.
    """
    return ((x + 1.0) / 2.0).clip(0.0, 1.0)


def to_hu(volume: np.ndarray, hu_window: tuple[float, float]) -> np.ndarray:
    """The inverse of the final scaling: ``[0, 1]`` → HU as int16 (rounded), ``0 → lo`` and ``1 → hi``.

    Values the clamp removed (below ``lo`` or above ``hi``) cannot come back: 0 reads as ``lo``.
    """
    lo, hi = (float(v) for v in hu_window)
    return np.rint(lo + np.clip(volume, 0.0, 1.0) * (hi - lo)).astype(np.int16)
