"""Bring one HU volume to the model's input: canonical orientation, size^3 voxels, values in [0, 1].

Steps, in this order (SimpleITK, physical coordinates in mm):

1. read the NIfTI as float32 HU and reorder its axes to RAS (``DICOMOrient(image, 'RAS')``: array index
   ``i`` runs toward the patient's Right, ``j`` toward Anterior, ``k`` toward Superior). This only
   permutes and flips axes; nothing is interpolated.
2. clamp to the HU window ``[lo, hi]`` (default [-1000, 400]). Scanner padding (e.g. -3024 HU) becomes
   ``lo`` here, before any filter, so it cannot bleed into the body.
3. anti-alias: along each axis that is downsampled, a Gaussian of standard deviation
   ``sigma_mm = (s_out - s_in) / 2`` (``s_in`` / ``s_out`` the input / output spacing of that axis, mm;
   the same rule as scikit-image's ``resize``, i.e. half an input voxel per unit of downsampling factor
   above 1), SimpleITK's recursive (IIR) Gaussian in float32. Axes that are not downsampled are not
   smoothed.
4. resample with linear interpolation onto a ``size^3`` grid whose axes are exactly the RAS axes and
   whose centre is the physical centre of the input volume:

   - ``spacing_mm`` given: isotropic ``spacing_mm`` voxels, i.e. a centred crop/pad of a cube of side
     ``size * spacing_mm``; points outside the scan are air (-1000 HU, clamped to the window);
   - ``spacing_mm=None``: the paper's plain resize of the whole scan, spacing ``extent / size`` per axis
     (``extent = n_voxels * s_in``, anisotropic).
5. scale linearly, ``(HU - lo) / (hi - lo)``, to float32 in [0, 1].

Steps 3 and 4 are one linear map, separable along the three axes: each axis' Gaussian and each axis'
linear interpolation act on that axis alone (interpolation weights, the inside/outside test of a sample
and the edge handling are all per axis), so operators on different axes commute. When the input's axes
are the output's (every scan whose slices are not oblique), the volume is therefore smoothed and
resampled one axis at a time, x, then y, then z (:func:`_resample_by_axis`): the Gaussian along y runs on
a volume already reduced along x, and so on. That gives the same values as smoothing the whole volume
along every axis and resampling once (:func:`_resample_at_once`, used for oblique inputs), to float32
rounding (< 0.001 HU), at about a third of the cost of steps 3-4 for a 512 x 512 x 300 scan (see
``benchmarks/README.md``).

Output convention (shared with the sample stage): a NIfTI whose data array, as nibabel returns it, is
``[X, Y, Z]`` = ``[R, A, S]`` (``nib.aff2axcodes(affine) == ('R', 'A', 'S')``) with the affine
``diag(spacing) + translation`` in NIfTI RAS+ mm, so the output overlays the input in a viewer. The model
sees this array as ``[D, H, W]``; axial slices are ``array[:, :, k]``. The network itself works in
``[-1, 1]``: training maps volumes there with :func:`to_model_range`, sampling maps its output back with
:func:`from_model_range`, and :func:`to_hu` undoes step 5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ctdiff.config import PreprocessConfig
# The intensity maps live in ctdiff.ingest.intensity (no SimpleITK there, so training, sampling and evaluation
# import without it); they stay importable from here.
from ctdiff.ingest.intensity import from_model_range, to_hu, to_model_range  # noqa: F401
from ctdiff.files import save_volume

#: HU of air, the value of every output voxel outside the scanned volume (before windowing).
AIR_HU = -1000.0

#: Direction cosines (ITK, LPS world) of RAS array axes: i -> -x_LPS, j -> -y_LPS, k -> +z.
_RAS_DIRECTION = np.diag([-1.0, -1.0, 1.0])

#: Largest difference between direction cosines for which an input counts as having RAS axes and is
#: resampled axis by axis (ITK's own default for "same direction"; off by 1e-6 the axes drift apart by
#: 0.5 um over a 500 mm scan).
DIRECTION_TOLERANCE = 1e-6


def anti_alias_sigma_mm(spacing_in: np.ndarray, spacing_out: np.ndarray) -> np.ndarray:
    """Per-axis Gaussian sigma (mm) applied before resampling from ``spacing_in`` to ``spacing_out``.

    ``sigma = max(0, (s_out - s_in) / 2)``: zero on axes that keep or refine their spacing.
    """
    return np.maximum(0.0, (np.asarray(spacing_out, float) - np.asarray(spacing_in, float)) / 2.0)


def _smooth(image: sitk.Image, axis: int, sigma_mm: float) -> sitk.Image:
    """Gaussian along one array axis (recursive IIR, sigma in mm); ``image`` itself when ``sigma_mm`` is 0."""
    if sigma_mm <= 0:
        return image
    return sitk.RecursiveGaussian(image, sigma=float(sigma_mm), normalizeAcrossScale=False,
                                  order=sitk.RecursiveGaussianImageFilter.ZeroOrder, direction=axis)


def _resample(image: sitk.Image, size, origin, spacing, fill: float) -> sitk.Image:
    """Linear interpolation of ``image`` onto the grid ``size``/``origin``/``spacing`` with RAS axes."""
    return sitk.Resample(image, [int(n) for n in size], sitk.Transform(), sitk.sitkLinear,
                         [float(v) for v in origin], [float(v) for v in spacing],
                         _RAS_DIRECTION.flatten().tolist(), fill, sitk.sitkFloat32)


def _resample_at_once(image: sitk.Image, size: int, origin: np.ndarray, spacing: np.ndarray,
                      fill: float) -> sitk.Image:
    """Anti-alias along every axis at the input resolution, then resample all axes at once.

    Right for any input direction; the reference that :func:`_resample_by_axis` reproduces.
    """
    sigma = anti_alias_sigma_mm(image.GetSpacing(), spacing)
    for axis in range(3):
        image = _smooth(image, axis, sigma[axis])
    return _resample(image, [size] * 3, origin, spacing, fill)


def _resample_by_axis(image: sitk.Image, size: int, origin: np.ndarray, spacing: np.ndarray,
                      fill: float) -> sitk.Image:
    """Anti-alias and resample one axis at a time (x, y, z); ``image``'s axes must be the RAS axes.

    After axis ``a`` the intermediate grid has the output's size, origin and spacing along ``a`` and the
    input's along the others, so later Gaussians run on fewer voxels. A sample outside the input along
    ``a`` is ``fill`` on its whole plane (every index along the other axes), which the Gaussians along
    those axes keep at ``fill``: the same result as :func:`_resample_at_once`.
    """
    sigma = anti_alias_sigma_mm(image.GetSpacing(), spacing)
    for axis in range(3):
        image = _smooth(image, axis, sigma[axis])
        grid_size, grid_origin, grid_spacing = (list(v) for v in (image.GetSize(), image.GetOrigin(),
                                                                   image.GetSpacing()))
        grid_size[axis], grid_origin[axis], grid_spacing[axis] = size, origin[axis], spacing[axis]
        image = _resample(image, grid_size, grid_origin, grid_spacing, fill)
    return image


def _has_ras_axes(image: sitk.Image) -> bool:
    """Whether ``image``'s array axes are the RAS axes, within ITK's default direction tolerance (1e-6)."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return bool(np.allclose(direction, _RAS_DIRECTION, rtol=0.0, atol=DIRECTION_TOLERANCE))


