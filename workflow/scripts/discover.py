"""Inventory every DICOM series under the root and choose the series to convert."""
import sys
from pathlib import Path

from ctdiff.data.discover import discover

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
items = discover(
    Path(snakemake.params.root),
    Path(snakemake.output.inventory),
    Path(snakemake.output.series),
    series=snakemake.params.series,
)
print(f"{len(items)} items chosen")
