"""Gather the convert QC rows into the cohort table, every annotation XML file's final decision into
qc/annotations.tsv, and count decisions and reasons."""
from pathlib import Path

from ctdiff.ingest.cohort import summarise
from ctdiff.logs import to_file

to_file(snakemake.log[0])
usable = summarise(
    Path(snakemake.input.inventory),
    [Path(p) for p in snakemake.input.qc],
    Path(snakemake.output.table),
    Path(snakemake.output.summary),
    found_xml_tsv=Path(snakemake.input.xml),
    nifti_dirs=[Path(p) for p in snakemake.input.nifti],
    root=Path(snakemake.params.root),
    xml_tsv=Path(snakemake.output.annotations),
)
print(f"{len(usable)} of {len(snakemake.input.qc)} chosen items converted")
