"""The memorisation audit's distance histogram."""
from pathlib import Path

from ctdiff.logs import to_file
from ctdiff.report.plots import audit_histogram

to_file(snakemake.log[0])
audit_histogram(Path(snakemake.input.metrics), Path(snakemake.output[0]))
