"""A sample set written as DICOM: one CT series per synthetic volume and, for nodule-conditioned samples, the
labels they were drawn with as a DICOM Segmentation and as an LIDC annotation file.

Per sample ``{i:04d}.nii.gz`` (float32 in [0, 1] on the sample's affine) the output folder gets::

    SYNTH-{i:04d}/CT/{n:04d}.dcm    CT Image Storage, one file per slice, n = InstanceNumber = slice order
    SYNTH-{i:04d}/CT/{i:04d}.xml    LIDC annotation file of the labels (conditioned samples)
    SYNTH-{i:04d}/SEG/seg.dcm       DICOM Segmentation of the labels, referencing the CT series (conditioned
                                    samples with at least one nodule)
    export.json                     the UID root, the rescale, the provenance (``sampling``) and one entry per volume

Pixels: HU through the checkpoint's window (:func:`ctdiff.ingest.intensity.to_hu`, the same int16 HU as
``samples/{set}/hu/``), stored as int16 ``HU - RESCALE_INTERCEPT`` with RescaleSlope 1 and RescaleIntercept
:data:`RESCALE_INTERCEPT`, so every reader gets the int16 HU back exactly (within half a HU of the float
sample). Geometry: the array is reordered (axes permuted and flipped, never resampled) so that columns run
toward patient Left, rows toward Posterior and slices toward Superior, the usual axial stack; positions,
orientation and spacing follow from the sample's affine (RAS mm, converted to DICOM's LPS). An affine whose
axes are not orthogonal cannot be written as a DICOM stack and is refused.

Identity: none. PatientID ``SYNTH-{i:04d}``, PatientName ``SYNTHETIC^{i:04d}``, PatientIdentityRemoved YES;
birth date, sex, referring physician, accession number and every Type 2 date and time are empty. The
Segmentation's Content Date and Time must hold a value and get :data:`PLACEHOLDER_DATE` and 000000 (the date
LIDC-IDRI's own de-identified files carry); instance creation dates are not written. ImageType is
``DERIVED\\SECONDARY\\AXIAL``; the series description (64 characters at most: a 12-digit prefix of the
checksum) and ImageComments and DerivationDescription (in full) say that the volume is synthetic and name
the checkpoint's sha256, the sampler and the seed.

UIDs: under :data:`UID_ROOT`, a ``2.25`` root (ITU-T X.667: the decimal form of a UUID drawn once for
ctdiff, so no registered organisation root is needed). Each UID appends a decimal hash of the sample's
bytes, the provenance and the object's role, so exporting the same samples again gives the same UIDs and
any other volume other UIDs; none is ever a UID of real data.

Labels: the sample's labels are numbered 1, 2, ... in label order (the nodule numbers ctdiff's ingestion
gives the annotation file back, :mod:`ctdiff.export.lidc_xml`); the Segmentation's segment ``n`` is nodule
``n``, its label naming the sample's own label value, and ``export.json`` keeps the map.

The folder is written as a temporary sibling and renamed into place when complete.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pydicom.valuerep import format_number_as_ds as _ds  # a float as a DICOM decimal string of <= 16 chars

from ctdiff import __version__
from ctdiff.export.lidc_xml import annotation_xml
from ctdiff.files import load_volume
from ctdiff.ingest.intensity import to_hu
from ctdiff.sampling.conditions import drawn_masks

#: The root of every UID the export writes: ``2.25.`` and the integer of UUID dd1f3d51-af53-4908-84ab-7a9c7580590b.
UID_ROOT = "2.25.293921591969808536427183484336093550859"
#: Stored value = HU - RESCALE_INTERCEPT, RescaleSlope 1: int16 holds -1000..400 HU with room to spare.
RESCALE_INTERCEPT, RESCALE_SLOPE = -1024, 1
#: The date written where DICOM requires one (the Segmentation's Content Date): LIDC-IDRI's de-identified date.
PLACEHOLDER_DATE = "20000101"
#: Columns toward patient Left, rows toward Posterior, slices toward Superior (NIfTI axis codes).
STACK_AXES = ("L", "P", "S")
MANIFEST = "export.json"

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

log = logging.getLogger(__name__)


def mint_uid(*parts) -> str:
    """A UID under :data:`UID_ROOT` hashed from ``parts``: the root, a dot and as many decimal digits as fit
    64 characters (first digit never 0)."""
    digits = 64 - len(UID_ROOT) - 1
    value = int(hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest(), 16)
    return f"{UID_ROOT}.{10 ** (digits - 1) + value % (9 * 10 ** (digits - 1))}"


def to_stack(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(array reordered to [columns, rows, slices], index_to_lps [3, 4])``: the axes of ``array`` (NIfTI
    ``affine``, RAS mm) permuted and flipped to :data:`STACK_AXES`, and the map from (column, row, slice) to
    DICOM patient coordinates (LPS mm). ``ValueError`` for an affine whose axes are not orthogonal."""
    affine = np.asarray(affine, dtype=np.float64)
    axes = affine[:3, :3]
    gram = axes.T @ axes
    if np.abs(gram - np.diag(np.diag(gram))).max() > 1e-6 * np.diag(gram).max():
        raise ValueError(f"the affine's axes are not orthogonal, so it is no DICOM stack:\n{affine}")
    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine),
                                                nib.orientations.axcodes2ornt(STACK_AXES))
    stacked = nib.orientations.apply_orientation(array, transform)
    reordered = affine @ nib.orientations.inv_ornt_aff(transform, array.shape)
    return stacked, (_LPS @ reordered)[:3]


