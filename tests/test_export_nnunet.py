"""The nnU-Net v2 raw export (ctdiff.export.nnunet): its layout and dataset.json, HU and labels against their
sources, the three arms, nnU-Net's own integrity check, the CLI, and the workflow's rules only when asked.

nnU-Net's check runs in a subprocess: with this interpreter when nnunetv2 imports here, else with the one
``CTDIFF_NNUNET_PYTHON`` names (``.ci/run`` makes a venv of its own for nnunetv2, whose torchvision does not
load beside a CPU build of torch); without either it is skipped, saying so."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ctdiff import cli, plan
from ctdiff.config import from_dict
from ctdiff.export.nnunet import export, sample_volumes, write_dataset, real_cases, synthetic_cases
from ctdiff.files import save_volume
from test_workflow import TINY, planned_jobs, snakemake

SIZE = 8
HU_WINDOW = (-1000.0, 400.0)
#: A preprocessed volume's affine: RAS+ axes, 3 mm voxels, an origin off zero.
AFFINE = np.array([[3.0, 0, 0, -12.5], [0, 3.0, 0, 40.25], [0, 0, 3.0, -200.0], [0, 0, 0, 1]])
ITEMS = ("LIDC-IDRI-0002", "LIDC-IDRI-0001", "LIDC-IDRI-0003")


def _volume(rng) -> np.ndarray:
    v = rng.random((SIZE,) * 3).astype(np.float32)
    v.flat[:2] = (0.0, 1.0)  # the window's ends
    return v


def _mask(rng, labels: int) -> np.ndarray:
    """uint8 labels 0..labels (a nodule per label, as the consensus masks number them)."""
    m = np.zeros((SIZE,) * 3, np.uint8)
    for n in range(1, labels + 1):
        i, j, k = rng.integers(1, SIZE - 2, 3)
        m[i:i + 2, j:j + 2, k:k + 2] = n
    return m


@pytest.fixture
def run(tmp_path):
    """A run's files: preprocessed volumes and consensus masks of ``ITEMS`` (one with none, one with two
    nodules), the training split, and a nodule-conditioned model's sample set with its masks beside."""
    rng = np.random.default_rng(0)
    pre = tmp_path / "preprocessed"
    for n, item in enumerate(ITEMS):
        save_volume(pre / f"{item}.nii.gz", _volume(rng), AFFINE)
        save_volume(pre / "nodules" / f"{item}.nii.gz", _mask(rng, n), AFFINE)
    save_volume(pre / "test-item.nii.gz", _volume(rng), AFFINE)  # not in the training split
    save_volume(pre / "nodules" / "test-item.nii.gz", _mask(rng, 1), AFFINE)
    (tmp_path / "train.txt").write_text("\n".join(ITEMS) + "\n")
    samples = tmp_path / "samples" / "main"
    for i in range(2):
        save_volume(samples / f"{i:04d}.nii.gz", _volume(rng), AFFINE)
        save_volume(samples / "nodules" / f"{i:04d}.nii.gz", _mask(rng, 1 + i), AFFINE)
    return tmp_path


def _arm(run: Path, arm: str, out: Path) -> dict:
    items = ITEMS if arm in ("real", "combined") else ()
    samples = sample_volumes(run / "samples" / "main") if arm in ("synthetic", "combined") else ()
    return export(out, HU_WINDOW, volumes=run / "preprocessed", items=items, samples=samples)


def _sources(run: Path, arm: str) -> dict[str, tuple[Path, Path]]:
    """{case: (source volume, source mask)} each arm must hold, written out by hand."""
    real = {f"real_{item}": (run / "preprocessed" / f"{item}.nii.gz", run / "preprocessed" / "nodules" / f"{item}.nii.gz")
            for item in ITEMS}
    synthetic = {f"synthetic_{i:04d}": (run / "samples" / "main" / f"{i:04d}.nii.gz",
                                        run / "samples" / "main" / "nodules" / f"{i:04d}.nii.gz") for i in range(2)}
    return {"real": real, "synthetic": synthetic, "combined": {**real, **synthetic}}[arm]


