"""Resample one item to size^3, clip the HU window and scale to [0, 1]."""
from pathlib import Path

from ctdiff.config import section_from_dict
from ctdiff.data.convert import VOLUME_NAME
from ctdiff.data.preprocess import preprocess
from ctdiff.logs import to_file

to_file(snakemake.log[0])
p = section_from_dict("preprocess", snakemake.params.preprocess)
preprocess(
    Path(snakemake.input.nifti) / VOLUME_NAME,
    Path(snakemake.output[0]),
    size=p.size,
    spacing_mm=p.spacing_mm,
    hu_window=p.hu_window,
)
