"""What machine ran a stage, for the cost columns of the variants table: the accelerator's name (CUDA device
name, or the CPU's model name from ``/proc/cpuinfo``), how many processes shared the work and, on a CPU, the
torch threads of each. Training records it in its checkpoint, sampling in ``sampling.json`` beside the samples.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch


def cpu_name() -> str:
    """The CPU's model name (``lscpu``'s "Model name"), or the architecture where the system does not say."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe(device: torch.device | str, processes: int = 1) -> dict[str, Any]:
    """``{"type", "name", "processes", "threads"}`` of ``processes`` processes each on a device like
    ``device`` (``threads``: torch threads per process on a CPU, None on a GPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return {"type": "cuda", "name": torch.cuda.get_device_name(device), "processes": processes, "threads": None}
    return {"type": device.type, "name": cpu_name() if device.type == "cpu" else device.type,
            "processes": processes, "threads": torch.get_num_threads()}


def label(machine: dict[str, Any] | None) -> str | None:
    """A machine :func:`describe` recorded, as a table cell: ``2 × NVIDIA H200``, ``1 × AMD EPYC 9R14
    (CPU, 2 threads)``; None for None (a file written before machines were recorded)."""
    if not machine:
        return None
    text = f"{machine['processes']} × {machine['name']}"
    if machine["type"] == "cpu":
        text += f" (CPU, {machine['threads']} threads)"
    return text
