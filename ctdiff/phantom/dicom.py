"""The phantom cohort written as LIDC-IDRI-like DICOM series: acquisition settings, UIDs, headers, files.

Each patient comes from one ``np.random.Generator``: first the acquisition (body size, field of view, slice
spacing, scan length, z position, slice order, UID key), then the anatomy
(:func:`ctdiff.phantom.scan.phantom_volume`). Stored values follow a GE scanner:
``HU = raw - 1024``, raw -2000 (PixelPaddingValue, -3024 HU) outside the circular reconstruction field of
view. Every UID is hashed from the patient, its random key and the object's role, so equal seeds give
byte-identical files.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds as _ds  # a float as a DICOM decimal string of <= 16 chars

from ctdiff.ingest.annotations.lidc_xml import NAMESPACE, lidc_xml
from ctdiff.phantom.nodules import DIAMETER_MM, reader_sessions
from ctdiff.phantom.scan import PADDING_RAW, RESCALE_INTERCEPT, phantom_scan


@dataclass(frozen=True)
class _Acquisition:
    """Scanner settings drawn per patient: shape [Z, Y, X], spacing (dz, dy, dx) mm, first slice z0 mm."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    z0: float
    thickness: float
    body_scale: float
    descending: bool
    uid_key: int


def _draw_acquisition(rng: np.random.Generator, matrix: int) -> _Acquisition:
    """Body size, field of view (320-460 mm, larger for larger patients), slice spacing and scan length;
    one patient in three has SliceThickness != slice spacing (overlapping reconstruction), as in LIDC."""
    body_scale = rng.uniform(0.85, 1.15)
    fov = float(np.clip(380 * body_scale + rng.normal(0, 20), 320, 460))
    dz = round(rng.uniform(1.25, 2.5), 3)
    n = int(round(rng.uniform(260, 360) / dz)) + 1
    thickness = dz if rng.random() < 2 / 3 else round(1.6 * dz, 3)
    return _Acquisition((n, matrix, matrix), (dz, round(fov / matrix, 6), round(fov / matrix, 6)),
                        round(rng.uniform(-420, -80), 2), thickness, body_scale, bool(rng.random() < 0.5),
                        int(rng.integers(2 ** 62)))


def _uid(patient_id: str, key: int, *role) -> str:
    """Deterministic UID under pydicom's root, hashed from the patient, its random key and the role."""
    return generate_uid(entropy_srcs=[patient_id, str(key), *map(str, role)])


def _dataset(patient_id: str, study_uid: str, series_uid: str, series_number: int, modality: str,
             description: str) -> Dataset:
    """Header shared by every image of one series (instance-level tags are filled in per image)."""
    ds = Dataset()
    ds.file_meta, ds.preamble = FileMetaDataset(), b"\0" * 128
    ds.file_meta.TransferSyntaxUID, ds.SpecificCharacterSet = ExplicitVRLittleEndian, "ISO_IR 100"
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient_id, patient_id.replace("-", "^"), "", ""
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyDate, ds.SeriesDate, ds.StudyTime, ds.SeriesTime = "20000101", "20000101", "000000", "000000"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
    ds.SeriesNumber, ds.Modality, ds.SeriesDescription = series_number, modality, description
    ds.Manufacturer, ds.ManufacturerModelName = "ctdiff phantom", "synthetic"
    ds.BodyPartExamined, ds.KVP, ds.SamplesPerPixel, ds.PhotometricInterpretation = "CHEST", "120", 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    return ds


