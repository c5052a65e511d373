"""The anatomy in HU, real against synthetic: HU histogram, lung volumes, per-class W1 with the floor."""
import sys
from pathlib import Path

from ctdiff.report.plots import anatomy_figure

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
anatomy_figure(Path(snakemake.input.metrics), Path(snakemake.output[0]))
