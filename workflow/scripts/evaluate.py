"""FID and MS-SSIM of the synthetic volumes against the held-out real volumes; memorisation audit against
the training volumes."""
import sys
from pathlib import Path

import torch

from ctdiff.checkpoint import read_checkpoint
from ctdiff.data.split import read_ids
from ctdiff.metrics.evaluate import evaluate

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
torch.set_num_threads(snakemake.threads)
e, s = snakemake.params.evaluate, snakemake.params.sample
folder = Path(snakemake.params.volumes)
real = [folder / f"{item}.nii.gz" for item in read_ids(snakemake.input.test)]
train = [folder / f"{item}.nii.gz" for item in read_ids(snakemake.input.train)]
step = read_checkpoint(Path(snakemake.input.model))["step"]
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
    provenance={"sampler": s["sampler"], "sampler_steps": s["steps"], "checkpoint_step": step},
)
