"""One sample set as DICOM: CT series, and for a nodule-conditioned model a Segmentation and an LIDC XML each."""
from pathlib import Path

from ctdiff.export.dicom import export_sample_set
from ctdiff.logs import to_file

to_file(snakemake.log[0])
export_sample_set(Path(snakemake.input.model), [Path(p) for p in snakemake.input.samples], Path(snakemake.output[0]),
                  **snakemake.params.run, seed=snakemake.params.seed)
