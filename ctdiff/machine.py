"""What machine ran a stage, for the cost columns of the variants table: the accelerator's name (CUDA device
name, or the CPU's model name from ``/proc/cpuinfo``), how many processes shared the work and, on a CPU, the
torch threads of each. Training records it in its checkpoint, sampling in ``sampling.json`` beside the samples.
And what a host can do: bf16 on its CPU (:func:`cpu_has_amx_bf16`) or GPU (:func:`cuda_has_native_bf16`), and
what it needs for ``torch.compile`` (:func:`check_compile`), asked before any work.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import sysconfig
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
    (CPU, 2 threads)``; None where no machine was recorded."""
    if not machine:
        return None
    text = f"{machine['processes']} × {machine['name']}"
    if machine["type"] == "cpu":
        text += f" (CPU, {machine['threads']} threads)"
    return text


def cpu_has_amx_bf16() -> bool:
    """Whether this CPU has AMX-BF16 tile instructions (Intel Xeon since Sapphire Rapids).

    Only these made bf16 autocast faster on the CPU: the demo's U-Net trained 2.5x faster than in fp32 with
    them, but 1.2-1.6x slower on the same CPU with oneDNN limited to AVX512-BF16 (docs/facts.md).
    """
    capabilities = getattr(torch.cpu, "get_capabilities", None)  # torch >= 2.9
    if capabilities is not None:
        return bool(capabilities().get("amx_bf16", False))
    # Older torch: every CPU with AMX tiles has AMX-BF16.
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def cuda_has_native_bf16() -> bool:
    """Whether the current CUDA GPU computes in bf16 natively (compute capability 8.0, Ampere, or newer).

    ``torch.cuda.is_bf16_supported()`` also says yes on older cards (Turing, Volta), where bf16 is emulated and
    slower than fp32; this asks the capability itself.
    """
    major, _ = torch.cuda.get_device_capability()
    return major >= 8


def compile_needs(device_type: str) -> list[str]:
    """What ``torch.compile`` (TorchInductor) needs on this host to compile for ``device_type`` and does not
    find, in words (empty when all is there).

    On a CUDA GPU Triton builds a small launcher for every kernel with a C compiler (``CC``, else ``gcc``, else
    ``clang``: what Triton looks for) against ``Python.h``; on the CPU Inductor compiles C++ (``CXX``, else
    ``g++``, ``clang++`` or ``c++``) against the same headers. A host without them fails at the first compiled
    call, after the data caches were built: check this before any work.
    """
    missing = []
    if device_type == "cuda":
        if importlib.util.find_spec("triton") is None:
            missing.append("the triton package (it comes with torch's CUDA builds)")
        variable, names, what = "CC", ("gcc", "clang"), "a C compiler"
    else:
        variable, names, what = "CXX", ("g++", "clang++", "c++"), "a C++ compiler"
    chosen = os.environ.get(variable)
    if not (shutil.which(chosen) if chosen else any(shutil.which(n) for n in names)):
        named = f"{variable}={chosen} is not found" if chosen else f"none of {', '.join(names)} is on PATH"
        missing.append(f"{what} ({named})")
    include = Path(sysconfig.get_paths()["include"])
    if not (include / "Python.h").exists():
        missing.append(f"the Python headers ({include / 'Python.h'} is missing)")
    return missing


def check_compile(key: str, device_type: str) -> None:
    """Refuse ``key: true`` (``train.compile``, ``sample.compile``) where :func:`compile_needs` finds something
    missing, naming the key and what is missing (ValueError)."""
    missing = compile_needs(device_type)
    if missing:
        raise ValueError(f"{key}: true needs, for torch.compile on {device_type}, {' and '.join(missing)}: install "
                         f"them (Debian/Ubuntu: apt-get install build-essential python3-dev) or set {key}: false")
