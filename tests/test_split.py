"""Patient-level split: deterministic, disjoint, patients never straddle, sizes as asked."""
import pytest

from ctdiff.ingest.split import read_ids, split_items, write_split


def cohort(n, two_scans=()):
    items = {f"P{i:03d}": f"P{i:03d}" for i in range(n)}
    for p in two_scans:
        items.pop(p)
        items.update({f"{p}_0": p, f"{p}_1": p})
    return items


def test_fraction_and_count():
    items = cohort(20)
    train, test = split_items(items, test=0.25, seed=0)
    assert len(test) == 5 and len(train) == 15
    train, test = split_items(items, test=3, seed=0)
    assert len(test) == 3 and len(train) == 17
    assert set(train).isdisjoint(test) and set(train) | set(test) == set(items)


def test_deterministic_and_seed_dependent():
    items = cohort(30)
    assert split_items(items, test=0.2, seed=1) == split_items(items, test=0.2, seed=1)
    assert split_items(items, test=0.2, seed=1)[1] != split_items(items, test=0.2, seed=2)[1]


def test_patient_with_two_scans_never_straddles():
    items = cohort(12, two_scans=["P001", "P002", "P005", "P007"])
    for seed in range(20):
        train, test = split_items(items, test=0.5, seed=seed)
        patients_train = {items[i] for i in train}
        patients_test = {items[i] for i in test}
        assert patients_train.isdisjoint(patients_test)
        assert len(patients_test) == 6


def test_refuses_split_without_training_patients():
    with pytest.raises(ValueError, match="no patient left to train on"):
        split_items(cohort(3), test=3, seed=0)


def test_write_split_round_trip(tmp_path):
    train, test = write_split(cohort(8), tmp_path / "train.txt", tmp_path / "test.txt", test=0.25, seed=0)
    assert read_ids(tmp_path / "train.txt") == train
    assert read_ids(tmp_path / "test.txt") == test
