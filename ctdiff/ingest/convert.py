"""Convert one chosen DICOM series to an int16 HU NIfTI volume with dicom2nifti.

The series (files listed by :func:`ctdiff.ingest.discover.discover`) is checked before conversion, because
dicom2nifti silently drops duplicate, non-imaging or localizer slices and would otherwise hide a broken
scan:

- every file belongs to the series and has ``ImagePositionPatient``, ``ImageOrientationPatient``,
  ``PixelSpacing``, ``RescaleSlope`` and ``RescaleIntercept`` (without the last two dicom2nifti
  "succeeds" with raw stored values instead of HU);
- all slices share one orientation and one in-plane grid;
- slices are sorted by their position along the slice normal ``n = row_cosine x column_cosine``
  (``ImagePositionPatient . n``, mm), never by file name or ``InstanceNumber``;
- the positions form one uniform stack, each position once (otherwise the reason names what they show:
  missing slices, overlapping sub-stacks, a shifted grid, stray slices or duplicates, see
  :mod:`ctdiff.ingest.zstack`), and the stack runs along ``n`` (no gantry tilt). With ``recover_stacks``
  a stack with a few far stray slices, or one stored several times over with identical pixel data, is
  converted from its one consistent stack and the QC row says so (``'recovered: ...'``); off by default,
  as in the paper's pipeline, such a series is rejected.

dicom2nifti (``dicom_array_to_nifti``) returns float64 HU; its affine takes the slice step from the
first and last ``ImagePositionPatient`` (never from ``SliceThickness``). It is called without an output
file and without its own reorientation (which would write the float64 volume to disk twice, 1.2 GB for a
512 x 512 x 300 scan); the image is reoriented in memory to dicom2nifti's LAS array order by nibabel
instead (:func:`_to_las`, the same array and affine, tested against dicom2nifti's ``reorient_image``). The
result is checked against the geometry computed here from the DICOM tags (slice count and the world
position of every corner voxel), padding below -1024 HU (e.g. GE's -2000 stored -> -3024 HU) is clamped
to -1024 HU, and the volume is saved as int16 HU with the dicom2nifti affine (NIfTI RAS+ world, mm) as
both qform and sform.

dicom2nifti is imported where it is called, not with this module: importing it loads scipy.ndimage for its
resampler (unused here), ~0.3 CPU s that the preprocess and cohort jobs, which import this module only for
:data:`VOLUME_NAME` and :data:`QC_COLUMNS`, would pay for nothing.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

from ctdiff.ingest.annotations.ingest import annotate
from ctdiff.ingest.annotations.rasterise import SliceGrid
from ctdiff.ingest.zstack import SPACING_ATOL_MM, diagnose, recover
from ctdiff.files import save_volume, write_tsv

#: HU below this is scanner padding, not tissue (air is -1000 HU); clamped before saving.
PADDING_FLOOR_HU = -1024

QC_COLUMNS = [
    "item",
    "patient",
    "series_uid",
    "n_slices",
    "spacing_x_mm",
    "spacing_y_mm",
    "spacing_z_mm",
    "shape",
    "hu_min",
    "hu_max",
    "n_padding_clamped",
    "decision",
    "reason",
]

#: File name of the converted volume inside the item's folder (see :func:`convert_or_reject`).
VOLUME_NAME = "hu.nii.gz"

#: dicom2nifti's settings are module globals shared by the whole process: these values are set for the
#: duration of one conversion and restored afterwards. Resampling stays off: a stack that would need it
#: is refused instead.
_D2N_SETTINGS = {
    "validate_slicecount": True,
    "validate_orientation": True,
    "validate_orthogonal": True,
    "validate_slice_increment": True,
    "validate_instance_number": False,
    "resample": False,
}

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@contextmanager
def _dicom2nifti_settings():
    """Apply :data:`_D2N_SETTINGS` to dicom2nifti's process-global settings, then restore them."""
    import dicom2nifti.settings as d2n_settings

    saved = {key: getattr(d2n_settings, key) for key in _D2N_SETTINGS}
    try:
        for key, value in _D2N_SETTINGS.items():
            setattr(d2n_settings, key, value)
        yield
    finally:
        for key, value in saved.items():
            setattr(d2n_settings, key, value)