ARMS = ("real", "synthetic", "combined")


@pytest.mark.parametrize("arm", ARMS)
def test_each_arm_is_an_nnunet_raw_dataset_of_its_sources(run, tmp_path, arm):
    out = tmp_path / "export" / "Dataset500_test"
    meta = _arm(run, arm, out)
    sources = _sources(run, arm)
    assert sorted(p.name for p in out.iterdir()) == ["cases.tsv", "dataset.json", "imagesTr", "labelsTr"]
    assert not [p for p in out.parent.iterdir() if p.name != out.name]  # no temporary folder left
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == sorted(f"{c}_0000.nii.gz" for c in sources)
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == sorted(f"{c}.nii.gz" for c in sources)
    on_disk = json.loads((out / "dataset.json").read_text())
    assert on_disk == meta
    assert (on_disk["channel_names"], on_disk["labels"], on_disk["numTraining"], on_disk["file_ending"]) == (
        {"0": "CT"}, {"background": 0, "nodule": 1}, len(sources), ".nii.gz")
    table = pd.read_csv(out / "cases.tsv", sep="\t")
    assert dict(zip(table["case"], zip(table["image"], table["labels"], table["nodule_voxels"]))) == {
        c: (str(v), str(m), int((np.asarray(nib.load(m).dataobj) > 0).sum())) for c, (v, m) in sources.items()}
    assert set(table["source"]) == {c.split("_")[0] for c in sources}
    lo, hi = HU_WINDOW
    for case, (volume, mask) in sources.items():
        image = nib.load(out / "imagesTr" / f"{case}_0000.nii.gz")
        labels = nib.load(out / "labelsTr" / f"{case}.nii.gz")
        v = np.asarray(nib.load(volume).dataobj, np.float64)
        m = np.asarray(nib.load(mask).dataobj)
        hu = np.asarray(image.dataobj)
        assert hu.dtype == np.float32 and image.shape == labels.shape == v.shape
        np.testing.assert_allclose(hu, lo + v * (hi - lo), rtol=0, atol=1e-4)  # float32 rounding at |HU| <= 1000
        assert hu.min() == lo and hu.max() == hi
        assert np.asarray(labels.dataobj).dtype == np.uint8
        np.testing.assert_array_equal(np.asarray(labels.dataobj), (m > 0).astype(np.uint8))
        np.testing.assert_array_equal(image.affine, AFFINE)
        np.testing.assert_array_equal(labels.affine, AFFINE)


def test_real_cases_are_the_training_split_named_by_item(run):
    cases = real_cases(run / "preprocessed", run / "preprocessed" / "nodules", ITEMS)
    assert [c.name for c in cases] == [f"real_{item}" for item in sorted(ITEMS)]
    with pytest.raises(ValueError, match="LIDC-IDRI-0009.nii.gz does not exist"):
        real_cases(run / "preprocessed", run / "preprocessed" / "nodules", ["LIDC-IDRI-0009"])


def test_samples_of_an_unconditional_model_are_refused_naming_the_key(tmp_path):
    save_volume(tmp_path / "0000.nii.gz", np.zeros((SIZE,) * 3, np.float32), AFFINE)
    with pytest.raises(ValueError, match=r"no nodule mask beside it.*model.condition: nodules"):
        synthetic_cases(sample_volumes(tmp_path))


