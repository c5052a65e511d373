"""Synthetic chest CT cohort written as LIDC-IDRI-like DICOM series: the pipeline's embedded default data.

Three steps, one module each: :mod:`~ctdiff.phantom.anatomy` draws one patient's chest (one function
per structure), :mod:`~ctdiff.phantom.scan` renders it as a CT scanner's HU volume, and
:mod:`~ctdiff.phantom.dicom` draws the acquisition and writes the volume, with LIDC-IDRI's distractor
series, as DICOM files.
"""

from ctdiff.phantom.dicom import write_cohort, write_patient
from ctdiff.phantom.scan import HU_RANGE, PADDING_HU, PADDING_RAW, RESCALE_INTERCEPT, phantom_volume

__all__ = ["HU_RANGE", "PADDING_HU", "PADDING_RAW", "RESCALE_INTERCEPT", "phantom_volume", "write_cohort",
           "write_patient"]
