"""Convert one item's chosen DICOM series to an int16 HU NIfTI with a QC row."""
import sys
from pathlib import Path

from ctdiff.data.convert import convert_item

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
convert_item(
    Path(snakemake.params.root),
    Path(snakemake.input.series),
    snakemake.wildcards.item,
    Path(snakemake.output.nifti),
    Path(snakemake.output.qc),
)