def _present(ds: pydicom.Dataset, keyword: str) -> bool:
    """Whether ``ds`` has ``keyword`` with a non-empty value."""
    value = ds.get(keyword, None)
    if value is None:
        return False
    try:
        return len(value) > 0
    except TypeError:  # numbers have no length
        return True


def _pixel_bytes(ds: pydicom.Dataset) -> int:
    """Bytes of uncompressed pixel data one single-frame image needs."""
    return int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8


def _sorted_stack(item: str, datasets: list[pydicom.Dataset], series_uid: str, *,
                  recover_stacks: bool = False):
    """Check the slices of one series and sort them along the slice normal.

    Returns ``(sorted_datasets, index_to_lps, note)``: ``index_to_lps`` is the ``[3, 4]`` matrix mapping
    DICOM voxel indices ``(column, row, slice, 1)`` of the sorted stack to LPS millimetres, with the
    mean slice step taken from the first and last ``ImagePositionPatient``; ``note`` is ``''``, or with
    ``recover_stacks`` what :func:`ctdiff.ingest.zstack.recover` kept of a recoverable stack.
    Raises ValueError naming ``item`` and the first failed check.
    """

    def fail(reason: str) -> ValueError:
        return ValueError(f"{item}: {reason}")

    n = len(datasets)
    wrong = [ds for ds in datasets if str(ds.get("SeriesInstanceUID", "")) != series_uid]
    if wrong:
        raise fail(f"foreign files: {len(wrong)} file(s) do not belong to series {series_uid}")
    for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns",
                "BitsAllocated", "RescaleSlope", "RescaleIntercept", "PixelData"):
        missing = sum(1 for ds in datasets if not _present(ds, tag))
        if missing:
            raise fail(f"missing {tag}: in {missing} of {n} file(s)")

    short = [ds for ds in datasets
             if not ds.file_meta.TransferSyntaxUID.is_compressed and len(ds.PixelData) < _pixel_bytes(ds)]
    if short:
        raise fail(f"truncated pixel data: {len(short)} of {n} file(s) hold fewer bytes than "
                   "Rows x Columns x BitsAllocated / 8")

    iop = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in datasets])
    if not np.allclose(iop, iop[0], atol=1e-4):
        raise fail("ImageOrientationPatient varies between slices")
    grids = {(int(ds.Rows), int(ds.Columns), *(round(float(v), 4) for v in ds.PixelSpacing))
             for ds in datasets}
    if len(grids) > 1:
        raise fail(f"Rows/Columns/PixelSpacing vary between slices: {sorted(grids)}")

    row_cos, col_cos = iop[0, :3], iop[0, 3:]
    normal = np.cross(row_cos, col_cos)
    ipp = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    stack = diagnose(ipp @ normal)
    order, note = stack.keep, ""
    if stack.kind != "uniform":
        if not recover_stacks:
            raise fail(stack.reason)
        try:
            order, note = recover(stack, datasets)
        except ValueError as err:
            raise fail(str(err)) from None
    ipp = ipp[list(order)]
    datasets = [datasets[i] for i in order]
    n = len(datasets)

    steps = np.diff(ipp, axis=0)
    drift = np.linalg.norm(steps - np.outer(steps @ normal, normal), axis=1)
    if np.any(drift > SPACING_ATOL_MM / 10 + 0.01 * stack.spacing_mm):
        raise fail(f"gantry tilt or sheared stack: slice positions drift in-plane by up to "
                   f"{drift.max():.3f} mm per slice")

    row_spacing, col_spacing = (float(v) for v in datasets[0].PixelSpacing)
    step = (ipp[-1] - ipp[0]) / (n - 1)
    index_to_lps = np.column_stack([row_cos * col_spacing, col_cos * row_spacing, step, ipp[0]])
    return datasets, index_to_lps, note


def _corners(shape: tuple[int, int, int]) -> np.ndarray:
    """The 8 corner voxel indices of a volume, homogeneous, ``[4, 8]``."""
    ijk = np.array(np.meshgrid(*[[0, s - 1] for s in shape], indexing="ij")).reshape(3, -1)
    return np.vstack([ijk, np.ones((1, 8))])