@pytest.mark.parametrize("change, message", [
    ("shape", r"shape \(8, 8, 9\) is not the shape \(8, 8, 8\)"),
    ("affine", "its affine is not the affine of"),
    ("hu", r"values in \[-1000, 400\], not a volume in \[0, 1\]"),
    ("fraction", "not a label mask"),
])
def test_what_nnunet_could_not_train_on_is_refused_and_nothing_is_left(run, tmp_path, change, message):
    sample = run / "samples" / "main" / "0001.nii.gz"
    mask = sample.parent / "nodules" / sample.name
    if change == "shape":
        save_volume(mask, np.zeros((SIZE, SIZE, SIZE + 1), np.uint8), AFFINE)
    elif change == "affine":
        save_volume(mask, np.zeros((SIZE,) * 3, np.uint8), AFFINE + np.diag([0, 0, 0.01, 0]))
    elif change == "hu":
        save_volume(sample, np.full((SIZE,) * 3, 400, np.float32) - np.eye(SIZE)[:, :, None] * 1400, AFFINE)
    else:
        save_volume(mask, np.full((SIZE,) * 3, 0.5, np.float32), AFFINE)
    out = tmp_path / "export" / "Dataset501_x"
    _arm(run, "real", out)  # an earlier export stays whole when its rewrite fails
    before = sorted(p.name for p in (out / "imagesTr").iterdir())
    with pytest.raises(ValueError, match=message):
        _arm(run, "combined", out)
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == before
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_a_folder_nnunet_would_not_find_and_a_twice_named_case_are_refused(run, tmp_path):
    cases = synthetic_cases(sample_volumes(run / "samples" / "main"))
    with pytest.raises(ValueError, match="Dataset<3 digits>_<name>"):
        write_dataset(tmp_path / "Dataset12_short", cases, HU_WINDOW)
    with pytest.raises(ValueError, match="case synthetic_0000 is given twice"):
        write_dataset(tmp_path / "Dataset012_x", cases + cases[:1], HU_WINDOW)
    with pytest.raises(ValueError, match="no case"):
        write_dataset(tmp_path / "Dataset012_x", [], HU_WINDOW)
    for case in cases:
        save_volume(case.labels, np.zeros((SIZE,) * 3, np.uint8), AFFINE)
    with pytest.raises(ValueError, match="none of its 2 cases has a nodule voxel"):
        write_dataset(tmp_path / "Dataset012_x", cases, HU_WINDOW)
    assert not list(tmp_path.glob("*Dataset012*"))


def test_the_command_line_writes_each_arm(run, tmp_path, capsys):
    base = ["export-nnunet", "--volumes", str(run / "preprocessed"), "--hu-window", "-1000", "400"]
    real = ["--real-items", str(run / "train.txt")]
    synthetic = ["--samples", str(run / "samples" / "main")]
    for name, extra, n in (("Dataset500_real", real, 3), ("Dataset501_m-synthetic", synthetic, 2),
                           ("Dataset502_m-combined", real + synthetic, 5)):
        assert cli.main([*base, *extra, "--out", str(tmp_path / name)]) == 0
        assert json.loads((tmp_path / name / "dataset.json").read_text())["numTraining"] == n
        assert f"{n} cases" in capsys.readouterr().out
    assert cli.main(["export-nnunet", "--out", str(tmp_path / "Dataset503_x")]) == 2
    assert "--real-items" in capsys.readouterr().err


def nnunet_python() -> str | None:
    """An interpreter where nnunetv2 imports: ``CTDIFF_NNUNET_PYTHON``, else this one if it has nnunetv2."""
    if os.environ.get("CTDIFF_NNUNET_PYTHON"):
        return os.environ["CTDIFF_NNUNET_PYTHON"]
    return sys.executable if importlib.util.find_spec("nnunetv2") is not None else None


