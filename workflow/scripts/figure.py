"""Figure 1 of the chosen real and synthetic volumes, and the sample grid."""
import sys
from pathlib import Path

from ctdiff.config import FigureConfig
from ctdiff.plots import chosen_figures

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
chosen_figures(
    Path(snakemake.input.test),
    Path(snakemake.params.volumes),
    [Path(p) for p in snakemake.input.synthetic],
    FigureConfig(**snakemake.params.figure),
    [Path(snakemake.output.png), Path(snakemake.output.pdf)],
    Path(snakemake.output.grid),
    grid=snakemake.params.grid,
)
