"""The volumes of one sample set in HU (int16), through the preprocessing window."""
from pathlib import Path

from ctdiff.sampling.generate import write_hu
from ctdiff.logs import to_file

to_file(snakemake.log[0])
write_hu([Path(p) for p in snakemake.input.samples], [Path(p) for p in snakemake.output.hu],
         tuple(snakemake.params.hu_window))
