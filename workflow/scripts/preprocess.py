"""Resample one item to size^3, clip the HU window and scale to [0, 1]; resample its nodule mask with it."""
from pathlib import Path

from ctdiff.config import section_from_dict
from ctdiff.ingest.annotations.resample import resample_nodules
from ctdiff.ingest.convert import VOLUME_NAME
from ctdiff.ingest.preprocess import preprocess
from ctdiff.logs import to_file

to_file(snakemake.log[0])
p = section_from_dict("preprocess", snakemake.params.preprocess)
nifti = Path(snakemake.input.nifti)
preprocess(nifti / VOLUME_NAME, Path(snakemake.output.volume), size=p.size, spacing_mm=p.spacing_mm,
           hu_window=p.hu_window)
resample_nodules(nifti, Path(snakemake.output.nodules), Path(snakemake.output.table), size=p.size,
                 spacing_mm=p.spacing_mm)