def _write_ct_series(folder: Path, ds: Dataset, volume: np.ndarray, acq: _Acquisition, slices: list[int],
                     patient_id: str, image_type: list[str]) -> None:
    """Write ``volume[k]`` for k in ``slices`` as CT images; file names follow instance numbers."""
    folder.mkdir(parents=True, exist_ok=True)
    dz, dy, dx = acq.spacing
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.FrameOfReferenceUID = _uid(patient_id, acq.uid_key, "frame")
    ds.ImageType, ds.PatientPosition, ds.ImageOrientationPatient = image_type, "HFS", ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing, ds.SliceThickness = [_ds(dy), _ds(dx)], _ds(acq.thickness)
    ds.Rows, ds.Columns, ds.PixelRepresentation, ds.PixelPaddingValue = *volume.shape[1:], 1, PADDING_RAW
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = str(RESCALE_INTERCEPT), "1", "HU"
    ds.WindowCenter, ds.WindowWidth, ds.AcquisitionNumber = "-600", "1500", 1
    x0, y0 = -(volume.shape[2] - 1) / 2 * dx, -(volume.shape[1] - 1) / 2 * dy
    for number, k in enumerate(slices[::-1] if acq.descending else slices, start=1):
        z = round(acq.z0 + k * dz, 4)
        ds.InstanceNumber, uid = number, _uid(patient_id, acq.uid_key, ds.SeriesInstanceUID, k)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid
        ds.ImagePositionPatient, ds.SliceLocation = [_ds(x0), _ds(y0), _ds(z)], _ds(z)
        ds.PixelData = (volume[k] - RESCALE_INTERCEPT).astype("<i2").tobytes()   # padding -> PADDING_RAW
        pydicom.dcmwrite(folder / f"{number:04d}.dcm", ds, enforce_file_format=True)


def _write_radiograph(folder: Path, ds: Dataset, volume: np.ndarray, acq: _Acquisition, patient_id: str) -> None:
    """One AP chest radiograph (Modality CR, no ImagePositionPatient): attenuation summed along y; rows run
    head to feet, columns toward patient Left; 12-bit, brighter = more attenuation."""
    folder.mkdir(parents=True, exist_ok=True)
    excess = np.maximum(volume, -1000).sum(axis=1, dtype=np.int64) + 1000 * volume.shape[1]   # [Z, X], HU
    path = excess[::-1] * (0.02 / 1000 * acq.spacing[1])            # line integral of mu (water 0.02 / mm)
    pixels = np.clip(path / max(float(path.max()), 1e-6) * 4095, 0, 4095).astype("<u2")
    uid = _uid(patient_id, acq.uid_key, ds.SeriesInstanceUID, 0)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid
    ds.ImageType, ds.ViewPosition, ds.PatientOrientation = ["ORIGINAL", "PRIMARY"], "AP", ["L", "F"]
    ds.InstanceNumber, ds.ImagerPixelSpacing = 1, [_ds(acq.spacing[0]), _ds(acq.spacing[2])]
    ds.PixelSpacing, (ds.Rows, ds.Columns) = ds.ImagerPixelSpacing, pixels.shape
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.PixelData = 12, 11, 0, pixels.tobytes()
    pydicom.dcmwrite(folder / "0001.dcm", ds, enforce_file_format=True)


def _patient_number(patient_id: str) -> int:
    """Trailing number of an ID ('PHANTOM-0005' -> 5), else a stable hash; decides the distractor series."""
    match = re.search(r"(\d+)$", patient_id)
    return int(match.group(1)) if match else zlib.crc32(patient_id.encode())


