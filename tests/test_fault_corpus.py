"""A generated corpus of faulty DICOM input, run through discover, convert and the cohort summary.

Every case is one patient of the phantom cohort (32x32 slices) that is then damaged, or given a distractor,
the way real downloads are. Each case states the decision and reason expected for its series (discovery)
and its item (conversion). Good patients must come out bit-identical whether or not faulty neighbours sit
beside them in the tree.

Cases already tested on CT_small series elsewhere (tests/test_convert.py, tests/test_discover.py) are
repeated here once at the level of a whole tree, where they meet the cohort bookkeeping.
"""

from __future__ import annotations

import copy
import csv
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from conftest import run_ingestion

from ctdiff.ingest.convert import VOLUME_NAME, convert_or_reject
from ctdiff.ingest.discover import discover
from ctdiff.phantom import write_patient

MATRIX = 32


def phantom(root: Path, number: int) -> Path:
    """Write patient ``FC-{number:04d}``; return the folder of its main CT series.

    The phantom adds a localizer to numbers 1, 4, 7, ... and a CR radiograph to 1, 5, 9, ...
    """
    pid = f"FC-{number:04d}"
    write_patient(root, pid, np.random.default_rng([7, number]), matrix=MATRIX)
    folders = {f.parent for f in (root / pid).glob("*/*/*.dcm")}
    return max(folders, key=lambda d: len(list(d.iterdir())))


def slices(folder: Path) -> list[Path]:
    """The DICOM files of a folder, in ascending position along z."""
    files = sorted(folder.glob("*.dcm"))
    return sorted(files, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))


def copy_series(src: Path, dst: Path, keep: slice, *, prefix: str = "") -> None:
    """Copy the files ``keep`` of series ``src`` (in z order) into ``dst`` as a new series."""
    dst.mkdir(parents=True, exist_ok=True)
    uid = generate_uid()
    for f in slices(src)[keep]:
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(dst / f"{prefix}{f.name}", enforce_file_format=True)


def radiograph(folder: Path, patient: str, modality: str) -> None:
    """One projection image (no position or orientation), as a CR or DX series beside the CT."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientID, ds.Modality = patient, modality
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    del ds.ImagePositionPatient, ds.ImageOrientationPatient
    folder.mkdir(parents=True)
    ds.save_as(folder / "0001.dcm", enforce_file_format=True)


def edit(files: list[Path], change) -> None:
    """Apply ``change(k, dataset)`` to each file (k = index in ``files``) and save it in place."""
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        change(k, ds)
        ds.save_as(f)


# --- good patients: distractors and harmless oddities; each must be converted ----------------------------

def good_distractors(root: Path) -> None:
    """Localizer (3 slices) and CR radiograph beside the CT (written by the phantom for patient 1)."""
    phantom(root, 1)


def good_dx_descending(root: Path) -> None:
    """A DX radiograph beside the CT; slices written in descending z order."""
    phantom(root, 2)
    radiograph(root / "FC-0002" / "dx" / "1", "FC-0002", "DX")


def good_non_dicom(root: Path) -> None:
    """A text note and an XML annotation inside the series folder."""
    main = phantom(root, 3)
    (main / "notes.txt").write_text("reader notes\n")
    (main / "069.xml").write_text("<LidcReadMessage/>")


def good_two_ct_series(root: Path) -> None:
    """A second, shorter CT series of the same patient in another study folder."""
    main = phantom(root, 6)
    copy_series(main, root / "FC-0006" / "second-study" / "s", slice(10, 60))


def good_two_series_one_folder(root: Path) -> None:
    """A second CT series written into the main series' folder."""
    main = phantom(root, 8)
    copy_series(main, main, slice(0, 40), prefix="b")


GOOD = {  # patient: (builder, {series kind: (decision, reason)})
    "FC-0001": (good_distractors, {"CT": ("chosen", ""), "localizer": ("rejected", "localizer"),
                                   "CR": ("rejected", "modality CR is not CT")}),
    "FC-0002": (good_dx_descending, {"CT": ("chosen", ""), "DX": ("rejected", "modality DX is not CT")}),
    "FC-0003": (good_non_dicom, {"CT": ("chosen", "")}),
    "FC-0006": (good_two_ct_series, {"CT": ("chosen", ""),
                                     "CT2": ("rejected", "smaller CT series of the same patient")}),
    "FC-0008": (good_two_series_one_folder, {"CT": ("chosen", ""),
                                             "CT2": ("rejected", "smaller CT series of the same patient")}),
}


# --- faulty patients: each must be rejected with its reason, and never stop the others -------------------

def corrupt(f: Path) -> None:
    """Overwrite a file with random bytes after the preamble and DICM marker."""
    size = f.stat().st_size
    f.write_bytes(f.read_bytes()[:132] + np.random.default_rng(0).bytes(size - 132))