def _provenance_text(prov: dict) -> tuple[str, str]:
    """(SeriesDescription of <= 64 characters, the full sentence for ImageComments and DerivationDescription)."""
    sha, sampler, seed = prov["checkpoint_sha256"], prov["sampler"], prov["sample_seed"]
    guidance = f", guidance {prov['guidance']:g}" if prov.get("guidance", 1.0) != 1.0 else ""
    step = f" (training step {prov['checkpoint_step']})" if prov.get("checkpoint_step") is not None else ""
    full = (f"SYNTHETIC CT volume, not a patient: drawn by ctdiff {__version__} from checkpoint sha256 {sha}{step} "
            f"with sampler {sampler}{guidance}, seed {seed}")
    return f"SYNTHETIC {sampler} seed {seed} sha256 {sha[:12]}"[:64], full


def _header(patient: str, number: str, study_uid: str, series_uid: str, frame_uid: str, description: str,
            comment: str) -> Dataset:
    """Every CT image's shared attributes (instance-level ones are set per slice)."""
    ds = Dataset()
    ds.file_meta, ds.preamble = FileMetaDataset(), b"\0" * 128
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.StudyDate = ds.StudyTime = ds.AccessionNumber = ds.ReferringPhysicianName = ""
    ds.Modality, ds.Manufacturer = "CT", "ctdiff"
    ds.StudyDescription, ds.SeriesDescription = "SYNTHETIC CHEST CT", description
    ds.ManufacturerModelName, ds.SoftwareVersions = "diffusion model (synthetic)", __version__
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = f"SYNTHETIC^{number}", patient, "", ""
    ds.PatientIdentityRemoved, ds.DeidentificationMethod = "YES", "synthetic volume: no patient, no real dates"
    ds.BodyPartExamined, ds.KVP = "CHEST", ""
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
    ds.StudyID, ds.SeriesNumber, ds.AcquisitionNumber = "1", 1, ""
    ds.PositionReferenceIndicator, ds.PatientPosition = "", "HFS"
    ds.DerivationDescription, ds.ImageComments = comment[:1024], comment
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = str(RESCALE_INTERCEPT), str(RESCALE_SLOPE), "HU"
    return ds


def write_ct(folder: Path, hu: np.ndarray, index_to_lps: np.ndarray, ds: Dataset, uid_key: list,
             window: tuple[float, float]) -> list[Dataset]:
    """Write the int16 HU stack ``hu`` ``[columns, rows, slices]`` as ``folder/{n:04d}.dcm`` (n = slice + 1),
    ``ds`` the shared header; returns the datasets written (with their pixel data)."""
    folder.mkdir(parents=True, exist_ok=True)
    columns, rows, n_slices = hu.shape
    row_dir, col_dir = index_to_lps[:, 0], index_to_lps[:, 1]
    dx, dy, dz = (float(np.linalg.norm(index_to_lps[:, a])) for a in range(3))
    ds.Rows, ds.Columns = rows, columns
    ds.ImageOrientationPatient = [_ds(float(v)) for v in (*row_dir / dx, *col_dir / dy)]
    ds.PixelSpacing, ds.SliceThickness, ds.SpacingBetweenSlices = [_ds(dy), _ds(dx)], _ds(dz), _ds(dz)
    ds.WindowCenter, ds.WindowWidth = _ds((window[0] + window[1]) / 2), _ds(window[1] - window[0])
    stored = (hu.astype(np.int32) - RESCALE_INTERCEPT).astype("<i2")
    out = []
    for k in range(n_slices):
        position = index_to_lps @ np.array([0.0, 0.0, k, 1.0])
        image = copy.deepcopy(ds)                       # a shallow copy would share the instance attributes
        image.InstanceNumber = k + 1
        image.SOPInstanceUID = image.file_meta.MediaStorageSOPInstanceUID = mint_uid(*uid_key, "ct", k)
        image.ImagePositionPatient = [_ds(float(v)) for v in position]
        image.SliceLocation = _ds(float(position[2]))
        image.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        pydicom.dcmwrite(folder / f"{k + 1:04d}.dcm", image, enforce_file_format=True)
        out.append(image)
    return out


