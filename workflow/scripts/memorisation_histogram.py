"""The memorisation audit's distance histogram."""
import sys
from pathlib import Path

from ctdiff.plots import audit_histogram

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
audit_histogram(Path(snakemake.input.metrics), Path(snakemake.output[0]))
