"""What a GPU host needs, checked where the CPU can check it: the torch floor that config/lidc.yaml's
DDP + compile + gradient checkpointing works on, and torch.compile's toolchain asked before any work."""
import sysconfig
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

import ctdiff.machine as machine
from conftest import tiny_config, write_volumes
from ctdiff.config import SampleConfig
from ctdiff.machine import check_compile, compile_needs

ROOT = Path(__file__).parent.parent


def test_the_torch_floor_excludes_releases_where_ddp_compile_and_checkpointing_fail():
    """DDP's graph splitting under torch.compile refused checkpointed regions and custom autograd Functions
    until torch 2.6 (pytorch issues 104674 and 137481)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_req = next(Requirement(d) for d in deps if Requirement(d).name == "torch")
    assert not any(torch_req.specifier.contains(v) for v in ("2.4.0", "2.5.1"))
    assert all(torch_req.specifier.contains(v) for v in ("2.6.0", "2.11.0", "2.13.0"))
    import torch

    assert Version(torch.__version__.split("+")[0]) >= Version("2.6")


@pytest.fixture
def no_toolchain(monkeypatch, tmp_path):
    """A host without compilers or Python headers."""
    for var in ("CC", "CXX"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(machine.shutil, "which", lambda name: None)
    monkeypatch.setattr(machine.sysconfig, "get_paths", lambda paths=sysconfig.get_paths(): {**paths, "include": str(tmp_path)})


def test_compile_needs_names_the_compiler_and_the_headers(no_toolchain, monkeypatch, tmp_path):
    cpu = compile_needs("cpu")
    assert any("C++ compiler (none of g++, clang++, c++" in m for m in cpu)
    assert any(f"{tmp_path / 'Python.h'} is missing" in m for m in cpu)
    cuda = compile_needs("cuda")
    assert any("C compiler (none of gcc, clang" in m for m in cuda)
    monkeypatch.setenv("CC", "/opt/nowhere/cc")
    assert any("CC=/opt/nowhere/cc is not found" in m for m in compile_needs("cuda"))
    with pytest.raises(ValueError, match=r"sample.compile: true needs, for torch.compile on cuda, .*C compiler.*"
                                         r"python3-dev\) or set sample.compile: false"):
        check_compile("sample.compile", "cuda")


def test_compile_needs_finds_a_complete_host(monkeypatch, tmp_path):
    (tmp_path / "Python.h").write_text("")
    monkeypatch.setattr(machine.sysconfig, "get_paths", lambda paths=sysconfig.get_paths(): {**paths, "include": str(tmp_path)})
    monkeypatch.setattr(machine.shutil, "which", lambda name: f"/usr/bin/{name}" if name == "g++" else None)
    monkeypatch.delenv("CXX", raising=False)
    assert compile_needs("cpu") == []
    monkeypatch.setattr(machine.importlib.util, "find_spec", lambda name: None)
    assert any("triton" in m for m in compile_needs("cuda"))


def test_training_with_compile_stops_before_any_work_on_a_host_without_the_toolchain(no_toolchain, tmp_path):
    from ctdiff.training.loop import train

    files = write_volumes(tmp_path / "volumes", 2)
    with pytest.raises(ValueError, match=r"^train.compile: true needs"):
        train(files, tmp_path / "model.pt", tmp_path / "log.csv", tmp_path / "state",
              tiny_config(steps=1, compile=True), progress=False)
    assert not (tmp_path / "state").exists()  # no cache was built


def test_sampling_with_compile_stops_before_any_work_on_a_host_without_the_toolchain(no_toolchain, tmp_path):
    from ctdiff.sampling.generate import generate

    with pytest.raises(ValueError, match=r"^sample.compile: true needs"):
        generate(tmp_path / "model.pt", [tmp_path / "0000.nii.gz"], tmp_path / "cache",
                 SampleConfig(sampler="ddim", steps=2, compile=True), device="cpu", progress=False)
    assert not (tmp_path / "cache").exists()
