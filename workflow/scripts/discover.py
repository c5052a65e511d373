"""Inventory every DICOM series under the root and choose the series to convert."""
from pathlib import Path

from ctdiff.ingest.discover import discover
from ctdiff.logs import to_file

to_file(snakemake.log[0])
items = discover(
    Path(snakemake.params.root),
    Path(snakemake.output.inventory),
    Path(snakemake.output.series),
    series=snakemake.params.series,
    annotations_tsv=Path(snakemake.output.annotations),
)
print(f"{len(items)} items chosen")
