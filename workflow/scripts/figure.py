"""Figure 1: the chosen held-out real volume beside the chosen synthetic volume."""
import sys
from pathlib import Path

from ctdiff.data.split import read_ids
from ctdiff.figure import figure1, sample_grid

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
test = read_ids(snakemake.input.test)
f = snakemake.params.figure
if f["real"] >= len(test):
    raise ValueError(f"figure.real={f['real']} but the test set holds {len(test)} volumes")
figure1(
    Path(snakemake.params.volumes) / f"{test[f['real']]}.nii.gz",
    Path(snakemake.input.synthetic[f["synthetic"]]),
    [Path(snakemake.output.png), Path(snakemake.output.pdf)],
    slices=f["slices"],
)
sample_grid([Path(p) for p in snakemake.input.synthetic[:16]], Path(snakemake.output.grid))
