"""Every shell command in the README (and docs/) works as typed, in the environment the README builds.

The commands are taken from the Markdown itself: every line of a ```bash block (and the command lines of a
bare ``` block) and every inline code span that starts with a command (``snakemake``, ``ctdiff``,
``python``, ``bash``, ``pip``, ...). Each must be listed in ``COMMANDS`` with how it is checked:

- ``real``: run as typed, in a copy of this checkout with a ``.venv`` made by the README's own install line
  (``python3 -m venv .venv && . .venv/bin/activate && pip install -e .``), nothing of this test's
  environment on ``PATH`` or ``PYTHONPATH``. ``snakemake`` runs that would take minutes get the tiny
  configuration layered (``--configfile tests/tiny.yaml tests/tiny_demo.yaml``: the demo's recipe at 16³).
- ``dry``: run as typed with ``-n`` (Snakemake plans every job and validates the configuration, runs none);
  placeholders such as ``/path/to/LIDC-IDRI`` become files that exist (the phantom DICOM tree of the real run).
- ``skip``: not run, with the reason (needs a GPU, root, ...), shown by ``pytest -ra``.
- ``mention``: a name in the prose (``ctdiff sample``), not a command line.

A command added to the README fails ``test_every_readme_command_is_listed`` until it is listed here, and a
listed command that left the README fails it too. The commands share one workspace, in ``COMMANDS``' order:
the demo's real run first, then what reads its results.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMAND_WORDS = ("snakemake", "ctdiff", "python", "python3", "bash", "pip", "accelerate")
INSTALL = "python3 -m venv .venv && . .venv/bin/activate && pip install -e ."
TINY = "--configfile tests/tiny.yaml tests/tiny_demo.yaml"
LIDC = "/path/to/LIDC-IDRI"
WEIGHTS = "/path/to/resnet_50_23dataset.pth"


@dataclass(frozen=True)
class Check:
    """How one README command is checked: ``how`` is real, dry, skip or mention; ``run`` is the command line
    actually run when it differs from the README's (``{tiny}`` = the tiny configuration); ``expect`` are
    strings its output must hold; ``rules`` the only rules a real Snakemake run may execute."""
    how: str
    why: str = ""
    run: str = ""
    expect: tuple[str, ...] = ()
    rules: frozenset[str] | None = None
    timeout: int = 300


COMMANDS: dict[str, Check] = {
    f"{INSTALL} && snakemake --cores all": Check(
        "real", "the demo: the install is the workspace's, the run gets the tiny configuration",
        run=f"snakemake --cores all {TINY}", timeout=900),
    "snakemake --cores all": Check(
        "real", "rerun after the demo: nothing left to do", run=f"snakemake --cores all {TINY}",
        expect=("Nothing to be done",)),
    "snakemake --report results/snakemake_report.html": Check(
        "real", "Snakemake's own report of the demo's results", run=f"snakemake --report results/snakemake_report.html {TINY}",
        expect=("Report created",)),
    "snakemake --cores all --config figure='{real: 1, synthetic: 1, slices: [10, null, null]}'": Check(
        "real", "only the figure and the report rerun",
        run=f"snakemake --cores all {TINY} --config figure='{{real: 1, synthetic: 1, slices: [10, null, null]}}'",
        rules=frozenset({"figure", "report", "all"})),
    "ctdiff sample --checkpoint results/models/wavelet-flow/train/model.pt -n 10 --sampler euler --steps 30 --out DIR": Check(
        "real", "samples from the demo's (tiny) flow checkpoint"),
    "ctdiff --help": Check("real", "", expect=("usage: ctdiff",)),
    "ctdiff sample --help": Check("real", "", expect=("--checkpoint",)),
    "python -m ctdiff.launch --gpus 4 --dry-run -- -m ctdiff.cli train": Check(
        "real", "prints the command a node would run", expect=("accelerate", "--num_processes")),
    "ctdiff export-nnunet --out nnUNet_raw/Dataset500_real --real-items results/splits/train.txt "
    "--volumes results/preprocessed": Check(
        "skip", "the tiny demo's 16³ volumes hold no nodule voxel, and a dataset without one is refused (nnU-Net "
        "cannot plan it); tests/test_export_nnunet.py runs this command on volumes with nodules"),
    "snakemake --cores all --config sample='{n: 8}'": Check("dry", "draws and scores 8 demo samples"),
    "snakemake --cores all --config model='{condition: nodules}' export='{nnunet: true}'": Check(
        "dry", "docs/nodules.md: retrains the demo nodule-conditioned and writes its three nnU-Net datasets",
        expect=("results/export/nnunet/real/Dataset500_real/dataset.json",
                "results/models/wavelet-flow/export/nnunet/combined/Dataset502_wavelet-flow-combined/dataset.json")),
    "snakemake --cores all --configfile config/config.yaml config/demo_paper.yaml": Check(
        "dry", "adds 8-15 minutes of training and DDPM-1000 sampling", expect=("results/models/paper/train/model.pt",)),
    "snakemake --cores all --configfile config/config.yaml config/demo_nodules.yaml": Check(
        "dry", "docs/nodules.md: the demo nodule-conditioned with the downstream stage (three segmenters)",
        expect=("results/downstream/real.json", "results/models/wavelet-flow/downstream/combined.json")),
    "snakemake --cores 16 --resources mem_mb=28000": Check("dry", "runs the whole demo"),
    "snakemake --config sample='{n: 8, hu: true, steps: null}'": Check(
        "dry", "docs/facts.md: what --config hands over (numbers, booleans and null, read as typed)"),
    f"snakemake --cores all --configfile config/lidc.yaml --config data='{{root: {LIDC}}}' "
    f"evaluate='{{med3d_weights: {WEIGHTS}}}'": Check(
        "dry", "the paper's 128³ run on LIDC-IDRI: the phantom's DICOM tree stands in for the download and an "
        "empty file for the MedicalNet weights"),
    'pip install -e ".[slurm]"': Check("real", "installs the SLURM executor plugin"),
    f"snakemake --profile profiles/slurm --configfile config/lidc.yaml --config data='{{root: {LIDC}}}'": Check(
        "dry", "submits to a SLURM cluster (tests/test_slurm.py runs the profile on a real one)"),
    f"snakemake --profile profiles/gpu --configfile config/lidc.yaml --config data='{{root: {LIDC}}}'": Check(
        "dry", "docs/gpus.md: a GPU workstation (tests/test_workflow.py checks which jobs get GPUs)"),
    "pip install -e .": Check("mention", "the install line the workspace is made with"),
    "ctdiff sample": Check("mention", "the command's name"),
    "accelerate launch": Check("mention", "what the rules start"),
    "python -m ctdiff.launch": Check("mention", "the module's name"),
    'python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && .venv/bin/pip install --no-deps '
    "clean-fid==0.1.35 && .venv/bin/python -m pytest": Check(
        "skip", "the test suite itself, which holds this test"),
    '.venv/bin/python -m pytest -m "not slow"': Check("skip", "the test suite's fast subset"),
    "ctdiff sample --checkpoint model.pt -n 8 --out DIR --nodules-from results/preprocessed/nodules "
    "--nodule-items results/splits/test.txt --guidance 2": Check(
        "skip", "needs a nodule-conditioned checkpoint (model.condition: nodules); tests/test_cli.py and "
        "tests/test_condition.py sample with these options"),
    "ctdiff sample --checkpoint model.pt -n 8 --out DIR --nodule 64,70,60,12 --nodule 40,80,64,6": Check(
        "skip", "needs a nodule-conditioned checkpoint at 128³ (the centres lie outside a demo volume)"),
    "ctdiff sample --checkpoint model.pt -n 8 --out DIR --nodule-mm --nodule=-60,20,-15,12": Check(
        "skip", "needs a nodule-conditioned checkpoint at 128³"),
    "python -m ctdiff.launch --gpus 4 -- -m ctdiff.cli sample ...": Check(
        "skip", "elided ('...'); the same launcher runs above with --dry-run"),
    "bash benchmarks/gpu.sh": Check("skip", "needs a GPU"),
    "bash benchmarks/gpu_wheels.sh": Check(
        "skip", "downloads wheels from the package index (tests/test_gpu_script.py installs carried wheels)"),
    "bash benchmarks/gpu_rehearsal.sh": Check(
        "skip", "builds a fresh venv and runs gpu.sh --smoke offline: about 15 minutes"),
    "bash benchmarks/gpu.sh --smoke": Check("skip", "runs for a few minutes: the GPU benchmarks at tiny size"),
    'pip install -e ".[nnunet]"': Check(
        "skip", "installs nnU-Net and torchvision (gigabytes beside a CUDA torch); .ci/run installs nnunetv2 in a "
        "venv of its own, with which tests/test_export_nnunet.py runs nnU-Net's dataset integrity check"),
    "ctdiff export-nnunet": Check("mention", "the command's name"),
    "export nnUNet_raw=$PWD/nnUNet_raw nnUNet_preprocessed=$PWD/nnUNet_preprocessed "
    "nnUNet_results=$PWD/nnUNet_results": Check("skip", "nnU-Net's folders, for the nnU-Net commands after it"),
    'mkdir -p "$nnUNet_raw" && ln -s "$PWD"/results/export/nnunet/real/Dataset* '
    '"$PWD"/results/models/*/export/nnunet/*/Dataset* "$nnUNet_raw"/': Check(
        "skip", "needs the exports of a nodule-conditioned run (the dry run above plans them) and nnU-Net's folders"),
    "nnUNetv2_plan_and_preprocess -d 500 501 502 -c 3d_fullres --verify_dataset_integrity": Check(
        "skip", "needs nnU-Net and the three exports; tests/test_export_nnunet.py runs the same integrity check on "
        "each arm"),
    "nnUNetv2_train 500 3d_fullres 0": Check("skip", "trains nnU-Net: needs a GPU and hours"),
    "nnUNetv2_train 501 3d_fullres 0": Check("skip", "trains nnU-Net: needs a GPU and hours"),
    "nnUNetv2_train 502 3d_fullres 0": Check("skip", "trains nnU-Net: needs a GPU and hours"),
    "bash tests/slurm/start.sh": Check(
        "skip", "needs root: installs and starts a one-node SLURM cluster (.ci/run does it before the suite)"),
}


def _strip_comment(line: str) -> str:
    """``line`` without a shell comment (`` # ...`` outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def _is_command(text: str) -> bool:
    words = text.split()
    return len(words) > 1 and words[0] in COMMAND_WORDS  # one word is a name


def doc_commands(text: str) -> list[str]:
    """The shell commands of a Markdown text, in order, whitespace normalised: every line of a ```bash (or sh,
    shell, console) block, the lines of a bare ``` block that start with a command word, and the inline code
    spans outside blocks that start with one. Backslash continuations are joined."""
    found = []
    for lang, body in re.findall(r"^```(\w*)[^\n]*\n(.*?)^```", text, flags=re.S | re.M):
        if lang not in ("", "bash", "sh", "shell", "console"):
            continue
        for line in re.sub(r"\\\n", " ", body).splitlines():
            line = " ".join(_strip_comment(line).split())
            if line and (lang or _is_command(line)):
                found.append(line)
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    found += [" ".join(span.split()) for span in re.findall(r"`([^`\n]+)`", prose) if _is_command(span)]
    return list(dict.fromkeys(found))


def all_doc_commands() -> list[str]:
    return list(dict.fromkeys(c for path in DOCS for c in doc_commands(path.read_text(encoding="utf-8"))))


def test_the_parser_finds_blocks_inline_spans_and_continuations():
    text = ("Run `snakemake --cores all` or `--configfile x.yaml`.\n\n```bash\npip install -e \".[slurm]\"  # plugin\n"
            "snakemake --a \\\n  --b\n```\n\n```\nSnakefile   rule all\nctdiff sample --x 1\n```\n\n```yaml\n"
            "snakemake: no\n```\n")
    assert doc_commands(text) == ['pip install -e ".[slurm]"', "snakemake --a --b", "ctdiff sample --x 1",
                                  "snakemake --cores all"]


def test_every_readme_command_is_listed():
    """Every command of README.md and docs/ has its check, and every check its command."""
    found = all_doc_commands()
    unlisted = [c for c in found if c not in COMMANDS]
    assert not unlisted, f"list these in tests/test_readme_commands.py COMMANDS (real, dry or skip): {unlisted}"
    stale = [c for c in COMMANDS if c not in found]
    assert not stale, f"no longer in README.md or docs/, remove from COMMANDS: {stale}"
    assert all(check.how in ("real", "dry", "skip", "mention") for check in COMMANDS.values())
    assert next(iter(COMMANDS)).startswith(INSTALL + " && "), "the README's demo line starts with its install"


def clean_env() -> dict[str, str]:
    """The environment without this test's interpreter: its bin folder off PATH, no PYTHONPATH or venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    here = Path(sys.executable).parent.resolve()
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != here)
    return env


def shell(workspace: Path, command: str, timeout: int) -> subprocess.CompletedProcess:
    """``command`` in ``workspace``'s bash with its ``.venv`` activated, as a user who followed the README."""
    return subprocess.run(["bash", "-c", f". .venv/bin/activate && {command}"], cwd=workspace, env=clean_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A copy of this checkout (tracked and untracked files git does not ignore) with a ``.venv`` made by the
    README's install line, once per module (about 1-2 minutes)."""
    root = tmp_path_factory.mktemp("readme") / "ctdiff"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    proc = subprocess.run(["bash", "-c", INSTALL], cwd=root, env=clean_env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"{INSTALL} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return root


def executed_rules(output: str) -> set[str]:
    """Rule names of the job-stats table Snakemake prints before running."""
    rows = output.split("Job stats:", 1)[1].split("\n\n", 1)[0] if "Job stats:" in output else ""
    return {m for m in re.findall(r"^(\w+)\s+\d+\s*$", rows, flags=re.M) if m != "total"}


@pytest.mark.slow
@pytest.mark.parametrize("command", list(COMMANDS), ids=lambda c: c[:60])
def test_readme_command_works_as_typed(command, workspace):
    check = COMMANDS[command]
    if check.how in ("skip", "mention"):
        pytest.skip(f"{check.how}: {check.why}")
    line = check.run or command
    if check.how == "dry":
        weights = workspace / "weights" / "resnet_50_23dataset.pth"
        weights.parent.mkdir(exist_ok=True)
        weights.touch()
        line = line.replace(LIDC, str(workspace / "results" / "dicom")).replace(WEIGHTS, str(weights)) + " -n"
    proc = shell(workspace, line, check.timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{line}\nfailed ({proc.returncode}):\n{output[-6000:]}"
    for text in check.expect:
        assert text in output, f"{line}: no {text!r} in its output:\n{output[-3000:]}"
    if check.rules is not None:
        ran = executed_rules(output)
        assert ran and ran <= check.rules, f"{line} ran {sorted(ran)}, expected only {sorted(check.rules)}"
    if command == "ctdiff --help":  # the description in whole sentences
        description = output.split("\n\n")[1]
        assert description.rstrip().endswith("."), f"{command}: description cut short:\n{description}"
