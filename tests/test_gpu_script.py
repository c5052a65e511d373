"""benchmarks/gpu.sh in smoke mode, in this environment (CPU), on a few parts: the results file written after
every part, a part over its budget recorded as cut while the others keep their rows, nvidia-smi's odd
replies, the carried wheels and the import check that stops the run before any part.

The whole `gpu.sh --smoke` (torch.compile included, several minutes) is benchmarks/gpu_rehearsal.sh's job."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU_SH = ROOT / "benchmarks" / "gpu.sh"

pytestmark = [pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                 reason="gpu.sh needs bash and coreutils' timeout"),
              pytest.mark.slow]  # each test runs gpu.sh's parts as processes: minutes


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.update({"PYTHON": sys.executable, "WHEELS": str(tmp_path / "no-wheels"), **extra})
    return env


def _run(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(GPU_SH), "--smoke", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _script(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_cut_part_is_recorded_and_the_others_keep_their_numbers(tmp_path):
    out = tmp_path / "out"
    # nvidia-smi present but answering something that is not a number
    fake = _script(tmp_path / "bin" / "nvidia-smi", "#!/bin/sh\necho '[N/A]'\n")
    # A Python that, when the sample part starts, keeps a copy of the results file as it is at that moment.
    snapshot = tmp_path / "before-sample.json"
    python = _script(tmp_path / "python", f"""#!/bin/sh
case "$1" in benchmarks/sample.py) cp "{out}/gpu-results.json" "{snapshot}" ;; esac
exec "{sys.executable}" "$@"
""")
    env = _env(tmp_path, PYTHON=str(python), PATH=f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    proc = _run(["--out", str(out), "--parts", "sample,step-reference", "--budget", "sample=3"], env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    before = json.loads(snapshot.read_text())
    assert before["complete"] is False
    assert [p["part"] for p in before["parts"]] == ["step-reference"]  # the run's order, not the option's
    assert before["pending"] == ["sample"]
    assert before["parts"][0]["status"] == "ok"

    doc = json.loads((out / "gpu-results.json").read_text())
    assert doc["complete"] is True and doc["pending"] == []
    assert doc["machine"]["nvidia_smi"] == "[N/A]"
    step, sample = doc["parts"]
    assert step["part"] == "step-reference" and step["status"] == "ok" and step["exit"] == 0
    row = next(r for r in step["rows"] if "s_per_step" in r)
    assert row["variant"] == "reference" and row["s_per_step"] > 0
    assert step["gpu_used_mib_before"] is None and step["gpu_used_mib_max"] is None
    assert sample["part"] == "sample" and sample["budget_s"] == 3
    assert sample["status"] == "cut" and sample["cut_at_budget"] and sample["exit"] in (124, 137)
    assert sample["seconds"] < 3 + 10 + 5  # the budget, timeout's grace before KILL, slack
    assert "nvidia-smi: missing, failing or odd ([N/A])" in (out / "gpu.log").read_text()
    assert any(line.split()[:2] == ["sample", "cut"] for line in proc.stdout.splitlines())  # the closing table


def test_deadline_skips_a_part_that_cannot_start(tmp_path):
    out = tmp_path / "out"
    proc = _run(["--out", str(out), "--parts", "step-reference", "--deadline", "1"],
                _env(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (part,) = json.loads((out / "gpu-results.json").read_text())["parts"]
    assert part["part"] == "step-reference" and part["status"] == "skipped" and part["exit"] is None


def _wheel(folder: Path, name: str, module: str) -> Path:
    """A minimal pure-Python wheel of distribution ``name`` 0.1 holding ``module``.py."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-0.1-py3-none-any.whl"
    info = f"{name}-0.1.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{module}.py", "WHERE = 'carried'\n")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


def test_wheels_of_missing_packages_are_installed_and_a_missing_module_stops_the_run(tmp_path):
    out, wheels = tmp_path / "out", tmp_path / "wheels"
    _wheel(wheels, "ctdiff_gpu_probe", "ctdiff_gpu_probe")  # not installed here: installed from the wheel
    _wheel(wheels, "pytest", "pytest_shadow")  # installed here: left alone
    # nibabel made unimportable, as on a machine without it
    shadow = tmp_path / "shadow" / "nibabel"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'nibabel'\", name='nibabel')\n")
    env = _env(tmp_path, WHEELS=str(wheels), PYTHONPATH=str(shadow.parent))
    proc = _run(["--out", str(out), "--parts", "step-reference"], env, timeout=120)
    assert proc.returncode == 1
    assert "missing module(s): nibabel" in proc.stdout
    doc = json.loads((out / "gpu-results.json").read_text())
    assert doc["parts"] == [] and doc["pending"] == ["step-reference"] and doc["complete"] is False
    setup = doc["setup"]
    assert setup["installed"] == ["ctdiff_gpu_probe-0.1-py3-none-any.whl"]
    assert [w.split(" ")[0] for w in setup["not_installed"]] == ["pytest-0.1-py3-none-any.whl"]
    assert setup["imports"]["missing"] == ["nibabel"] and not setup["imports"]["ok"]
    assert "ctdiff.files" in setup["imports"]["failed"]
