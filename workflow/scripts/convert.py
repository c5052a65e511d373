"""Convert one item's chosen DICOM series to an int16 HU NIfTI, or record why it cannot be converted."""
from pathlib import Path

from ctdiff.ingest.convert import convert_or_reject
from ctdiff.logs import to_file

to_file(snakemake.log[0])
row = convert_or_reject(
    Path(snakemake.params.root),
    Path(snakemake.input.series),
    snakemake.wildcards.item,
    Path(snakemake.output.nifti),
    Path(snakemake.output.qc),
    recover_stacks=snakemake.params.recover_stacks,
    nodule_consensus=snakemake.params.nodule_consensus,
)
print(f"{row['item']}: {row['decision']} {row['reason']}".rstrip())
