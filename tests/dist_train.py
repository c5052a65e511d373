"""Run by tests/test_distributed.py under `accelerate launch`: train, then save each rank's weights.

Arguments: the output folder, then optionally the number of steps and the log interval (default 5 and 1);
each rank writes its process id to ``pid{rank}`` before training, so a test can signal one rank alone.
"""
import os
import sys
from pathlib import Path

import torch
from accelerate import PartialState

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_config  # noqa: E402
from ctdiff.training.loop import train  # noqa: E402

out = Path(sys.argv[1])
steps, log_every = (int(a) for a in sys.argv[2:4]) if len(sys.argv) > 2 else (5, 1)
rank = int(os.environ["RANK"])  # set by the launcher; the training's Accelerator makes the process group
(out / f"pid{rank}").write_text(str(os.getpid()))
files = sorted((out / "volumes").glob("*.nii.gz"))
model = train(files, out / "model.pt", out / "log.csv", out / "state",
              tiny_config(steps=steps, batch_size=4, checkpoint_every=100_000, log_every=log_every),
              progress=rank == 0)
state = PartialState()
torch.save({"world": state.num_processes, "weights": model.state_dict()}, out / f"rank{state.process_index}.pt")
