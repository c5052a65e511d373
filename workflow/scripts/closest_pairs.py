"""The memorisation audit's closest synthetic/training pairs as images."""
import json
import sys
from pathlib import Path

from ctdiff.figure import closest_pairs

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
pairs = json.loads(Path(snakemake.input.metrics).read_text())["memorisation"]["closest_pairs"][:4]
closest_pairs(
    [(Path(snakemake.params.samples) / p["synthetic"], Path(snakemake.params.volumes) / p["train"], p["distance"])
     for p in pairs],
    Path(snakemake.output[0]),
)
