"""Synthetic chest CT cohort written as LIDC-IDRI-like DICOM series: the pipeline's embedded default data.

Two parts: :mod:`ctdiff.data.phantom.anatomy` draws one patient's chest and renders it as an HU volume
(one function per structure); :mod:`ctdiff.data.phantom.dicom` draws the acquisition and writes the
volume, with LIDC-IDRI's distractor series, as DICOM files.
"""

from ctdiff.data.phantom.anatomy import HU_RANGE, PADDING_HU, PADDING_RAW, RESCALE_INTERCEPT, phantom_volume
from ctdiff.data.phantom.dicom import write_cohort, write_patient

__all__ = ["HU_RANGE", "PADDING_HU", "PADDING_RAW", "RESCALE_INTERCEPT", "phantom_volume", "write_cohort",
           "write_patient"]