def write_seg(path: Path, ct: list[Dataset], segments: np.ndarray, numbers: dict[int, int], uid_key: list) -> None:
    """The DICOM Segmentation (binary, one segment per nodule) of ``segments`` (``[columns, rows, slices]``
    nodule numbers, 0 outside) on the slices ``ct``, written with highdicom; ``numbers`` maps each sample label
    to its nodule number."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(name="ctdiff nodule-conditioned generation",
                                                   family=codes.cid7162.ArtificialIntelligence,
                                                   version=__version__)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=number, segment_label=f"nodule {number} (sample label {label})",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Nodule, algorithm_type="AUTOMATIC",
        algorithm_identification=algorithm, tracking_uid=mint_uid(*uid_key, "segment", number),
        tracking_id=f"nodule {number}") for label, number in sorted(numbers.items(), key=lambda t: t[1])]
    seg = hd.seg.Segmentation(
        source_images=ct, pixel_array=np.ascontiguousarray(segments.transpose(2, 1, 0)),
        segmentation_type="BINARY", segment_descriptions=descriptions,
        series_instance_uid=mint_uid(*uid_key, "seg series"), series_number=2,
        sop_instance_uid=mint_uid(*uid_key, "seg"), instance_number=1, manufacturer="ctdiff",
        manufacturer_model_name="diffusion model (synthetic)", software_versions=__version__,
        device_serial_number="none", content_label="NODULES",
        content_description="the nodule labels the synthetic volume was drawn with",
        series_description="SYNTHETIC nodule labels")
    for keyword in ("InstanceCreationDate", "InstanceCreationTime"):       # highdicom writes the clock's
        if keyword in seg:
            delattr(seg, keyword)
    for item in seg.get("ContributingEquipmentSequence", []):               # highdicom names itself, with the clock
        if "ContributionDateTime" in item:
            del item.ContributionDateTime
    seg.ContentDate, seg.ContentTime = PLACEHOLDER_DATE, "000000"
    seg.PatientIdentityRemoved, seg.DeidentificationMethod = "YES", ct[0].DeidentificationMethod
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path, enforce_file_format=True)


def export_volume(out: Path, index: int, volume: np.ndarray, affine: np.ndarray, provenance: dict,
                  hu_window: tuple[float, float], labels: np.ndarray | None = None) -> dict:
    """Write sample ``index`` (``volume`` in [0, 1] on ``affine``, ``labels`` its nodule labels or None) under
    ``out/SYNTH-{index:04d}/``; returns its manifest entry."""
    patient, number = f"SYNTH-{index:04d}", f"{index:04d}"
    hu = to_hu(np.asarray(volume), hu_window)
    stack, index_to_lps = to_stack(hu, affine)
    uid_key = [hashlib.sha256(np.ascontiguousarray(volume).tobytes()).hexdigest(),
               json.dumps(provenance, sort_keys=True), index]
    if labels is not None:
        uid_key.append(hashlib.sha256(np.ascontiguousarray(labels).tobytes()).hexdigest())
    study, series = mint_uid(*uid_key, "study"), mint_uid(*uid_key, "ct series")
    description, comment = _provenance_text(provenance)
    ds = _header(patient, number, study, series, mint_uid(*uid_key, "frame"), description, comment)
    folder = Path(out) / patient
    ct = write_ct(folder / "CT", stack, index_to_lps, ds, uid_key, hu_window)
    entry = {"index": index, "patient_id": patient, "folder": patient, "study_uid": study, "series_uid": series,
             "slices": len(ct), "shape": list(stack.shape), "nodules": None, "annotation": None, "seg": None}
    if labels is None:
        return entry
    label_stack, _ = to_stack(np.asarray(labels).astype(np.int64), affine)
    if label_stack.shape != stack.shape:
        raise ValueError(f"sample {index}: labels of shape {np.shape(labels)} for a volume of {np.shape(volume)}")
    z = np.array([float(d.ImagePositionPatient[2]) for d in ct])
    xml, numbers, outlines = annotation_xml(label_stack, z, [str(d.SOPInstanceUID) for d in ct], series, study)
    (folder / "CT" / f"{number}.xml").write_bytes(xml)
    entry.update(nodules={str(label): n for label, n in numbers.items()}, annotation=f"{patient}/CT/{number}.xml",
                 outlines={"traced": outlines.traced, "runs": outlines.runs})
    if numbers:
        segments = np.zeros(label_stack.shape, np.uint8)
        for label, n in numbers.items():
            segments[label_stack == label] = n
        write_seg(folder / "SEG" / "seg.dcm", ct, segments, numbers, uid_key)
        entry["seg"] = f"{patient}/SEG/seg.dcm"
    return entry


def export_dicom(samples: Sequence[Path], out: Path, provenance: dict, hu_window: tuple[float, float], *,
                 masks: Sequence[Path] | None = None) -> dict:
    """Write the sample set ``samples`` (``masks[i]``: the nodule labels of sample ``i``, or None for an
    unconditioned set) as DICOM in the folder ``out`` (module docstring), atomically: a temporary sibling,
    renamed when complete (an older ``out`` is replaced). ``provenance``: at least ``checkpoint_sha256``,
    ``sampler`` (the setting's tag, e.g. ``ddim-50``) and ``sample_seed`` (:func:`set_provenance`). Returns the
    manifest written to ``out/export.json``."""
    if masks is not None and len(masks) != len(samples):
        raise ValueError(f"{len(masks)} nodule masks for {len(samples)} samples")
    missing = [k for k in ("checkpoint_sha256", "sampler", "sample_seed") if k not in provenance]
    if missing:
        raise ValueError(f"provenance lacks {', '.join(missing)}")
    hu_window = (float(hu_window[0]), float(hu_window[1]))        # a config's YAML may give whole numbers
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        volumes = []
        for i, path in enumerate(samples):
            volume, affine = load_volume(Path(path))
            labels = None
            if masks is not None:
                labels, mask_affine = load_volume(Path(masks[i]))
                if not np.allclose(mask_affine, affine, atol=1e-4):
                    raise ValueError(f"nodule mask {masks[i]} is not on the affine of its sample {path}")
                labels = np.rint(labels).astype(np.int64)
            entry = export_volume(tmp, i, volume, affine, provenance, hu_window, labels)
            volumes.append({"sample": Path(path).name, **entry})
        manifest = {"uid_root": UID_ROOT, "rescale_slope": RESCALE_SLOPE, "rescale_intercept": RESCALE_INTERCEPT,
                    "hu_window": list(hu_window), "sampling": provenance, "volumes": volumes}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    traced = sum(v.get("outlines", {}).get("traced", 0) for v in volumes)
    runs = sum(v.get("outlines", {}).get("runs", 0) for v in volumes)
    log.info("%d volume(s) written as DICOM to %s: %d CT series, %d segmentation(s); nodule outlines on %d "
             "label-slice(s), %d of them as per-row runs", len(volumes), out, len(volumes),
             sum(v["seg"] is not None for v in volumes), traced + runs, runs)
    return manifest


def set_provenance(checkpoint: Path, *, sampler: str, steps: int | None, eta: float, seed: int,
               guidance: float = 1.0) -> dict:
    """What drew a set (:func:`ctdiff.metrics.variant_table.sampling_provenance`) with ``sampler`` its tag
    (``ddim-50``, ``ddim-50-eta0.5``)."""
    from ctdiff.metrics.variant_table import sampling_provenance
    from ctdiff.options import tag

    prov = sampling_provenance(Path(checkpoint), sampler=sampler, steps=steps, eta=eta, seed=seed,
                               guidance=guidance)
    prov["sampler"] = tag({"sampler": prov["sampler"], "steps": prov["sampler_steps"], "eta": prov["eta"]})
    prov.pop("checkpoint", None)              # a path on the exporting machine: not part of the object
    return prov


def export_sample_set(checkpoint: Path, samples: Sequence[Path], out: Path, *, sampler: str, steps: int | None,
                      eta: float, seed: int, guidance: float = 1.0) -> dict:
    """Export a sample set drawn from ``checkpoint`` with the given sampler setting and seed: the HU window is
    the checkpoint's, and a nodule-conditioned checkpoint's samples take their labels from ``nodules/`` beside
    them (a missing one is refused)."""
    from ctdiff.training.checkpoint import checkpoint_config, read_checkpoint

    cfg = checkpoint_config(read_checkpoint(Path(checkpoint))["config"])
    masks = None
    if cfg.model.condition != "none":
        masks = drawn_masks(checkpoint, samples)
    prov = set_provenance(checkpoint, sampler=sampler, steps=steps, eta=eta, seed=seed, guidance=guidance)
    return export_dicom(samples, out, prov, tuple(cfg.data.hu_window), masks=masks)


__all__ = ["UID_ROOT", "RESCALE_INTERCEPT", "RESCALE_SLOPE", "PLACEHOLDER_DATE", "MANIFEST", "mint_uid", "to_stack",
           "write_ct", "write_seg", "export_volume", "export_dicom", "set_provenance", "export_sample_set"]