def write_patient(root: Path, patient_id: str, rng: np.random.Generator, *, matrix: int = 512,
                  n_slices: int | None = None, nodules: bool = True,
                  nodule_mm: tuple[float, float] = DIAMETER_MM) -> None:
    """Write one patient as ``root/<PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/<NNNN>.dcm``.

    The main axial CT series (matrix x matrix pixels, ~105-290 slices) is always the series with most images.
    Distractors, as in LIDC-IDRI: patients numbered 1, 4, 7, ... also get a 3-image CT localizer series
    (ImageType LOCALIZER) in the same study; patients numbered 1, 5, 9, ... get a one-image CR radiograph
    in a second study. Slices are written in one z order, ascending or descending per patient.
    ``n_slices`` fixes the number of axial slices (e.g. for a benchmark) instead of drawing it; every other
    setting is drawn as usual. With ``nodules`` the scan holds nodules (:mod:`ctdiff.phantom.nodules`,
    outlined ones ``nodule_mm`` across) and its folder an LIDC annotation XML of four simulated readers
    (``{number:03d}.xml``); a radiograph's folder holds a radiograph reading's XML (root ``IdriReadMessage``),
    as in LIDC-IDRI.
    """
    if matrix < 16:
        raise ValueError(f"matrix must be >= 16 pixels, got {matrix}")
    if n_slices is not None and n_slices < 4:
        raise ValueError(f"n_slices must be >= 4 or None, got {n_slices}")
    acq = _draw_acquisition(rng, matrix)
    if n_slices is not None:
        acq = replace(acq, shape=(int(n_slices), matrix, matrix))
    volume, drawn, reader_rng = phantom_scan(rng, acq.shape, acq.spacing, body_scale=acq.body_scale,
                                             nodules=nodules, nodule_mm=nodule_mm)
    number, key, folder = _patient_number(patient_id), acq.uid_key, Path(root) / patient_id
    study, main = _uid(patient_id, key, "study"), _uid(patient_id, key, "series", "ct")
    ds = _dataset(patient_id, study, main, 2, "CT", "CHEST CT (phantom)")
    _write_ct_series(folder / study / main, ds, volume, acq, list(range(acq.shape[0])), patient_id,
                     ["ORIGINAL", "PRIMARY", "AXIAL"])
    if nodules:
        sessions = reader_sessions(reader_rng, drawn, pixel_mm=(acq.spacing[2], acq.spacing[1]),
                                   matrix=acq.shape[1:], slice_z=np.arange(acq.shape[0]) * acq.spacing[0],
                                   z0=acq.z0, sop_uid=lambda k: _uid(patient_id, key, main, k))
        (folder / study / main / f"{number % 1000:03d}.xml").write_bytes(lidc_xml(main, study, sessions))
    if (number - 1) % 3 == 0:
        scout, n = _uid(patient_id, key, "series", "localizer"), acq.shape[0]
        _write_ct_series(folder / study / scout, _dataset(patient_id, study, scout, 1, "CT", "LOCALIZER"), volume,
                         acq, [n // 4, n // 2, 3 * n // 4], patient_id, ["ORIGINAL", "PRIMARY", "LOCALIZER"])
    if (number - 1) % 4 == 0:
        cr_study, cr_series = _uid(patient_id, key, "study", "cr"), _uid(patient_id, key, "series", "cr")
        ds = _dataset(patient_id, cr_study, cr_series, 1, "CR", "CHEST AP")
        _write_radiograph(folder / cr_study / cr_series, ds, volume, acq, patient_id)
        if nodules:
            (folder / cr_study / cr_series / f"{number % 1000:03d}.xml").write_text(
                f'<?xml version="1.0" encoding="UTF-8"?>\n<IdriReadMessage xmlns="{NAMESPACE}">\n'
                f"  <ResponseHeader><StudyInstanceUID>{cr_study}</StudyInstanceUID></ResponseHeader>\n"
                "  <CXRreadingSession><servicingRadiologistID>reader-1</servicingRadiologistID></CXRreadingSession>\n"
                "</IdriReadMessage>\n", encoding="utf-8")


def write_cohort(root: Path, n_patients: int, seed: int, *, matrix: int = 512, nodules: bool = True,
                 nodule_mm: tuple[float, float] = DIAMETER_MM) -> list[str]:
    """Write n_patients under root, return the sorted list of patient IDs (e.g. 'PHANTOM-0001').

    Patient i (0-based, ID number i + 1) is drawn from ``np.random.default_rng([seed, i])``, so it is the
    same whatever ``n_patients`` is.
    """
    if n_patients < 1:
        raise ValueError(f"n_patients must be >= 1, got {n_patients}")
    ids = [f"PHANTOM-{i + 1:04d}" for i in range(n_patients)]
    for i, patient_id in enumerate(ids):
        write_patient(Path(root), patient_id, np.random.default_rng([seed, i]), matrix=matrix, nodules=nodules,
                      nodule_mm=nodule_mm)
    return sorted(ids)
