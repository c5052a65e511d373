"""Random streams keyed by integers: every random draw that must be reproducible whatever the process count,
batch split or resume point comes from a CPU generator seeded by the words that name it (a sample's
``(seed, index)``, a training batch position's ``(seed, step, position)``, ...).
"""

from __future__ import annotations

import numpy as np
import torch


def generator(*words: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``words`` through NumPy's ``SeedSequence`` (well-mixed 64-bit
    state: neighbouring words give unrelated streams)."""
    state = np.random.SeedSequence(list(words)).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))
