"""The training loss against the step."""
import sys
from pathlib import Path

from ctdiff.plots import learning_curve

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
learning_curve(Path(snakemake.input.log), Path(snakemake.output[0]))
