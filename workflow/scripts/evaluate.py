"""FID and MS-SSIM of one synthetic set (the main samples, or one sampler of the comparison) against the
held-out real volumes; memorisation audit against the training volumes; for a nodule-conditioned checkpoint,
the control of the nodules (the masks beside the samples against the real volumes they came from); the model's
membership-inference audit copied in."""
from pathlib import Path

import torch

from ctdiff.sampling.conditions import evaluation_masks
from ctdiff.config import section_from_dict
from ctdiff.ingest.split import read_ids
from ctdiff.launch import gpu_job
from ctdiff.logs import to_file
from ctdiff.metrics.variant_table import sampling_provenance
from ctdiff.metrics.evaluate import evaluate

to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
folder = Path(snakemake.params.volumes)
synthetic = [Path(p) for p in snakemake.input.synthetic]
with gpu_job(int(snakemake.resources.gpu)) as device:  # the GPUs of the rule's gpu resource, else the CPU
    evaluate(
        [folder / f"{item}.nii.gz" for item in read_ids(snakemake.input.test)],
        synthetic,
        Path(snakemake.output[0]),
        section_from_dict("evaluate", snakemake.params.evaluate),
        train=[folder / f"{item}.nii.gz" for item in read_ids(snakemake.input.train)],
        device=device,
        provenance=sampling_provenance(Path(snakemake.input.model), **snakemake.params.run,
                                       seed=snakemake.params.seed),
        hu_window=tuple(snakemake.params.hu_window),
        workers=snakemake.threads,  # the anatomy's processes
        nodules=evaluation_masks(Path(snakemake.input.model), synthetic, read_ids(snakemake.input.test), folder),
        membership=Path(snakemake.input.membership[0]) if snakemake.input.membership else None,  # privacy.enabled
    )
