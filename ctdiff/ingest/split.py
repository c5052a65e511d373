"""Patient-level train/test split, deterministic from a seed.

Items (converted scans) are grouped by patient so that a patient with two scans never straddles the
split. The test set is drawn first, so it depends only on (patients, test size, seed).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ctdiff.files import atomic_path


def split_items(item_patient: Mapping[str, str], *, test: float, seed: int) -> tuple[list[str], list[str]]:
    """Split items into (train, test) by patient.

    ``test`` < 1 is a fraction of patients (rounded, at least one), an integer >= 1 a count of patients.
    Both groups must be non-empty; a request that leaves no training patient raises ``ValueError``.
    """
    patients = sorted(set(item_patient.values()))
    n = len(patients)
    n_test = max(1, round(test * n)) if test < 1 else int(test)
    if n_test >= n:
        raise ValueError(f"split.test={test} asks for {n_test} of {n} patients: no patient left to train on")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    test_patients = {patients[i] for i in order[:n_test]}
    train = sorted(i for i, p in item_patient.items() if p not in test_patients)
    held = sorted(i for i, p in item_patient.items() if p in test_patients)
    return train, held


def write_split(
    item_patient: Mapping[str, str], train_txt: Path, test_txt: Path, *, test: float, seed: int
) -> tuple[list[str], list[str]]:
    """Compute the split and write one item id per line to each file, atomically."""
    train, held = split_items(item_patient, test=test, seed=seed)
    for path, ids in ((train_txt, train), (test_txt, held)):
        with atomic_path(Path(path)) as tmp:
            tmp.write_text("".join(f"{i}\n" for i in ids))
    return train, held


def read_ids(path: Path) -> list[str]:
    """Item ids from a split file (one per line, blank lines ignored)."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


__all__ = ["split_items", "write_split", "read_ids"]
