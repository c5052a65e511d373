"""One row per (variant, sampler): the cost and the metrics of every evaluated set."""
from pathlib import Path

from ctdiff.logs import to_file
from ctdiff.metrics.variant_table import variant_table
from ctdiff.plan import TableRow

to_file(snakemake.log[0])
table = variant_table([TableRow(**row) for row in snakemake.params.rows], Path(snakemake.output[0]))
print(table.to_string(index=False))