def corrupt_file(root: Path) -> None:
    """A slice in the middle of the stack is garbage after its DICM marker."""
    corrupt(slices(phantom(root, 11))[40])


def corrupt_last_file(root: Path) -> None:
    """The top slice is garbage: without a check the volume would just be one slice shorter."""
    corrupt(slices(phantom(root, 27))[-1])


def truncated_pixels(root: Path) -> None:
    """One slice cut short inside its pixel data (an interrupted download)."""
    f = slices(phantom(root, 12))[40]
    f.write_bytes(f.read_bytes()[:-100])


def missing_slice(root: Path) -> None:
    f = slices(phantom(root, 15))[50]
    f.unlink()


def duplicate_position(root: Path) -> None:
    """A slice stored twice under two SOPInstanceUIDs."""
    f = slices(phantom(root, 18))[30]
    ds = pydicom.dcmread(f)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(f.with_name("dup.dcm"), enforce_file_format=True)


def stray_slice(root: Path) -> None:
    """A perfect stack and one more slice 38 mm beyond its top, as LIDC-IDRI-0514 holds."""
    top = slices(phantom(root, 30))[-1]
    ds = pydicom.dcmread(top)
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [x, y, z + 38.0]
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(top.with_name("stray.dcm"), enforce_file_format=True)


def gantry_tilt(root: Path) -> None:
    """Slice origins move in y by tan(15 deg) per mm of z while the image plane stays axial."""
    def tilt(k, ds):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, round(y + (z - z0) * math.tan(math.radians(15)), 4), z]

    files = slices(phantom(root, 20))
    z0 = float(pydicom.dcmread(files[0]).ImagePositionPatient[2])
    edit(files, tilt)


def localizer_only(root: Path) -> None:
    """The axial series is missing: only the 3-slice localizer is left (patient 4)."""
    shutil.rmtree(phantom(root, 4))


def empty_folder(root: Path) -> None:
    (root / "FC-0023" / "study" / "series").mkdir(parents=True)


def missing_rescale(root: Path) -> None:
    """RescaleSlope and RescaleIntercept stripped from every file (as some anonymisers do)."""
    def strip(k, ds):
        del ds.RescaleSlope, ds.RescaleIntercept
    edit(sorted(phantom(root, 24).glob("*.dcm")), strip)


FAULTY = {  # patient: (builder, discovery (decision, reason) of its main series or None, convert reason)
    "FC-0011": (corrupt_file, ("rejected", "unreadable DICOM file(s) in the series folder: 1"), None),
    "FC-0027": (corrupt_last_file, ("rejected", "unreadable DICOM file(s) in the series folder: 1"), None),
    "FC-0012": (truncated_pixels, ("chosen", ""), "truncated pixel data"),
    "FC-0015": (missing_slice, ("chosen", ""), "missing slice(s)"),
    "FC-0018": (duplicate_position, ("chosen", ""), "duplicate slice position(s)"),
    "FC-0030": (stray_slice, ("chosen", ""), "stray slice(s)"),  # converted with recover_stacks, see below
    "FC-0020": (gantry_tilt, ("chosen", ""), "gantry tilt or sheared stack"),
    "FC-0004": (localizer_only, ("rejected", "localizer"), None),
    "FC-0023": (empty_folder, None, None),
    "FC-0024": (missing_rescale, ("chosen", ""), "missing RescaleSlope"),
}