def read_ras_windowed(path: Path, lo: float, hi: float) -> sitk.Image:
    """Steps 1 and 2: the NIfTI at ``path`` as float32 HU clamped to ``[lo, hi]``, array axes in RAS order.

    The file is read in its own type (int16 from the convert stage) and reoriented before the clamp casts
    it to float32, so the reorienting copy moves half the bytes.
    Raises ValueError when the file does not hold a scalar 3-D volume.
    """
    image = sitk.ReadImage(str(path))
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1 \
            or min(image.GetSize()) < 2:
        raise ValueError(f"{path}: expected a 3-D volume, got size {image.GetSize()}")
    return sitk.Clamp(sitk.DICOMOrient(image, "RAS"), sitk.sitkFloat32, lo, hi)


def output_grid(image: sitk.Image, size: int, spacing_mm: float | None):
    """The output grid for an RAS-ordered ``image``: ``(origin_lps, spacing)``, both ``[3]`` mm.

    The grid has ``size`` voxels per axis along the exact RAS axes, centred on the physical centre of
    ``image`` (the midpoint of its first and last voxel centres).
    """
    n_in = np.array(image.GetSize(), float)
    s_in = np.array(image.GetSpacing(), float)
    if spacing_mm is None:
        spacing = n_in * s_in / size
    else:
        spacing = np.full(3, float(spacing_mm))
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint(((n_in - 1) / 2).tolist()))
    origin = centre - _RAS_DIRECTION @ (spacing * (size - 1) / 2)
    return origin, spacing


