"""Patient-level train/test split of the converted items."""
import sys
from pathlib import Path

from ctdiff.data.cohort import converted_items
from ctdiff.data.split import write_split

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
item_patient = converted_items(Path(snakemake.input.cohort))
train, test = write_split(
    item_patient, Path(snakemake.output.train), Path(snakemake.output.test), **snakemake.params.split
)
print(f"{len(train)} training items, {len(test)} test items")
