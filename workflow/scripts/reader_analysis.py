"""The readers' answers joined with the key: per reader, pooled, per case."""
from pathlib import Path

from ctdiff.logs import to_file
from ctdiff.reader.analysis import write_analysis

to_file(snakemake.log[0])
write_analysis(
    Path(snakemake.input.key),
    Path(snakemake.params.folder),
    [Path(p) for p in snakemake.input.answers],
    Path(snakemake.output.json),
    Path(snakemake.output.cases),
    Path(snakemake.output.readers),
    level=snakemake.params.level,
)
