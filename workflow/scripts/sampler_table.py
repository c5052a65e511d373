"""One row per sampler: the main set's metrics and those of every compared sampler."""
import sys
from pathlib import Path

from ctdiff.metrics.compare import sampler_table

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
table = sampler_table(
    Path(snakemake.input.main),
    dict(zip(snakemake.params.tags, (Path(p) for p in snakemake.input.compare))),
    Path(snakemake.output[0]),
)
print(table.to_string(index=False))
