"""The host-side training set and its prefetcher: bit-identical batches, refusal of changed data, clean stop."""
import os
import signal
import threading

import numpy as np
import pytest
import torch

from conftest import AFFINE, SIZE, write_volumes
from ctdiff.training import trainset as trainset_module
from ctdiff.training.prefetch import Prefetcher
from ctdiff.training.trainset import GIB, TrainingSet
from ctdiff.files import load_volume, save_volume
from ctdiff.training.step import batch_indices

N, BATCH = 6, 4


def load_training_set(files, size):
    """The whole-set loader training used before the host-side set, as the reference: every volume decoded
    and stacked, then ``x * 2 - 1`` in float32 (``.mul_(2).sub_(1)``)."""
    volumes = [load_volume(path) for path in files]
    assert all(v.shape == (size,) * 3 for v, _ in volumes)
    return torch.stack([torch.from_numpy(v) for v, _ in volumes])[:, None].mul_(2).sub_(1), volumes[0][1]


def bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32)


@pytest.fixture
def files(tmp_path):
    return write_volumes(tmp_path / "volumes", N)


def shard_indices(n: int, step: int, rank: int, processes: int, seed: int = 3) -> np.ndarray:
    local = BATCH // processes
    return batch_indices(n, BATCH, seed=seed, step=step)[rank * local:(rank + 1) * local]


