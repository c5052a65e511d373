"""The blinded reader study folder, its zip and its key."""
from pathlib import Path

from ctdiff.config import section_from_dict
from ctdiff.logs import to_file
from ctdiff.reader.study import write_study

to_file(snakemake.log[0])
write_study(
    Path(snakemake.input.test),
    Path(snakemake.params.volumes),
    [Path(p) for p in snakemake.input.synthetic],
    section_from_dict("reader_study", snakemake.params.reader_study),
    tuple(snakemake.params.hu_window),
    Path(snakemake.params.folder),
    Path(snakemake.output.zip),
    Path(snakemake.output.key),
)
