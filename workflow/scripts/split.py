"""Patient-level train/test split of the converted items."""
import sys
from pathlib import Path

from ctdiff.config import section_from_dict
from ctdiff.data.split import write_split
from ctdiff.plan import converted_items

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
s = section_from_dict("split", snakemake.params.split)
train, test = write_split(
    converted_items(Path(snakemake.input.cohort)),
    Path(snakemake.output.train),
    Path(snakemake.output.test),
    test=s.test,
    seed=s.seed,
)
print(f"{len(train)} training items, {len(test)} test items")