@pytest.mark.parametrize("cache_gb", [0.0, 2 * SIZE**3 * 4 / GIB])  # no cache; an LRU of two volumes
def test_batches_equal_the_whole_set_loader_bit_for_bit(files, tmp_path, cache_gb):
    reference, affine = load_training_set(files, SIZE)
    ts = TrainingSet(files, SIZE, tmp_path / "cache", cache_gb=cache_gb)
    assert len(ts) == N and ts.shape == (SIZE,) * 3
    assert np.array_equal(ts.affine, affine)
    for step in range(5):
        for processes in (1, 2):
            for rank in range(processes):
                idx = shard_indices(N, step, rank, processes)
                batch = ts.read(idx)
                assert batch.shape == (BATCH // processes, 1, SIZE, SIZE, SIZE) and batch.dtype == torch.float32
                assert torch.equal(bits(batch), bits(reference[idx]))
    assert len(ts._lru) == (2 if cache_gb else 0)


def test_resume_reuses_the_folder_and_a_changed_source_is_checked_again(files, tmp_path):
    first = TrainingSet(files, SIZE, tmp_path / "cache")
    assert sorted(first.rebuilt) == sorted(f.name for f in files)
    again = TrainingSet(files, SIZE, tmp_path / "cache")
    assert again.rebuilt == [] and again.fingerprint == first.fingerprint

    new = np.full((SIZE,) * 3, 0.25, np.float32)
    save_volume(files[2], new, AFFINE)
    changed = TrainingSet(files, SIZE, tmp_path / "cache")
    assert changed.rebuilt == [files[2].name] and changed.fingerprint != first.fingerprint
    assert torch.equal(changed.read([2]), torch.full((1, 1, SIZE, SIZE, SIZE), -0.5))

    # a smaller set deletes the entries it no longer holds
    TrainingSet(files[:3], SIZE, tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        f"{f.name}{ext}" for f in files[:3] for ext in (".json", ".npy"))


def test_changed_or_vanished_source_is_refused_naming_it(files, tmp_path):
    ts = TrainingSet(files, SIZE, tmp_path / "cache", cache_gb=1e-3)
    ts.read([0, 1])  # volumes 0 and 1 are now in the in-process cache too
    stat = files[1].stat()
    os.utime(files[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # same bytes, new mtime
    with pytest.raises(ValueError, match=f"{files[1].name} changed after the training set was checked"):
        ts.read([0, 1])
    files[3].unlink()
    with pytest.raises(FileNotFoundError, match=f"{files[3].name} vanished"):
        ts.read([3])
    with pytest.raises(FileNotFoundError, match=f"{files[3].name} does not exist"):
        TrainingSet(files, SIZE, tmp_path / "cache")


def test_bad_volumes_are_refused_naming_them(files, tmp_path):
    hu = tmp_path / "in_hu.nii.gz"
    save_volume(hu, np.full((SIZE,) * 3, -1000.0, np.float32), AFFINE)
    with pytest.raises(ValueError, match="in_hu.nii.gz has values"):
        TrainingSet(files + [hu], SIZE, tmp_path / "cache")
    with pytest.raises(ValueError, match=r"V00.nii.gz has shape \(8, 8, 8\), expected \(16, 16, 16\)"):
        TrainingSet(files, 16, tmp_path / "cache")  # cached at 8³: checked again at the new size
    with pytest.raises(ValueError, match="empty"):
        TrainingSet([], SIZE, tmp_path / "cache")
    twin = tmp_path / "other" / files[0].name
    twin.parent.mkdir()
    twin.write_bytes(files[0].read_bytes())
    with pytest.raises(ValueError, match="share the file name"):
        TrainingSet(files + [twin], SIZE, tmp_path / "cache")


def test_truncated_cache_file_is_rebuilt_at_start_and_refused_while_reading(files, tmp_path):
    ts = TrainingSet(files, SIZE, tmp_path / "cache")
    npy = tmp_path / "cache" / f"{files[0].name}.npy"
    npy.write_bytes(npy.read_bytes()[:-4])
    with pytest.raises(ValueError, match="is truncated"):
        ts.read([0])
    assert TrainingSet(files, SIZE, tmp_path / "cache").rebuilt == [files[0].name]


def test_cache_larger_than_available_memory_names_the_setting(files, tmp_path, monkeypatch):
    monkeypatch.setattr(trainset_module, "available_memory", lambda: 8 * SIZE**3 * 4)
    TrainingSet(files, SIZE, tmp_path / "cache", cache_gb=1.0)  # 1 GiB asked, but the set is 6 volumes
    with pytest.raises(ValueError, match="lower train.cache_gb"):
        TrainingSet(files, SIZE, tmp_path / "cache", cache_gb=1.0, processes_on_host=2)
    with pytest.raises(ValueError, match="train.cache_gb=-1"):
        TrainingSet(files, SIZE, tmp_path / "cache", cache_gb=-1)


def fetcher(ts):
    return lambda step: ts.read(shard_indices(len(ts), step, 0, 1))


def test_prefetcher_yields_the_direct_sequence_from_any_start(files, tmp_path):
    ts = TrainingSet(files, SIZE, tmp_path / "cache")
    fetch = fetcher(ts)
    with Prefetcher(range(3, 9), fetch, device="cpu", depth=2) as batches:
        got = [(step, batch) for step, batch in batches]
    assert [step for step, _ in got] == list(range(3, 9))
    for step, batch in got:
        assert torch.equal(bits(batch), bits(fetch(step)))
    # tuples of tensors keep their structure
    with Prefetcher(range(2), lambda s: (fetch(s), torch.tensor([s])), device="cpu") as pairs:
        assert [int(t) for _, (_, t) in pairs] == [0, 1]


def test_prefetcher_thread_ends_when_the_consumer_stops(files, tmp_path):
    ts = TrainingSet(files, SIZE, tmp_path / "cache")
    with Prefetcher(range(1000), fetcher(ts), device="cpu") as batches:
        for step, _ in batches:
            if step == 1:
                break
    assert not batches.running

    p = Prefetcher(range(1000), fetcher(ts), device="cpu")
    with pytest.raises(KeyboardInterrupt):
        with p:
            for _ in p:
                raise KeyboardInterrupt
    assert not p.running

    # a SIGTERM handler that asks the loop to stop at a step boundary, as the training loop does
    requested = []
    previous = signal.signal(signal.SIGTERM, lambda *_: requested.append(True))
    try:
        with pytest.raises(SystemExit):
            with Prefetcher(range(1000), fetcher(ts), device="cpu") as p:
                for step, _ in p:
                    if step == 2:
                        os.kill(os.getpid(), signal.SIGTERM)
                    if requested:
                        raise SystemExit(143)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not p.running
    assert not [t for t in threading.enumerate() if t.name == "ctdiff-prefetch"]


def test_prefetcher_raises_a_fetch_error_at_its_step(files, tmp_path):
    ts = TrainingSet(files, SIZE, tmp_path / "cache")

    def fetch(step):
        if step == 2:
            files[0].unlink()
        return ts.read([0])

    seen = []
    with pytest.raises(FileNotFoundError, match=f"{files[0].name} vanished"):
        with Prefetcher(range(5), fetch, device="cpu") as batches:
            for step, _ in batches:
                seen.append(step)
    assert seen == [0, 1] and not batches.running
