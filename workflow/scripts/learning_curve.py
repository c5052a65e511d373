"""The training loss against the step."""
from pathlib import Path

from ctdiff.logs import to_file
from ctdiff.report.plots import learning_curve

to_file(snakemake.log[0])
learning_curve(Path(snakemake.input.log), Path(snakemake.output[0]))