def _check_geometry(item: str, img: nib.Nifti1Image, index_to_lps: np.ndarray,
                    stack_shape: tuple[int, int, int]) -> None:
    """Check dicom2nifti's output against the DICOM geometry.

    ``stack_shape`` is ``(columns, rows, n_slices)``; the output must hold the same voxel counts and its
    corner voxels must sit at the same world positions (RAS mm, within 0.01 mm).
    """
    if sorted(img.shape) != sorted(stack_shape) or len(img.shape) != 3:
        raise ValueError(f"{item}: unexpected dicom2nifti output: shape {img.shape}, expected the "
                         f"{stack_shape[2]} slices of {stack_shape[0]}x{stack_shape[1]} pixels")
    ours = _LPS_TO_RAS @ index_to_lps @ _corners(stack_shape)
    theirs = (img.affine @ _corners(img.shape))[:3]
    ours = ours[:, np.lexsort(np.round(ours, 2)[::-1])]
    theirs = theirs[:, np.lexsort(np.round(theirs, 2)[::-1])]
    if not np.allclose(ours, theirs, atol=1e-2):
        raise ValueError(f"{item}: unexpected dicom2nifti output: affine disagrees with "
                         "ImagePositionPatient / ImageOrientationPatient / PixelSpacing")


def _to_las(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """``img`` with its array axes flipped and permuted to LAS (i toward Left, j Anterior, k Superior).

    What dicom2nifti's ``reorient_nifti=True`` does, done by nibabel without writing files: the array is
    a view of ``img``'s (no copy) and the affine is changed to match, so every voxel keeps its world
    position.
    """
    to_las = nib.orientations.ornt_transform(nib.io_orientation(img.affine),
                                             nib.orientations.axcodes2ornt("LAS"))
    return img.as_reoriented(to_las)


def _dicom2nifti_las(item: str, datasets: list[pydicom.Dataset]) -> nib.Nifti1Image:
    """dicom2nifti's float64 HU image of the sorted slices, in memory, reoriented to LAS (:func:`_to_las`).

    Raises ValueError naming ``item`` when dicom2nifti refuses the series.
    """
    from dicom2nifti.convert_dicom import dicom_array_to_nifti
    from dicom2nifti.exceptions import ConversionError, ConversionValidationError

    with _dicom2nifti_settings():
        try:
            result = dicom_array_to_nifti(datasets, None, reorient_nifti=False)
        except (ConversionError, ConversionValidationError, ValueError, IndexError,
                AttributeError, KeyError, TypeError) as err:
            raise ValueError(f"{item}: dicom2nifti refused the series: "
                             f"{type(err).__name__}: {err}") from err
    return _to_las(result["NII"])


def _to_int16_hu(data) -> tuple[np.ndarray, int]:
    """Round HU to int16, clamping padding below :data:`PADDING_FLOOR_HU`.

    ``data`` is a ``[X, Y, Z]`` array of HU; a writable float64 array is rounded and clamped in place
    (no second full-size float copy). Returns the int16 ``[X, Y, Z]`` array and the number of clamped
    voxels.
    """
    hu = np.asarray(data, dtype=np.float64)
    if not hu.flags.writeable:
        hu = hu.copy()
    np.rint(hu, out=hu)
    n_clamped = int(np.count_nonzero(hu < PADDING_FLOOR_HU))
    np.clip(hu, PADDING_FLOOR_HU, np.iinfo(np.int16).max, out=hu)
    return hu.astype(np.int16), n_clamped


def convert_item(root: Path, series_json: Path, item: str, out_nifti: Path, out_qc: Path, *,
                 recover_stacks: bool = False, nodule_consensus: float = 0.5) -> dict:
    """Convert the series of one item to an int16 HU NIfTI.

    Args:
        root: the DICOM tree root that the paths in ``series_json`` are relative to.
        series_json: the table written by :func:`ctdiff.ingest.discover.discover`.
        item: item id (a key of the table; the PatientID in ``series='largest'`` mode).
        out_nifti: written: int16 HU volume ``[X, Y, Z]`` in dicom2nifti's LAS array order, affine in
            NIfTI RAS+ mm (scanner geometry; z step from ``ImagePositionPatient``), qform = sform.
        out_qc: written: one-row TSV with :data:`QC_COLUMNS`.
        recover_stacks: convert the one consistent stack of a series with far stray slices or stored
            several times over (:func:`ctdiff.ingest.zstack.recover`) instead of rejecting it; the row's
            reason then says what was kept (``'recovered: ...'``).
        nodule_consensus: the share of a nodule's readers who must mark a voxel for the nodule mask.

    Beside ``out_nifti`` it writes the annotation outputs of :func:`ctdiff.ingest.annotations.ingest.annotate`
    (nodule mask on the volume's grid, nodule table, annotation QC) from the XML files discovery matched to
    the series (``annotations`` in the series table; none: an empty table and an all-zero mask).

    Returns:
        The QC row as a dict.

    Raises:
        ValueError: ``"{item}: {reason}"`` when the series fails a check or dicom2nifti refuses it.
    """
    table = json.loads(Path(series_json).read_text(encoding="utf-8"))
    if item not in table:
        raise ValueError(f"{item}: unknown item: not in {series_json}")
    entry = table[item]
    datasets = []
    for name in entry["files"]:
        try:
            datasets.append(pydicom.dcmread(Path(root) / name, force=False))
        except Exception as err:  # noqa: BLE001 - any unreadable file fails the item, by name
            raise ValueError(f"{item}: unreadable file: {name}: {type(err).__name__}: {err}") from err
    if len(datasets) < 2:
        raise ValueError(f"{item}: too few files: only {len(datasets)}, not a volume")
    datasets, index_to_lps, note = _sorted_stack(item, datasets, entry["series_uid"],
                                                 recover_stacks=recover_stacks)
    stack_shape = (int(datasets[0].Columns), int(datasets[0].Rows), len(datasets))

    converted = _dicom2nifti_las(item, datasets)
    _check_geometry(item, converted, index_to_lps, stack_shape)
    hu, n_clamped = _to_int16_hu(converted.dataobj)
    affine = np.asarray(converted.affine, dtype=np.float64)
    del converted                 # the float64 volume: the annotation mask below never sits beside it
    save_volume(out_nifti, hu, affine)

    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    row = {
        "item": item,
        "patient": entry["patient"],
        "series_uid": entry["series_uid"],
        "n_slices": len(datasets),
        "spacing_x_mm": round(float(spacing[0]), 4),
        "spacing_y_mm": round(float(spacing[1]), 4),
        "spacing_z_mm": round(float(spacing[2]), 4),
        "shape": "x".join(str(s) for s in hu.shape),
        "hu_min": int(hu.min()),
        "hu_max": int(hu.max()),
        "n_padding_clamped": n_clamped,
        "decision": "converted",
        "reason": note,
    }
    grid = SliceGrid(sop_uids=tuple(str(ds.SOPInstanceUID) for ds in datasets),
                     z=np.array([float(ds.ImagePositionPatient[2]) for ds in datasets]),
                     columns=stack_shape[0], rows=stack_shape[1], index_to_lps=index_to_lps, affine=affine,
                     shape=hu.shape, series_uid=entry["series_uid"])
    del hu, datasets
    annotate(grid, [Path(root) / name for name in entry.get("annotations", [])], Path(out_nifti).parent,
             consensus=nodule_consensus)
    write_tsv(out_qc, [row], QC_COLUMNS)
    return row


def convert_or_reject(root: Path, series_json: Path, item: str, out_dir: Path, out_qc: Path, *,
                      recover_stacks: bool = False, nodule_consensus: float = 0.5) -> dict:
    """Convert one item, or record why not: a faulty series never stops the cohort.

    Always writes ``out_qc`` (one row, :data:`QC_COLUMNS`) and creates ``out_dir``. On success
    ``out_dir/VOLUME_NAME`` holds the volume of :func:`convert_item` and the row's decision is
    ``'converted'`` (its reason ``''``, or ``'recovered: ...'`` with ``recover_stacks``, see
    :func:`convert_item`); when the series fails a check (any ``ValueError`` of :func:`convert_item`) the
    folder stays empty and the row says ``'rejected'`` with the reason, written ``'category: detail'`` so
    that :mod:`ctdiff.ingest.cohort` can count rejections by category. Other errors (disk full, a bug)
    propagate.

    Returns:
        The QC row as a dict.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return convert_item(root, series_json, item, out_dir / VOLUME_NAME, out_qc,
                            recover_stacks=recover_stacks, nodule_consensus=nodule_consensus)
    except ValueError as err:
        reason = str(err).removeprefix(f"{item}: ")
    entry = json.loads(Path(series_json).read_text(encoding="utf-8")).get(item, {})
    row = dict.fromkeys(QC_COLUMNS, "")
    row.update(item=item, patient=entry.get("patient", ""), series_uid=entry.get("series_uid", ""),
               decision="rejected", reason=reason)
    write_tsv(out_qc, [row], QC_COLUMNS)
    return row
