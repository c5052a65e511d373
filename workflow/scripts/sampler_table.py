"""One row per sampler: the main set's metrics and those of every compared sampler."""
from pathlib import Path

from ctdiff.logs import to_file
from ctdiff.metrics.compare import sampler_table

to_file(snakemake.log[0])
table = sampler_table(
    Path(snakemake.input.main),
    dict(zip(snakemake.params.tags, (Path(p) for p in snakemake.input.compare))),
    Path(snakemake.output[0]),
)
print(table.to_string(index=False))
