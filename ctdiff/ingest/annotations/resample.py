"""Bring a converted nodule mask onto the preprocessed volume's grid, label by label.

The volume's own resampling (:mod:`ctdiff.ingest.preprocess`: RAS reorientation, the same output grid, the
same Gaussian anti-aliasing and linear interpolation) is applied to each label's indicator (1 inside,
0 outside) in float32, which gives the fraction of each output voxel that the label covers (smoothed at the
output's resolution); a voxel takes the label whose fraction is at least :data:`COVERAGE` and largest.
Nearest-neighbour sampling would instead keep or drop a small nodule by where the grid happens to fall.
Each label is resampled from a crop around it (its bounding box plus four Gaussian sigmas and two voxels),
so the cost grows with the number of nodules, not with their count times the scan's size.

Outputs: ``preprocessed/nodules/{item}.nii.gz`` (uint8 labels, the preprocessed volume's affine) and
``preprocessed/nodules/{item}.tsv``: the converted table with ``voxels`` and ``centroid_i/j/k`` recomputed
on the new grid (a point's indices may lie outside the cube when the crop cut it off); millimetre columns
are unchanged, since the grid keeps scanner coordinates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ctdiff.ingest.annotations.ingest import MASK_NAME, TABLE_NAME, read_table
from ctdiff.ingest.annotations.nodules import TABLE_COLUMNS
from ctdiff.ingest.convert import VOLUME_NAME
from ctdiff.ingest.preprocess import anti_alias_sigma_mm, cube_affine, output_grid, resample_onto
from ctdiff.files import save_volume, write_tsv

#: Smallest fraction of an output voxel a label must cover to be painted there.
COVERAGE = 0.5


def resample_nodules(nifti_dir: Path, out_mask: Path, out_table: Path, *, size: int,
                     spacing_mm: float | None) -> list[dict]:
    """Resample ``nifti_dir``'s nodule mask onto the preprocessed grid and write the mask and table.

    A folder without a mask (no annotation outputs) gives an all-zero mask and an empty table. Returns
    the table rows.
    """
    nifti_dir = Path(nifti_dir)
    rows: list[dict] = []
    if (nifti_dir / MASK_NAME).exists():       # on the volume's grid: the same output grid as the volume's
        labels = sitk.DICOMOrient(sitk.ReadImage(str(nifti_dir / MASK_NAME)), "RAS")
        rows = read_table(nifti_dir / TABLE_NAME)
    else:                                       # the volume's geometry from its header alone
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(nifti_dir / VOLUME_NAME))
        reader.ReadImageInformation()
        labels = sitk.Image(reader.GetSize(), sitk.sitkUInt8)
        labels.SetOrigin(reader.GetOrigin())
        labels.SetSpacing(reader.GetSpacing())
        labels.SetDirection(reader.GetDirection())
        labels = sitk.DICOMOrient(labels, "RAS")
    origin, spacing = output_grid(labels, int(size), spacing_mm)
    affine = cube_affine(origin, spacing)
    out = _resample_labels(labels, size, origin, spacing)
    inverse = np.linalg.inv(affine)
    for row in rows:
        label = int(row["label"])
        if label > 0:
            ijk = np.argwhere(out == label)
            row["voxels"] = len(ijk)
            centre = ijk.mean(axis=0) if len(ijk) else np.full(3, np.nan)
        else:
            ras = np.array([-float(row["centroid_x_mm"]), -float(row["centroid_y_mm"]),
                            float(row["centroid_z_mm"])])
            centre = inverse[:3, :3] @ ras + inverse[:3, 3]
        row.update(centroid_i=round(float(centre[0]), 3), centroid_j=round(float(centre[1]), 3),
                   centroid_k=round(float(centre[2]), 3))
    save_volume(out_mask, out, affine)
    write_tsv(out_table, rows, TABLE_COLUMNS)
    return rows


def _resample_labels(labels: sitk.Image, size: int, origin: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """uint8 ``[size]*3`` ``[X, Y, Z]`` labels: per label the resampled indicator, :data:`COVERAGE` rule."""
    array = sitk.GetArrayViewFromImage(labels)           # [k, j, i]
    best = np.zeros((size, size, size), np.float32)
    out = np.zeros((size, size, size), np.uint8)
    sigma = anti_alias_sigma_mm(labels.GetSpacing(), spacing)
    in_spacing = np.array(labels.GetSpacing(), float)
    margin = np.ceil((4 * sigma + 2 * np.maximum(in_spacing, spacing)) / in_spacing).astype(int)
    for label in np.unique(array):
        if label == 0:
            continue
        kji = np.argwhere(array == label)
        lo = np.maximum(kji.min(axis=0)[::-1] - margin, 0)                        # i, j, k
        hi = np.minimum(kji.max(axis=0)[::-1] + margin + 1, labels.GetSize())
        crop = sitk.RegionOfInterest(labels, (hi - lo).tolist(), lo.tolist())
        indicator = sitk.Cast(crop == int(label), sitk.sitkFloat32)
        fraction = sitk.GetArrayFromImage(resample_onto(indicator, size, origin, spacing, 0.0))
        fraction = fraction.transpose(2, 1, 0)
        take = (fraction >= COVERAGE - 1e-6) & (fraction > best)
        out[take], best[take] = label, fraction[take]
    return out
