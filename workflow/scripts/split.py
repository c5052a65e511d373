"""Patient-level train/test split of the chosen items."""
import json
import sys
from pathlib import Path

from ctdiff.data.split import write_split

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
with open(snakemake.input.series) as fh:
    item_patient = {item: entry["patient"] for item, entry in json.load(fh).items()}
train, test = write_split(
    item_patient, Path(snakemake.output.train), Path(snakemake.output.test), **snakemake.params.split
)
print(f"{len(train)} training items, {len(test)} test items")
