"""Tests for ctdiff.files: save_volume's ISA-L .nii.gz holds exactly what nibabel's own writer stores; write_tsv's
bytes, quoting and atomicity."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from ctdiff.files import save_volume, write_tsv

AFFINE = np.array([[-0.7, 0, 0, 90.0], [0, 0.7, 0, -120.0], [0, 0, 2.5, -40.0], [0, 0, 0, 1]])


def nibabel_reference(path, array: np.ndarray) -> bytes:
    """The uncompressed NIfTI bytes nibabel's own gzip writer stores for ``array`` (qform = sform, mm)."""
    img = nib.Nifti1Image(array, AFFINE)
    img.set_qform(AFFINE, code=1)
    img.set_sform(AFFINE, code=1)
    img.header.set_xyzt_units("mm")
    img.set_data_dtype(array.dtype)
    nib.save(img, path)
    return gzip.decompress(path.read_bytes())


@pytest.mark.parametrize("layout", ["C", "F", "flipped-view"])
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_gzip_volume_holds_nibabels_bytes(tmp_path, layout, dtype):
    values = np.random.default_rng(0).normal(0, 300, (23, 17, 9)).astype(dtype)
    array = {"C": np.ascontiguousarray(values), "F": np.asfortranarray(values),
             "flipped-view": np.flip(np.asfortranarray(values), axis=0)}[layout]
    save_volume(tmp_path / "ours.nii.gz", array, AFFINE)

    ours = (tmp_path / "ours.nii.gz").read_bytes()
    assert ours[:2] == b"\x1f\x8b" and ours[3] & 0x08 == 0  # gzip, no file name stored
    assert int.from_bytes(ours[4:8], "little") == 0  # mtime 0: equal volumes give equal bytes
    assert gzip.decompress(ours) == nibabel_reference(tmp_path / "ref.nii.gz", array)
    loaded = nib.load(tmp_path / "ours.nii.gz")
    assert np.array_equal(np.asarray(loaded.dataobj), array) and np.allclose(loaded.affine, AFFINE)

    save_volume(tmp_path / "again.nii.gz", array, AFFINE)
    assert (tmp_path / "again.nii.gz").read_bytes() == ours


def test_tsv_bytes_quoting_and_missing_fields(tmp_path):
    rows = [{"item": "LIDC-0001", "n": 3, "reason": ""},
            {"item": "LIDC-0002", "reason": 'bad\tseries "x"\nsecond line'},  # n missing -> empty
            {"n": 0.5, "item": "ümlaut"}]
    write_tsv(tmp_path / "t.tsv", iter(rows), ["item", "n", "reason"])
    assert (tmp_path / "t.tsv").read_bytes() == (
        "item\tn\treason\n"
        "LIDC-0001\t3\t\n"
        'LIDC-0002\t\t"bad\tseries ""x""\nsecond line"\n'
        "ümlaut\t0.5\t\n"
    ).encode("utf-8")
    write_tsv(tmp_path / "empty.tsv", [], ["a", "b"])
    assert (tmp_path / "empty.tsv").read_bytes() == b"a\tb\n"


def test_tsv_is_written_atomically(tmp_path):
    path = tmp_path / "sub" / "t.tsv"
    write_tsv(path, [{"a": 1}], ["a"])
    with pytest.raises(ValueError, match="not in fieldnames"):  # a key outside the columns fails mid-way
        write_tsv(path, [{"a": 2}, {"a": 3, "b": 4}], ["a"])
    assert path.read_bytes() == b"a\n1\n"  # the old table stays whole
    assert [p.name for p in path.parent.iterdir()] == ["t.tsv"]  # no temporary file left behind
