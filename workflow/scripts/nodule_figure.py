"""Crops through the requested nodules, real and synthetic, in three planes, the mask's contour overlaid."""
import sys
from pathlib import Path

from ctdiff.report.plots import nodule_figure

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
nodule_figure(Path(snakemake.input.metrics), Path(snakemake.params.samples), Path(snakemake.params.volumes),
              Path(snakemake.output[0]))