def preprocess(
    in_nifti: Path,
    out_nifti: Path,
    *,
    size: int,
    spacing_mm: float | None,
    hu_window: tuple[float, float] = PreprocessConfig.hu_window,
) -> None:
    """Orient, window, anti-alias, resample and scale one HU volume (see the module docstring).

    Args:
        in_nifti: HU volume, any orientation and spacing (e.g. the convert stage's int16 output).
        out_nifti: written: float32 ``[size, size, size]`` array ``[X, Y, Z]`` in RAS order, values in
            [0, 1], affine ``diag(spacing)`` plus translation (NIfTI RAS+ mm), qform = sform.
        size: voxels per output axis (>= 2).
        spacing_mm: isotropic output spacing (mm) with centred crop/pad, or None for the plain resize of
            the whole volume (spacing ``extent / size`` per axis).
        hu_window: ``(lo, hi)`` HU mapped to 0 and 1 (default: the config's, ``PreprocessConfig.hu_window``).

    Raises:
        ValueError: bad arguments, or an input that is not a 3-D volume.
    """
    if not isinstance(size, (int, np.integer)) or size < 2:
        raise ValueError(f"size must be an integer >= 2, got {size!r}")
    if spacing_mm is not None and not spacing_mm > 0:
        raise ValueError(f"spacing_mm must be > 0 or None (plain resize), got {spacing_mm!r}")
    lo, hi = (float(v) for v in hu_window)
    if not lo < hi:
        raise ValueError(f"hu_window must be (lo, hi) with lo < hi, got {hu_window!r}")
    if not str(out_nifti).endswith((".nii", ".nii.gz")):
        raise ValueError(f"out_nifti must end in .nii or .nii.gz: {out_nifti}")

    image = read_ras_windowed(in_nifti, lo, hi)
    origin, spacing = output_grid(image, int(size), spacing_mm)
    resampled = resample_onto(image, int(size), origin, spacing, float(np.clip(AIR_HU, lo, hi)))

    # SimpleITK arrays are [k, j, i]; nibabel's are [i, j, k] = [X, Y, Z].
    hu = sitk.GetArrayFromImage(resampled).transpose(2, 1, 0)
    scaled = np.clip((hu - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    save_volume(out_nifti, scaled.astype(np.float32, copy=False), cube_affine(origin, spacing))


def resample_onto(image: sitk.Image, size: int, origin: np.ndarray, spacing: np.ndarray,
                  fill: float) -> sitk.Image:
    """Steps 3-4 for a float32 RAS-ordered ``image``: anti-alias and resample linearly onto the ``size``³
    grid ``origin`` / ``spacing`` (LPS mm, :func:`output_grid`), ``fill`` outside the input."""
    resample = _resample_by_axis if _has_ras_axes(image) else _resample_at_once
    return resample(image, int(size), np.asarray(origin, float), np.asarray(spacing, float), fill)


def cube_affine(origin: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The NIfTI affine (RAS+ mm) of an output grid with LPS ``origin`` and ``spacing`` (:func:`output_grid`)."""
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = lps_to_ras @ _RAS_DIRECTION @ np.diag(spacing)
    affine[:3, 3] = lps_to_ras @ origin
    return affine
