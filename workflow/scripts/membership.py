"""The membership-inference audit of one model: its training volumes against the held-out ones (the test split),
scored with the checkpoint's EMA weights; a checkpoint that is not this model is refused."""
from pathlib import Path

import torch

from ctdiff.config import read_job_settings, section_from_dict
from ctdiff.ingest.split import read_ids
from ctdiff.launch import gpu_job
from ctdiff.logs import to_file
from ctdiff.metrics.membership import membership_audit

to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
folder = Path(snakemake.params.volumes)
with gpu_job(int(snakemake.resources.gpu)) as device:  # the GPUs of the rule's gpu resource, else the CPU
    membership_audit(
        Path(snakemake.input.model),
        [folder / f"{item}.nii.gz" for item in read_ids(snakemake.input.train)],
        [folder / f"{item}.nii.gz" for item in read_ids(snakemake.input.test)],
        Path(snakemake.output[0]),
        section_from_dict("privacy", snakemake.params.privacy),
        expected=read_job_settings("train", snakemake.params.settings),  # what the checkpoint must record
        n_boot=snakemake.params.bootstrap["n_boot"],
        level=snakemake.params.bootstrap["level"],
        device=device,
    )