@pytest.mark.slow  # nnU-Net's check spawns a process that imports torch: about 20 s an arm
@pytest.mark.parametrize("arm", ARMS)
def test_nnunets_own_integrity_check_passes_on_each_arm(run, tmp_path, arm):
    python = nnunet_python()
    if python is None:
        pytest.skip("nnunetv2 is not installed (pip install -e \".[nnunet]\", or CTDIFF_NNUNET_PYTHON naming an "
                    "interpreter that has it)")
    out = tmp_path / "raw" / "Dataset500_test"
    _arm(run, arm, out)
    code = ("import sys\nfrom nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity\n"
            "verify_dataset_integrity(sys.argv[1], 1)\n")
    env = {**os.environ, "nnUNet_raw": str(tmp_path / "raw"), "nnUNet_preprocessed": str(tmp_path / "pre"),
           "nnUNet_results": str(tmp_path / "res")}
    proc = subprocess.run([python, "-c", code, str(out)], capture_output=True, text=True, env=env, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "verify_dataset_integrity Done" in output, output
    # nnU-Net reports origin and direction mismatches as warnings only; there must be none
    assert "Warning" not in output and "Error" not in output, output


def test_the_dataset_ids_give_every_export_of_a_run_its_own():
    cfg = from_dict({"export": {"nnunet": True, "nnunet_id": 700}, "model": {"condition": "nodules"},
                     "variants": [{"name": "plain", "model": {"condition": "none"}},
                                  {"name": "small", "model": {"channels": [32, 64, 128, 256]}}]})
    exports = [(e.arm, e.model, e.id, e.folder) for e in plan.nnunet_exports(cfg)]
    assert exports == [
        ("real", None, 700, "results/export/nnunet/real/Dataset700_real"),
        ("synthetic", "paper", 701, "results/models/paper/export/nnunet/synthetic/Dataset701_paper-synthetic"),
        ("combined", "paper", 702, "results/models/paper/export/nnunet/combined/Dataset702_paper-combined"),
        ("synthetic", "small", 705, "results/models/small/export/nnunet/synthetic/Dataset705_small-synthetic"),
        ("combined", "small", 706, "results/models/small/export/nnunet/combined/Dataset706_small-combined")]
    with pytest.raises(ValueError, match=r"models/plain: the synthetic nnU-Net export needs nodule labels.*"
                                         r"model.condition: none"):
        plan.nnunet_export(cfg, "synthetic", "plain")
    assert plan.nnunet_exports(from_dict({"model": {"condition": "nodules"}})) == []  # export.nnunet: false
    with pytest.raises(ValueError, match=r"export.nnunet_id=996 with 2 models gives nnU-Net dataset ids up to 1000"):
        from_dict({"export": {"nnunet": True, "nnunet_id": 996}, "variants": [{"name": "v", "train": {"lr": 1e-4}}]})


def test_the_workflow_plans_the_export_only_when_asked(tmp_path):
    """Off by default (the paper's run); on, the real arm and both arms of each nodule-conditioned model, none
    of an unconditional one, whose synthetic arm asked for by name is refused naming model.condition."""
    assert not {"export_nnunet_real", "export_nnunet"} & set(
        planned_jobs(snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(TINY))))
    change = tmp_path / "change.yaml"
    change.write_text("model: {condition: nodules}\nexport: {nnunet: true}\n"
                      "variants:\n  - {name: plain, model: {condition: none}}\n")
    proc = snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(TINY), str(change))
    jobs = planned_jobs(proc)
    assert (jobs.get("export_nnunet_real"), jobs.get("export_nnunet")) == (1, 2), jobs
    for folder in ("results/export/nnunet/real/Dataset500_real",
                   "results/models/paper/export/nnunet/synthetic/Dataset501_paper-synthetic",
                   "results/models/paper/export/nnunet/combined/Dataset502_paper-combined"):
        assert f"{folder}/dataset.json" in proc.stdout
    assert "models/plain/export" not in proc.stdout
    asked = "results/models/plain/export/nnunet/synthetic/Dataset503_plain-synthetic/dataset.json"
    refused = snakemake(tmp_path, asked, "-n", "--cores", "2", "--configfile", str(TINY), str(change), check=False)
    assert refused.returncode != 0
    assert "model.condition: none" in refused.stdout + refused.stderr
