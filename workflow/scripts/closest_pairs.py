"""The memorisation audit's closest synthetic/training pairs as images."""
import sys
from pathlib import Path

from ctdiff.plots import audit_closest_pairs

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
audit_closest_pairs(
    Path(snakemake.input.metrics),
    Path(snakemake.params.samples),
    Path(snakemake.params.volumes),
    Path(snakemake.output[0]),
    n=snakemake.params.n,
)
