"""FID and MS-SSIM of one synthetic set (the main samples, or one sampler of the comparison) against the
held-out real volumes; memorisation audit against the training volumes."""
import sys
from pathlib import Path

import torch

from ctdiff.data.split import read_ids
from ctdiff.metrics.compare import sampling_provenance
from ctdiff.metrics.evaluate import evaluate

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
torch.set_num_threads(snakemake.threads)
e = snakemake.params.evaluate
folder = Path(snakemake.params.volumes)
real = [folder / f"{item}.nii.gz" for item in read_ids(snakemake.input.test)]
train = [folder / f"{item}.nii.gz" for item in read_ids(snakemake.input.train)]
evaluate(
    real,
    [Path(p) for p in snakemake.input.synthetic],
    Path(snakemake.output[0]),
    train=train,
    med3d_weights=Path(e["med3d_weights"]) if e["med3d_weights"] else None,
    med3d_depth=e["med3d_depth"],
    normalise=e["normalise"],
    msssim_window=e["msssim_window"],
    seed=e["seed"],
    n_boot=e["bootstrap"],
    ci_level=e["ci_level"],
    device="cuda" if torch.cuda.is_available() else "cpu",
    provenance=sampling_provenance(Path(snakemake.input.model), **snakemake.params.run, seed=snakemake.params.seed),
)
