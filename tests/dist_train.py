"""Run by tests/test_distributed.py under `accelerate launch`: train, then save each rank's weights."""
import sys
from pathlib import Path

import torch
from accelerate import PartialState

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_config  # noqa: E402
from ctdiff.train import train  # noqa: E402

out = Path(sys.argv[1])
files = sorted((out / "volumes").glob("*.nii.gz"))
model = train(files, out / "model.pt", out / "log.csv", out / "state",
              tiny_config(steps=5, batch_size=4, checkpoint_every=100), progress=False)
state = PartialState()
torch.save({"world": state.num_processes, "weights": model.state_dict()}, out / f"rank{state.process_index}.pt")
