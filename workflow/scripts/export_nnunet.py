"""An nnU-Net v2 raw dataset: the real training split, a sample set, or both (ctdiff.export.nnunet)."""
from pathlib import Path

from ctdiff.export.nnunet import export
from ctdiff.ingest.split import read_ids
from ctdiff.logs import to_file

to_file(snakemake.log[0])
train = snakemake.input.get("train", [])  # the training split, for the real and combined arms
export(
    Path(snakemake.output[0]).parent,  # the dataset folder, whose dataset.json is the declared output
    tuple(snakemake.params.hu_window),
    volumes=Path(snakemake.params.volumes),
    masks=Path(snakemake.params.nodules),
    items=read_ids(train[0]) if train else (),
    samples=[Path(p) for p in snakemake.input.get("samples", [])],
)
