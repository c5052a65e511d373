"""One arm of the downstream stage: a nodule segmenter trained on the real training split, on a model's
downstream samples or on both, scored on the held-out real volumes (ctdiff.downstream.stage)."""
from pathlib import Path

import torch

from ctdiff.config import section_from_dict
from ctdiff.downstream.stage import downstream_arm, sample_pairs
from ctdiff.ingest.split import read_ids
from ctdiff.launch import gpu_job
from ctdiff.logs import to_file

to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
volumes, masks = Path(snakemake.params.volumes), Path(snakemake.params.nodules)


def pairs(split):
    return [(volumes / f"{item}.nii.gz", masks / f"{item}.nii.gz") for item in read_ids(split)]


with gpu_job(int(snakemake.resources.gpu)) as device:  # the GPUs of the rule's gpu resource, else the CPU
    downstream_arm(
        snakemake.params.arm,
        real=pairs(snakemake.input.train),  # the arm takes the sources it trains on (ctdiff.downstream.stage)
        synthetic=sample_pairs(getattr(snakemake.input, "samples", ())),  # the real arm's rule has no samples
        test=pairs(snakemake.input.test),
        settings=section_from_dict("downstream", snakemake.params.downstream),
        out=Path(snakemake.output[0]),
        n_boot=snakemake.params.bootstrap["n_boot"],
        level=snakemake.params.bootstrap["level"],
        model=snakemake.params.model,
        device=device,
    )
