"""Run by tests/test_distributed.py under `accelerate launch` on two gloo ranks whose collectives give up after
3 s (torch's default process-group timeout, patched here): one rank is made slow where ranks used to wait
for each other in a collective.

``train OUT``: the rank that builds the training-volume cache (the other reuses it) takes 8 s longer, then
both train 2 steps.
``sample OUT CHECKPOINT``: rank 1 takes 8 s longer to draw its samples, then both meet after sampling.
"""
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch.distributed.distributed_c10d as c10d

sys.path.insert(0, str(Path(__file__).parent))
c10d._get_default_timeout = lambda backend: timedelta(seconds=3)

import ctdiff.sampling.generate  # noqa: E402
import ctdiff.training.loop  # noqa: E402
from conftest import tiny_config  # noqa: E402
from ctdiff.config import SampleConfig  # noqa: E402

mode, out = sys.argv[1], Path(sys.argv[2])
rank = int(os.environ["RANK"])
if mode == "train":
    real_set = ctdiff.training.loop.TrainingSet

    def slow_set(*args, **kwargs):
        if not any((out / "state" / "volumes").glob("*.npy")):  # this process builds the cache: 8 s more
            time.sleep(8)
        return real_set(*args, **kwargs)

    ctdiff.training.loop.TrainingSet = slow_set
    files = sorted((out / "volumes").glob("*.nii.gz"))
    ctdiff.training.loop.train(files, out / "model.pt", out / "log.csv", out / "state",
                       tiny_config(steps=2, batch_size=4, checkpoint_every=100_000, log_every=1), progress=False)
else:
    real_sample = ctdiff.sampling.generate.sample

    def slow_sample(*args, **kwargs):
        if rank == 1:
            time.sleep(8)
        return real_sample(*args, **kwargs)

    ctdiff.sampling.generate.sample = slow_sample
    ctdiff.sampling.generate.generate(Path(sys.argv[3]), [out / "samples" / f"{i:04d}.nii.gz" for i in range(2)],
                             out / "cache", SampleConfig(sampler="ddim", steps=2), progress=False)
print(f"rank {rank} done", flush=True)
