"""Resample one item to size^3, clip the HU window and scale to [0, 1]."""
import sys
from pathlib import Path

from ctdiff.config import section_from_dict
from ctdiff.data.convert import VOLUME_NAME
from ctdiff.data.preprocess import preprocess

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
p = section_from_dict("preprocess", snakemake.params.preprocess)
preprocess(
    Path(snakemake.input.nifti) / VOLUME_NAME,
    Path(snakemake.output[0]),
    size=p.size,
    spacing_mm=p.spacing_mm,
    hu_window=p.hu_window,
)