def run(root: Path, out: Path) -> dict[str, dict]:
    return run_ingestion(root, out, size=16, spacing_mm=24.0)[0]


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two runs: the good patients alone, and the good patients with every faulty one beside them."""
    base = tmp_path_factory.mktemp("corpus")
    clean, full = base / "clean" / "dicom", base / "full" / "dicom"
    for build, _ in GOOD.values():
        build(clean)
    shutil.copytree(clean, full)
    for build, *_ in FAULTY.values():
        build(full)
    return {"clean": (clean, run(clean, base / "clean")), "full": (full, run(full, base / "full")),
            "base": base}


def series_kinds(root: Path, inventory: list[dict[str, str]]) -> dict[tuple[str, str], tuple[str, str]]:
    """{(patient, kind): (decision, reason)}; kind is the modality, 'localizer', or 'CT2' for a second CT."""
    out = {}
    for row in sorted(inventory, key=lambda r: -int(r["n_files"])):
        kind = "localizer" if "LOCALIZER" in row["image_type"] else row["modality"]
        if (row["patient"], kind) in out:
            kind = "CT2"
        out[row["patient"], kind] = (row["decision"], row["reason"])
    return out


def test_every_series_gets_its_expected_discovery_decision(corpus):
    root, _ = corpus["full"]
    found = series_kinds(root, read_tsv(corpus["base"] / "full" / "qc" / "inventory.tsv"))
    expected = {(p, kind): d for p, (_, kinds) in GOOD.items() for kind, d in kinds.items()}
    for patient, (_, discovered, _) in FAULTY.items():
        if discovered is not None:
            kind = "localizer" if discovered[1] == "localizer" else "CT"  # the one series left in view
            expected[patient, kind] = discovered
    assert found == expected


def test_every_item_gets_its_expected_convert_decision(corpus):
    _, rows = corpus["full"]
    expected = {p: ("converted", None) for p in GOOD}
    expected.update({p: ("rejected", reason) for p, (_, found, reason) in FAULTY.items() if reason})
    assert set(rows) == set(expected)
    for item, (decision, reason) in expected.items():
        row = rows[item]
        assert row["decision"] == decision, (item, row["reason"])
        if reason:
            assert row["reason"].startswith(reason + ":"), (item, row["reason"])
            assert list((corpus["base"] / "full" / "nifti" / item).iterdir()) == []
        else:
            assert row["reason"] == ""
            # GE padding (-2000 stored, -3024 HU) outside the reconstruction circle is clamped.
            assert row["hu_min"] == -1024 and row["n_padding_clamped"] > 0


def test_summary_counts_decisions_and_reasons(corpus):
    summary = {(r["stage"], r["decision"], r["reason"]): int(r["count"])
               for r in read_tsv(corpus["base"] / "full" / "qc" / "summary.tsv")}
    assert summary["convert", "converted", ""] == len(GOOD)
    assert summary["convert", "rejected", "missing slice(s)"] == 1
    assert summary["discover", "rejected", "unreadable DICOM file(s) in the series folder"] == 2
    assert summary["convert", "rejected", "truncated pixel data"] == 1
    assert summary["convert", "rejected", "stray slice(s)"] == 1
    assert summary["discover", "rejected", "localizer"] == 2
    assert summary["discover", "rejected", "smaller CT series of the same patient"] == 2
    assert summary["cohort", "usable", "items"] == summary["cohort", "usable", "patients"] == len(GOOD)
    cohort = read_tsv(corpus["base"] / "full" / "qc" / "cohort.tsv")
    assert [r["item"] for r in cohort] == sorted(p for p in list(GOOD) + list(FAULTY)
                                                  if p in GOOD or FAULTY[p][2])


def test_good_patients_are_bit_identical_with_or_without_faulty_neighbours(corpus):
    base = corpus["base"]
    for item in GOOD:
        for rel in (f"nifti/{item}/{VOLUME_NAME}", f"preprocessed/{item}.nii.gz", f"qc/convert/{item}.tsv"):
            assert (base / "clean" / rel).read_bytes() == (base / "full" / rel).read_bytes(), rel


def test_descending_slices_are_sorted_by_position(corpus):
    """FC-0002 is written head first: the volume must still run toward Superior along its third axis."""
    folders = {f.parent for f in (corpus["clean"][0] / "FC-0002").glob("*/*/*.dcm")}
    files = sorted(max(folders, key=lambda d: len(list(d.iterdir()))).glob("*.dcm"))  # file-name order
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    assert z == sorted(z, reverse=True)
    img = nib.load(corpus["base"] / "clean" / "nifti" / "FC-0002" / VOLUME_NAME)
    assert nib.aff2axcodes(img.affine)[2] == "S"
    assert np.allclose(img.header.get_zooms()[2], z[0] - z[1], atol=1e-3)


def test_stray_slice_is_dropped_with_recover_stacks(corpus, tmp_path):
    """With recover_stacks, FC-0030 converts to the very volume of its stack without the stray slice."""
    root, rows = corpus["full"]
    assert rows["FC-0030"]["reason"].startswith("stray slice(s): 1 slice 38.0 mm beyond the last slice of a "
                                                "uniform ")
    series = corpus["base"] / "full" / "discover" / "series.json"
    row = convert_or_reject(root, series, "FC-0030", tmp_path / "recovered", tmp_path / "recovered.tsv",
                            recover_stacks=True)
    assert row["decision"] == "converted", row["reason"]
    assert row["reason"] == "recovered: dropped 1 stray " + rows["FC-0030"]["reason"].split(": 1 ", 1)[1]

    clean = tmp_path / "clean"
    phantom(clean, 30)
    discover(clean, tmp_path / "inventory.tsv", tmp_path / "series.json")
    convert_or_reject(clean, tmp_path / "series.json", "FC-0030", tmp_path / "stack", tmp_path / "stack.tsv")
    assert (tmp_path / "recovered" / VOLUME_NAME).read_bytes() == (tmp_path / "stack" / VOLUME_NAME).read_bytes()
