"""Gather the convert QC rows into the cohort table and count decisions and reasons."""
from pathlib import Path

from ctdiff.ingest.cohort import summarise
from ctdiff.logs import to_file

to_file(snakemake.log[0])
usable = summarise(
    Path(snakemake.input.inventory),
    [Path(p) for p in snakemake.input.qc],
    Path(snakemake.output.table),
    Path(snakemake.output.summary),
)
print(f"{len(usable)} of {len(snakemake.input.qc)} chosen items converted")
