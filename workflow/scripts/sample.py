"""Draw the synthetic volumes from the trained model."""
import sys
from pathlib import Path

import torch

from ctdiff.generate import generate

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
torch.set_num_threads(snakemake.threads)
s = snakemake.params.sample
generate(
    Path(snakemake.input.model),
    [Path(p) for p in snakemake.output],
    Path(snakemake.params.cache),
    sampler=s["sampler"],
    steps=s["steps"],
    eta=s["eta"],
    batch_size=s["batch_size"],
    seed=s["seed"],
)
