"""Patient-level train/test split of the converted items."""
from pathlib import Path

from ctdiff.config import section_from_dict
from ctdiff.ingest.split import write_split
from ctdiff.logs import to_file
from ctdiff.plan import converted_items

to_file(snakemake.log[0])
s = section_from_dict("split", snakemake.params.split)
train, test = write_split(
    converted_items(Path(snakemake.input.cohort)),
    Path(snakemake.output.train),
    Path(snakemake.output.test),
    test=s.test,
    seed=s.seed,
)
print(f"{len(train)} training items, {len(test)} test items")
