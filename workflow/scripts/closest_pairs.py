"""The memorisation audit's closest synthetic/training pairs as images."""
from pathlib import Path

from ctdiff.logs import to_file
from ctdiff.report.plots import audit_closest_pairs

to_file(snakemake.log[0])
audit_closest_pairs(
    Path(snakemake.input.metrics),
    Path(snakemake.params.samples),
    Path(snakemake.params.volumes),
    Path(snakemake.output[0]),
    n=snakemake.params.n,
)
