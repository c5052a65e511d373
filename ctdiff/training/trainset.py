"""The training set on the host: every volume checked once, cached uncompressed, read a batch at a time.

:class:`ctdiff.training.prefetch.Prefetcher` reads the next step's batch while a step runs.

Decisions:

* Volumes stay on the host; only each step's batch goes to the device. On construction every source volume
  (``.nii.gz``, float32 in [0, 1], ``S``³) is checked (shape ``S``³, finite, values in [0, 1] ± 1e-4;
  ``ValueError`` naming the file), scaled to [-1, 1] (:func:`ctdiff.ingest.intensity.to_model_range`, float32),
  and written once, uncompressed, as ``<cache_dir>/<name>.npy`` (``[S, S, S]`` little-endian float32, C
  order, ``.npy`` format 1.0) beside ``<name>.json``, which records the source's byte size, ``mtime_ns``
  and sha256 and the volume's affine. ``<name>`` is the source's file name, so names must be unique.
* The cache folder is resumable state owned by the set (not a declared output). A later construction
  reuses an entry whose source still has the recorded size and ``mtime_ns`` without decoding it again,
  checks and rewrites an entry whose source changed, and deletes the entries of volumes no longer in the
  set. Concurrent constructions on one folder are safe (every file is renamed into place), but wasteful:
  let one process build the folder first.
* A batch is read with plain ``readinto`` calls into a freshly allocated ``[b, 1, S, S, S]`` tensor
  (pinned on request), not through ``np.load(mmap_mode="r")``: the pages of a mapping that stays open
  count toward the process's resident memory, so over an epoch a mapped set grows RSS to the set's size.
  A read copies from the kernel's page cache, which all processes on a host share and which is given back
  under memory pressure; the process's resident memory is then the batches in flight, whatever the size
  of the cohort.
* Every read first checks that each volume's source still has the size and ``mtime_ns`` recorded when it
  was checked, and refuses a changed source (``ValueError``) or a vanished one (``FileNotFoundError``),
  naming it: a run never trains on data other than what it checked. ``fingerprint`` (sha256 over the
  sources' names and sha256s, in order) identifies the checked data, e.g. for deciding whether a
  checkpoint may be resumed.
* An optional in-process LRU cache holds up to ``cache_gb`` GiB (2³⁰ bytes) of scaled volumes (0 = none).
  The page cache already keeps recently read files in memory, shared by all processes of a host; the
  in-process cache pays off where reads are slow (a network filesystem) or where the whole set fits.
  Construction refuses a cache that, times the processes sharing the host, exceeds the host's available
  memory, naming ``train.cache_gb``.
* The same machinery holds the nodule conditions of ``model.condition: nodules`` (``channels=2``,
  ``prepare`` = :func:`condition_item`, ``encoding`` = :data:`ctdiff.model.condition.ENCODING`): each mask is
  checked (shape, labels) and encoded once, the ``[2, S, S, S]`` encoding cached beside the volumes' cache
  in a folder of its own; an entry written with another ``encoding`` is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil  # installed with Accelerate, which depends on it
import torch

from ctdiff.ingest.intensity import to_model_range
from ctdiff.files import atomic_path, file_sha256, load_volume, write_json
from ctdiff.model.condition import encode_mask, spacing_of

#: version of the cache folder's layout; entries of another version are rebuilt
CACHE_FORMAT = 1
GIB = 2**30
_NPY_VERSION = (1, 0)
_DTYPE = np.dtype("<f4")


def available_memory() -> int:
    """Bytes of host memory that new allocations can take without swapping (Linux ``MemAvailable``)."""
    return psutil.virtual_memory().available


def prepare_volume(path: Path, array: np.ndarray, affine: np.ndarray, size: int) -> np.ndarray:
    """A training volume as cached: checked (:func:`check_volume`) and scaled to [-1, 1], ``[S, S, S]``."""
    check_volume(path, array, size)
    return to_model_range(array)


def condition_item(path: Path, array: np.ndarray, affine: np.ndarray, size: int) -> np.ndarray:
    """A nodule mask as cached: shape ``S``³ and whole, non-negative labels (``ValueError`` naming ``path``),
    encoded by :func:`ctdiff.model.condition.encode_mask` with the spacing of its affine → ``[2, S, S, S]``."""
    if array.shape != (size, size, size):
        raise ValueError(f"nodule mask {path} has shape {array.shape}, expected {(size,) * 3}")
    if not np.isfinite(array).all() or (array < 0).any() or (array != np.round(array)).any():
        raise ValueError(f"nodule mask {path} holds values other than whole labels >= 0")
    return encode_mask(array, spacing_of(affine))


def check_volume(path: Path, array: np.ndarray, size: int) -> None:
    """Refuse (``ValueError`` naming ``path``) a training volume of the wrong shape, with non-finite values
    or with values outside [0, 1] (± 1e-4)."""
    if array.shape != (size, size, size):
        raise ValueError(f"training volume {path} has shape {array.shape}, expected {(size,) * 3}")
    if not np.isfinite(array).all():
        raise ValueError(f"training volume {path} holds NaN or infinite values")
    lo, hi = float(array.min()), float(array.max())
    if lo < -1e-4 or hi > 1 + 1e-4:
        raise ValueError(f"training volume {path} has values in [{lo:.4g}, {hi:.4g}], expected [0, 1]")


@dataclass(frozen=True)
class _Entry:
    """One cached volume: its source, the source's state when checked, and the cached array's file."""

    source: Path
    source_bytes: int
    mtime_ns: int
    sha256: str
    affine: np.ndarray
    npy: Path
    npy_bytes: int


class TrainingSet:
    """The training volumes, checked once and cached uncompressed in ``cache_dir``; read a batch at a time.

    ``files``: the preprocessed volumes (float32 in [0, 1], ``size``³), in the order that batch indices
    refer to. ``cache_gb``: GiB of scaled volumes to keep in this process (0 = none); the check against
    the host's available memory counts it ``processes_on_host`` times (one copy per training process on
    this host). ``channels``, ``prepare`` and ``encoding``: what one cached item is (module docstring).
    Attributes: ``shape`` (``(S, S, S)``), ``affine`` (the first volume's 4×4 affine, which samples are
    written with), ``affines`` (every item's), ``fingerprint``, ``rebuilt`` (names of the volumes this
    construction checked and wrote; the others were reused from the folder).
    """

    def __init__(
        self,
        files: Sequence[Path],
        size: int,
        cache_dir: Path,
        *,
        cache_gb: float = 0.0,
        processes_on_host: int = 1,
        channels: int = 1,
        prepare: Callable[[Path, np.ndarray, np.ndarray, int], np.ndarray] = prepare_volume,
        encoding: str = "volume",
    ) -> None:
        if not files:
            raise ValueError("training set is empty: the split left no training volume")
        files = [Path(f) for f in files]
        by_name: dict[str, Path] = {}
        for path in files:
            if path.name in by_name:
                raise ValueError(f"training volumes {by_name[path.name]} and {path} share the file name "
                                 f"{path.name!r}; the cache in {cache_dir} names volumes by file name")
            by_name[path.name] = path
        self.shape = (size, size, size)
        self.channels = channels
        self._array_shape = self.shape if channels == 1 else (channels, *self.shape)  # one cached array
        self._prepare, self._encoding = prepare, encoding
        self.volume_bytes = channels * size**3 * _DTYPE.itemsize
        self.cache_dir = Path(cache_dir)
        self._lru: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lru_lock = threading.Lock()
        self._lru_capacity = self._check_cache_fits(cache_gb, len(files), processes_on_host)

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        entries: list[_Entry | None] = [self._reusable(path) for path in files]
        stale = [path for path, entry in zip(files, entries) if entry is None]
        self._check_disk(len(stale))
        self.rebuilt = [path.name for path in stale]
        self._entries: list[_Entry] = [entry or self._build(path) for path, entry in zip(files, entries)]
        self._prune({path.name for path in files})

        self.affine = self._entries[0].affine
        self.affines = [entry.affine for entry in self._entries]  # per item, e.g. to check masks align
        digest = hashlib.sha256()
        for entry in self._entries:
            digest.update(f"{entry.source.name}\t{entry.sha256}\n".encode())
        self.fingerprint = digest.hexdigest()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def files(self) -> list[Path]:
        return [entry.source for entry in self._entries]

    # -- construction ------------------------------------------------------------------------------------

    def _check_cache_fits(self, cache_gb: float, n: int, processes_on_host: int) -> int:
        """Volumes the LRU cache may hold; refuses a cache larger than the host's available memory."""
        if cache_gb < 0:
            raise ValueError(f"train.cache_gb={cache_gb} is negative; 0 keeps no volume in memory")
        capacity = min(n, int(cache_gb * GIB // self.volume_bytes))
        need = capacity * self.volume_bytes * processes_on_host
        available = available_memory()
        if need > available:
            raise ValueError(
                f"train.cache_gb={cache_gb} keeps {capacity} volumes ({capacity * self.volume_bytes / GIB:.3g} GiB) "
                f"in each of {processes_on_host} training process(es) on this host, {need / GIB:.3g} GiB in all, "
                f"but only {available / GIB:.3g} GiB of host memory is available: lower train.cache_gb"
            )
        return capacity

    def _paths(self, name: str) -> tuple[Path, Path]:
        return self.cache_dir / f"{name}.npy", self.cache_dir / f"{name}.json"

    def _reusable(self, path: Path) -> _Entry | None:
        """The recorded entry of ``path`` if its source is unchanged and its files are complete, else None."""
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise FileNotFoundError(f"training volume {path} does not exist") from None
        npy, meta = self._paths(path.name)
        try:
            record = json.loads(meta.read_text())
            entry = _Entry(path, int(record["source_bytes"]), int(record["mtime_ns"]), str(record["sha256"]),
                           np.asarray(record["affine"], dtype=np.float64), npy, int(record["npy_bytes"]))
            current = (record["format"], record.get("encoding", "volume"), record["shape"], entry.source_bytes,
                       entry.mtime_ns, npy.stat().st_size)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if current != (CACHE_FORMAT, self._encoding, list(self._array_shape), stat.st_size, stat.st_mtime_ns,
                       entry.npy_bytes):
            return None
        return entry

    def _check_disk(self, n_new: int) -> None:
        need = n_new * (self.volume_bytes + 128)
        free = shutil.disk_usage(self.cache_dir).free
        if need > free:
            raise ValueError(f"the training-set cache {self.cache_dir} needs {need / GIB:.2f} GiB more for "
                             f"{n_new} volumes, but its filesystem has {free / GIB:.2f} GiB free")

    def _build(self, path: Path) -> _Entry:
        """Check ``path``, write its scaled array and record; refuses a source that changes while read."""
        before = path.stat()
        array, affine = load_volume(path)
        scaled = torch.from_numpy(np.ascontiguousarray(self._prepare(path, array, affine, self.shape[0]),
                                                       dtype=np.float32))
        sha256 = file_sha256(path)
        after = path.stat()
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
            raise ValueError(f"training volume {path} changed while it was being checked")
        npy, meta = self._paths(path.name)
        with atomic_path(npy) as tmp, open(tmp, "wb") as fh:
            np.lib.format.write_array(fh, scaled.numpy(), version=_NPY_VERSION, allow_pickle=False)
        entry = _Entry(path, after.st_size, after.st_mtime_ns, sha256, np.asarray(affine, dtype=np.float64),
                       npy, npy.stat().st_size)
        write_json(meta, {
            "format": CACHE_FORMAT,
            "encoding": self._encoding,
            "source": str(path),
            "source_bytes": entry.source_bytes,
            "mtime_ns": entry.mtime_ns,
            "sha256": sha256,
            "shape": list(self._array_shape),
            "affine": entry.affine.tolist(),
            "npy_bytes": entry.npy_bytes,
        })
        return entry

    def _prune(self, names: set[str]) -> None:
        """Delete the entries of volumes not in the set (hidden files, i.e. writes in progress, are left)."""
        for child in self.cache_dir.iterdir():
            if child.name.startswith(".") or child.suffix not in (".npy", ".json"):
                continue
            if child.name.removesuffix(child.suffix) not in names:
                child.unlink(missing_ok=True)

    # -- reading -------------------------------------------------------------------------------------------

    def read(self, indices: Sequence[int], *, pin_memory: bool = False) -> torch.Tensor:
        """Volumes ``indices`` as a new ``[b, C, S, S, S]`` float32 tensor in [-1, 1] (page-locked when
        ``pin_memory``), bit for bit the rows ``indices`` of the whole set scaled at once.

        Refuses a volume whose source changed (``ValueError``) or vanished (``FileNotFoundError``) since
        construction, naming it, whether or not the volume is in the in-process cache.
        """
        out = _new_batch((len(indices), self.channels, *self.shape), pin_memory)
        for row, index in enumerate(indices):
            index = int(index)
            entry = self._entries[index]
            self._check_source(entry)
            dest = out[row].numpy().reshape(self._array_shape)  # a view: out[row] is contiguous
            if not self._from_lru(index, dest):
                self._read_npy(entry, dest)
                self._to_lru(index, dest)
        return out

    @staticmethod
    def _check_source(entry: _Entry) -> None:
        try:
            stat = entry.source.stat()
        except FileNotFoundError:
            raise FileNotFoundError(f"training volume {entry.source} vanished after the training set was "
                                    "checked") from None
        if (stat.st_size, stat.st_mtime_ns) != (entry.source_bytes, entry.mtime_ns):
            raise ValueError(f"training volume {entry.source} changed after the training set was checked "
                             f"(size or modification time differ from those recorded in {entry.npy.parent})")

    def _read_npy(self, entry: _Entry, dest: np.ndarray) -> None:
        """Read the cached array of ``entry`` into ``dest`` (``[S, S, S]`` or ``[C, S, S, S]`` float32,
        C-contiguous)."""
        with open(entry.npy, "rb", buffering=0) as fh:
            version = np.lib.format.read_magic(fh)
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh) if version == _NPY_VERSION else (
                None, None, None)
            if (shape, fortran, dtype) != (self._array_shape, False, _DTYPE):
                raise ValueError(f"cache file {entry.npy} of training volume {entry.source} does not hold a "
                                 f"{self._array_shape} float32 array; delete it to have it rebuilt")
            view = memoryview(dest).cast("B")
            done = 0
            while done < len(view):
                n = fh.readinto(view[done:])
                if not n:
                    raise ValueError(f"cache file {entry.npy} of training volume {entry.source} is truncated; "
                                     "delete it to have it rebuilt")
                done += n

    def _from_lru(self, index: int, dest: np.ndarray) -> bool:
        with self._lru_lock:
            cached = self._lru.get(index)
            if cached is None:
                return False
            self._lru.move_to_end(index)
        np.copyto(dest, cached)
        return True

    def _to_lru(self, index: int, array: np.ndarray) -> None:
        if not self._lru_capacity:
            return
        copy = array.copy()
        with self._lru_lock:
            self._lru[index] = copy
            while len(self._lru) > self._lru_capacity:
                self._lru.popitem(last=False)


def _new_batch(shape: tuple[int, ...], pin_memory: bool) -> torch.Tensor:
    """A new float32 tensor of ``shape``: page-locked (PyTorch's caching pinned-memory allocator reuses
    the blocks), or else an anonymous memory mapping of its own.

    Why a mapping rather than ``torch.empty``: glibc's malloc serves blocks under its dynamic mmap
    threshold (which rises up to 32 MiB after the first large block is freed) from its heap and keeps
    freed ones there, so with one new batch per step the resident set drifts by a few batches with the
    heap's layout (±40 MiB between runs at 64³, batch 8). A mapping is unmapped when the tensor dies.
    """
    if pin_memory:
        return torch.empty(shape, dtype=torch.float32, pin_memory=True)
    nbytes = math.prod(shape) * _DTYPE.itemsize
    if not nbytes:
        return torch.empty(shape, dtype=torch.float32)
    return torch.frombuffer(mmap.mmap(-1, nbytes), dtype=torch.float32).view(shape)


__all__ = ["TrainingSet", "check_volume", "prepare_volume", "condition_item", "available_memory", "CACHE_FORMAT"]
