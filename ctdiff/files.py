"""Atomic file output and volume I/O shared by every stage.

An output is never visible half-written: each writer writes a temporary file in the destination folder
and renames it into place (``os.replace`` is atomic on one filesystem).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from isal import igzip

#: ISA-L compression level (0-3) of ``.nii.gz`` volumes, its default. On a 512 x 512 x 300 int16 CT
#: volume it takes 0.4 CPU s where zlib at nibabel's level 1 takes 1.7 s, for a file 0.3 % larger.
GZIP_LEVEL = 2


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` (same suffixes, so format detection works); rename on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    tmp = path.with_name(f".{stem}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Yield an empty temporary sibling folder of ``path``; on success it replaces ``path`` (a folder there
    before is removed first), on failure it is removed. Readers see the old folder or the whole new one,
    never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_tsv(path: Path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Write ``rows`` as a tab-separated table with a header of ``columns``, atomically: UTF-8, "\n" line
    ends, ``csv``'s minimal quoting (a field is quoted only if it holds a tab, a quote or a line break); a
    missing key leaves its field empty and a key not in ``columns`` is a ValueError."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_volume(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Save a volume as NIfTI, atomically: array axes = voxel axes i, j, k of ``affine`` (mm, scanner
    space, qform and sform both set), stored with the array's own dtype.

    NIfTI stores voxels with ``i`` fastest, i.e. in Fortran order: the array is made Fortran-contiguous
    (a no-op for the convert stage's volumes), so nibabel writes it without a transposing copy. A
    ``.nii.gz`` is compressed with ISA-L's igzip at :data:`GZIP_LEVEL`: a standard gzip stream that any
    NIfTI reader opens, holding the bytes nibabel's own writer would store; like nibabel's writer it
    records no file name and mtime 0, so equal volumes give equal files.
    """
    array = np.asfortranarray(array)
    img = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    img.header.set_xyzt_units("mm")
    img.set_data_dtype(array.dtype)
    with atomic_path(path) as tmp:
        if tmp.name.endswith(".gz"):
            with open(tmp, "wb") as raw, igzip.IGzipFile(filename="", mode="wb", fileobj=raw,
                                                         compresslevel=GZIP_LEVEL, mtime=0) as gz:
                img.to_file_map({"image": nib.FileHolder(fileobj=gz)})
        else:
            nib.save(img, tmp)


def load_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Load a NIfTI volume as (float32 array, 4×4 affine)."""
    img = nib.load(str(path))
    return np.asarray(img.dataobj, dtype=np.float32), img.affine
