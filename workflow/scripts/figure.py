"""Figure 1 of the chosen real and synthetic volumes, and the sample grid."""
from pathlib import Path

from ctdiff.config import FigureConfig
from ctdiff.logs import to_file
from ctdiff.report.plots import chosen_figures

to_file(snakemake.log[0])
chosen_figures(
    Path(snakemake.input.test),
    Path(snakemake.params.volumes),
    [Path(p) for p in snakemake.input.synthetic],
    FigureConfig(**snakemake.params.figure),
    [Path(snakemake.output.png), Path(snakemake.output.pdf)],
    Path(snakemake.output.grid),
    grid=snakemake.params.grid,
)
