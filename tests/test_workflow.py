"""The workflow as a user drives it: lint, dry-run, a tiny end-to-end run, and rerun-only-stale.

The tests of the end-to-end run (the ``run_dir`` fixture, minutes) are marked ``slow``."""
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from conftest import unactivated_env
from ctdiff.reader.study import FIXED_MTIME

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "tiny.yaml"
DEMO = "wavelet-flow"  # config/config.yaml's main model (tests/tiny.yaml's is paper)


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """This env's ``snakemake`` script run as ``.venv/bin/snakemake`` is by a user who did not activate the
    venv: its bin folder is not on PATH, so every rule must find ctdiff and Accelerate through the
    interpreter Snakemake runs in."""
    cmd = [str(Path(sys.executable).parent / "snakemake"), "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=unactivated_env(), timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def planned_jobs(proc: subprocess.CompletedProcess, main: str = "paper") -> dict[str, int]:
    """{job kind: count} from the job blocks of a dry run. A kind is the rule's name, and for the rules that
    serve every model what the job is for, ``main`` being the main model's name: train, membership, sample and
    evaluate of the main model's own set keep their names; of a compared sampler's set they are sample_compare
    and evaluate_compare; of a variant, train_variant, membership_variant, sample_variant, evaluate_variant,
    sample_variant_compare and evaluate_variant_compare. The downstream stage's jobs are downstream_real (once per
    run), downstream_sample and downstream_synthetic / downstream_combined (its arms), each of a variant with
    _variant."""
    jobs: dict[str, int] = {}
    rule, kinds = None, []
    for line in (proc.stdout + "\n" + proc.stderr).splitlines() + [""]:
        if match := re.match(r"(?:local)?(?:rule|checkpoint) (\w+):$", line):
            rule = match.group(1)
            kinds.append(rule)
        elif rule and (match := re.match(r"\s+wildcards: (.*)", line)):
            wildcards = dict(item.split("=", 1) for item in match.group(1).split(", "))
            if "model" in wildcards and rule in ("train", "membership", "sample", "evaluate"):
                kind = rule + ("_variant" if wildcards["model"] != main else "")
                kinds[-1] = kind + ("_compare" if wildcards.get("set", "main") != "main" else "")
            elif "model" in wildcards and rule in ("downstream", "downstream_sample"):
                kind = rule + (f"_{wildcards['arm']}" if "arm" in wildcards else "")
                kinds[-1] = kind + ("_variant" if wildcards["model"] != main else "")
        elif not line.startswith(" "):
            rule = None
    for kind in kinds:
        jobs[kind] = jobs.get(kind, 0) + 1
    return jobs


def planned_rules(proc: subprocess.CompletedProcess, main: str = "paper") -> set[str]:
    """The job kinds of a dry run (:func:`planned_jobs`)."""
    return set(planned_jobs(proc, main))


COMPARE_RULES = {"sample_compare", "evaluate_compare", "variant_table"}
VARIANT_RULES = {"train_variant", "membership_variant", "sample_variant", "evaluate_variant",
                 "sample_variant_compare", "evaluate_variant_compare"}


def test_lint_is_clean(tmp_path):
    proc = snakemake(tmp_path, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dry_run_of_the_default_config(tmp_path):
    proc = snakemake(tmp_path, "-n", "--cores", "2")
    assert {"phantom", "discover", "split", "train", "membership", "sample", "evaluate", "figure", "report", "all",
            "reader_study", "reader_analysis"} <= planned_rules(proc, DEMO)
    jobs = planned_jobs(proc, DEMO)  # config.yaml compares Heun-15 with its main Euler-30 set
    assert (jobs["sample_compare"], jobs["evaluate_compare"], jobs["variant_table"]) == (1, 1, 1), jobs
    assert not set(jobs) & VARIANT_RULES, jobs  # config.yaml lists no variant
    assert f"results/models/{DEMO}/samples/heun-15/0001.nii.gz" in proc.stdout


def test_dry_run_of_the_demo_with_the_papers_row(tmp_path):
    """config/demo_paper.yaml adds the paper's recipe as a variant: trained, sampled (DDPM-1000 and the compared
    DDIM-50, which fits eps) and scored by the same rules; the demo's own row compares Heun only."""
    proc = snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(REPO / "config" / "config.yaml"),
                     str(REPO / "config" / "demo_paper.yaml"))
    jobs = planned_jobs(proc, DEMO)
    assert jobs["train_variant"] == 1 and jobs["sample_variant_compare"] == 1 and jobs["sample_compare"] == 1, jobs
    assert "results/models/paper/metrics/ddim-50.json" in proc.stdout
    assert "results/models/paper/samples/heun-15" not in proc.stdout
    assert f"results/models/{DEMO}/samples/ddim-50" not in proc.stdout


def test_dry_run_of_a_nodule_conditioned_run_plans_the_nodule_figure(tmp_path):
    change = tmp_path / "change.yaml"
    change.write_text("model:\n  condition: nodules\nsample:\n  guidance: 2.0\n")
    rules = planned_rules(snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(TINY), str(change)))
    assert {"train", "sample", "evaluate", "nodule_figure", "report"} <= rules, rules
    assert "nodule_figure" not in planned_rules(snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(TINY)))


@pytest.mark.parametrize("compare", ["[]", "[{sampler: euler, steps: 30}]"])
def test_dry_run_plans_no_comparison_unless_one_is_configured(tmp_path, compare):
    """An empty list, or one naming only the sample section's own setting, adds no job and no table."""
    change = tmp_path / "change.yaml"
    change.write_text(f"evaluate:\n  compare_samplers: {compare}\n")
    proc = snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(change))
    rules = planned_rules(proc, DEMO)
    assert {"sample", "evaluate", "report"} <= rules and not rules & (COMPARE_RULES | VARIANT_RULES), rules
    assert "variants.tsv" not in proc.stdout


def test_dry_run_plans_no_membership_audit_unless_enabled(tmp_path):
    """privacy.enabled: false drops the membership job and the evaluate rule's input on it."""
    change = tmp_path / "change.yaml"
    change.write_text("privacy:\n  enabled: false\n")
    off = planned_jobs(snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(TINY), str(change)))
    on = planned_jobs(snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(TINY)))
    assert on["membership"] == 1 and "membership" not in off and off["evaluate"] == 1, (on, off)


#: A nodule-conditioned variant: the downstream stage (enabled in tests/tiny.yaml) applies to it alone.
NODULES_VARIANT = "  - {name: nodules, model: {condition: nodules}}\n"
DOWNSTREAM_RULES = {"downstream_real", "downstream_sample_variant", "downstream_synthetic_variant",
                    "downstream_combined_variant"}


def test_dry_run_plans_the_downstream_stage_only_for_a_conditioned_model_with_it_enabled(tmp_path):
    """tests/tiny.yaml enables the stage, but its paper model is unconditional (no masks): nothing is planned. A
    conditioned variant gets its own samples (training split's masks) and two arms; the real arm runs once."""
    assert not planned_rules(snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(TINY))) & DOWNSTREAM_RULES
    variant = tmp_path / "variant.yaml"
    variant.write_text("variants:\n" + NODULES_VARIANT)
    proc = snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(TINY), str(variant))
    jobs = planned_jobs(proc)
    assert {rule: jobs.get(rule) for rule in DOWNSTREAM_RULES} == dict.fromkeys(DOWNSTREAM_RULES, 1), jobs
    assert "results/models/nodules/downstream/samples/0001.nii.gz" in proc.stdout
    assert "results/models/paper/downstream" not in proc.stdout
    off = tmp_path / "off.yaml"
    off.write_text("downstream:\n  enabled: false\n")
    jobs = planned_jobs(snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(TINY), str(variant), str(off)))
    assert not set(jobs) & DOWNSTREAM_RULES and jobs["train_variant"] == 1, jobs


def test_bad_config_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  learning_rate: 0.1\n")
    proc = snakemake(tmp_path, "-n", "--configfile", str(bad), check=False)
    assert proc.returncode != 0
    assert "learning_rate" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    snakemake(work, "--cores", "2", "--configfile", str(TINY))
    return work / "results"


@pytest.mark.slow
def test_end_to_end_outputs(run_dir):
    inventory = pd.read_csv(run_dir / "qc" / "inventory.tsv", sep="\t", keep_default_na=False)
    chosen = inventory[inventory.decision == "chosen"]
    assert len(chosen) == 5 and (chosen.modality == "CT").all()
    assert (inventory.decision == "rejected").any(), "the phantom's distractor series must be rejected"

    items = sorted(chosen.patient)
    cohort = pd.read_csv(run_dir / "qc" / "cohort.tsv", sep="\t", keep_default_na=False)
    assert sorted(cohort.item) == items and (cohort.decision == "converted").all()
    summary = pd.read_csv(run_dir / "qc" / "summary.tsv", sep="\t", keep_default_na=False)
    usable = summary[(summary.stage == "cohort") & (summary.reason == "items")]
    assert list(usable["count"]) == [5]
    for item in items:
        hu = nib.load(run_dir / "nifti" / item / "hu.nii.gz")
        assert hu.get_data_dtype() == np.int16
        pre = nib.load(run_dir / "preprocessed" / f"{item}.nii.gz")
        data = np.asarray(pre.dataobj)
        assert data.dtype == np.float32 and data.shape == (16, 16, 16)
        assert data.min() >= 0.0 and data.max() <= 1.0 and data.max() > 0.5
        assert np.allclose(pre.header.get_zooms(), 24.0)

    train = (run_dir / "splits" / "train.txt").read_text().split()
    test = (run_dir / "splits" / "test.txt").read_text().split()
    assert sorted(train + test) == items and len(test) == 2

    log = pd.read_csv(run_dir / "models" / "paper" / "train" / "log.csv")
    assert list(log.step) == [1, 2, 3, 4] and np.isfinite(log.loss).all()
    for i in range(2):
        img = nib.load(run_dir / "models" / "paper" / "samples" / "main" / f"{i:04d}.nii.gz")
        data = np.asarray(img.dataobj)
        assert data.dtype == np.float32 and data.shape == (16, 16, 16)
        assert 0.0 <= data.min() and data.max() <= 1.0
        hu = nib.load(run_dir / "models" / "paper" / "samples" / "main" / "hu" / f"{i:04d}.nii.gz")
        assert hu.get_data_dtype() == np.int16 and np.allclose(hu.affine, img.affine)
        assert np.abs(np.asarray(hu.dataobj) - (-1000 + 1400 * data)).max() <= 0.5 + 1e-3

    metrics = json.loads((run_dir / "models" / "paper" / "metrics" / "main.json").read_text())
    assert np.isfinite(metrics["fid"]) and metrics["n_real"] == 2 and metrics["n_synthetic"] == 2
    assert 0.0 <= metrics["msssim_nearest_real"]["mean"] <= 1.0
    assert metrics["provenance"]["checkpoint_step"] == 4
    assert (run_dir / "figures" / "figure1.png").stat().st_size > 10_000
    assert (run_dir / "figures" / "figure1.pdf").read_bytes()[:5] == b"%PDF-"
    assert (run_dir / "figures" / "samples.png").exists()
    assert (run_dir / "figures" / "closest_pairs.png").stat().st_size > 5_000
    assert 'id="closest-pairs"' in (run_dir / "report.html").read_text()
    compared = json.loads((run_dir / "models" / "paper" / "metrics" / "ddim-10.json").read_text())
    assert compared["provenance"]["sampler"] == "ddim" and compared["provenance"]["network_evaluations"] == 10
    assert metrics["provenance"]["network_evaluations"] == 50 and metrics["provenance"]["sampler_steps"] == 50
    assert compared["real_volumes"] == metrics["real_volumes"] == [f"{i}.nii.gz" for i in test]
    assert metrics["bootstrap"]["n_boot"] == 200 and "msssim_diversity" in metrics["bootstrap"]
    table = pd.read_csv(run_dir / "metrics" / "variants.tsv", sep="\t")
    assert list(table["variant"]) == ["paper"] * 2 and list(table["set"]) == ["main", "ddim-10"]
    assert list(table["network_evaluations"]) == [50, 10]
    assert table["fid"].tolist() == [metrics["fid"], compared["fid"]]
    # cost: 4 logged steps give 3 intervals after the start-up; both sets were timed on this CPU
    assert (table["train_s_per_step"] > 0).all() and (table["train_steps"] == 4).all()
    assert table["train_hours"][0] == pytest.approx(table["train_s_per_step"][0] * 4 / 3600)
    assert (table["sampling_s_per_volume"] > 0).all() and table["train_machine"][0].startswith("1 × ")
    assert table["sampling_machine"][0] == table["train_machine"][0]
    assert "## Variants and samplers" in (run_dir / "report.md").read_text()
    anatomy = metrics["anatomy"]  # the phantom's test volumes: a body with two lungs each, even at 16³ of 24 mm
    assert anatomy["hu_window"] == [-1000.0, 400.0] and anatomy["counts"]["real"]["2_lungs"] == 2
    assert [r["volume"] for r in anatomy["per_volume"]["real"]] == metrics["real_volumes"]
    assert table["two_lungs_share"].tolist() == [anatomy["summary"]["two_lungs_share_synthetic"],
                                                 compared["anatomy"]["summary"]["two_lungs_share_synthetic"]]
    assert (run_dir / "figures" / "anatomy.png").stat().st_size > 5_000
    assert "## Anatomy (HU)" in (run_dir / "report.md").read_text() and 'id="anatomy"' in (
        run_dir / "report.html").read_text()
    assert "9.70" in (run_dir / "report.md").read_text()
    # the membership audit: once for the model, copied into both sets; 3 training and 2 held-out volumes
    audit = json.loads((run_dir / "models" / "paper" / "metrics" / "membership.json").read_text())
    assert metrics["membership"] == compared["membership"] == audit and audit["n_per_side"] == 2
    assert set(audit["non_members"]) == {f"{i}.nii.gz" for i in test} and set(audit["members"]) < {
        f"{i}.nii.gz" for i in train}
    assert table["mia_loss_auc"].tolist() == [audit["attacks"]["loss"]["auc"]] * 2
    assert table["mia_t_error_auc"].tolist() == [audit["attacks"]["t_error"]["auc"]] * 2
    assert "## Privacy" in (run_dir / "report.md").read_text() and 'id="privacy"' in (run_dir / "report.html").read_text()
    assert "data:image/png;base64" in (run_dir / "report.html").read_text()
    key = json.loads((run_dir / "reader" / "key.json").read_text())  # 4 cases: the 2 held-out volumes, 2 samples
    assert sorted((c["truth"], c["source"]) for c in key["cases"]) == sorted(
        [("real", f"preprocessed/{i}.nii.gz") for i in test] + [("synthetic", f"models/paper/samples/main/{i:04d}.nii.gz") for i in range(2)])
    assert sorted(p.name for p in (run_dir / "reader" / "study" / "cases").iterdir()) == sorted(
        f"{c['case']}.js" for c in key["cases"])
    # the study folder holds only what write_study wrote, all dated 2000-01-01 (no .snakemake_timestamp with
    # the real time, which Snakemake writes into a directory() output), and so does the zip
    study = run_dir / "reader" / "study"
    assert {p.stat().st_mtime for p in study.rglob("*")} | {study.stat().st_mtime} == {FIXED_MTIME}
    assert not list(study.rglob(".*"))
    with zipfile.ZipFile(run_dir / "reader" / "study.zip") as zf:
        assert sorted(i.filename for i in zf.infolist()) == sorted(
            f"study/{p.relative_to(study).as_posix()}" for p in study.rglob("*") if p.is_file())
    assert "No answers yet" in (run_dir / "report.md").read_text()
    assert not list(run_dir.rglob(".*.tmp*")), "no temporary file may be left behind"


@pytest.mark.slow
def test_nothing_reruns_when_nothing_changed(run_dir):
    proc = snakemake(run_dir.parent, "-n", "--cores", "2", "--configfile", str(TINY))
    assert planned_rules(proc) == set(), proc.stdout


@pytest.mark.slow
def test_returned_answers_rerun_only_the_analysis_and_the_report(run_dir, tmp_path):
    """An answer file put in the answers folder reruns the reader analysis and the report, nothing else."""
    key = json.loads((run_dir / "reader" / "key.json").read_text())
    answers = tmp_path / "answers"
    answers.mkdir()
    (answers / "a.json").write_text(json.dumps({
        "format": "ctdiff-reader-answers", "study": key["study"], "reader": "A", "exported": "",
        "answers": [{"case": c["case"], "answer": "real", "confidence": 3} for c in key["cases"]]}))
    change = tmp_path / "answers.yaml"
    change.write_text(f"reader_study:\n  answers: {answers}\n")
    proc = snakemake(run_dir.parent, "-n", "--cores", "2", "--configfile", str(TINY), str(change))
    assert planned_rules(proc) == {"reader_analysis", "report", "all"}, proc.stdout


@pytest.mark.slow
def test_another_sampler_reruns_only_the_comparison(run_dir, tmp_path):
    change = tmp_path / "change.yaml"
    change.write_text("evaluate:\n  compare_samplers: [{sampler: ddim, steps: 10}, {sampler: dpmpp, steps: 5}]\n")
    proc = snakemake(run_dir.parent, "-n", "--cores", "2", "--configfile", str(TINY), str(change))
    jobs = planned_jobs(proc)
    assert set(jobs) == COMPARE_RULES | {"report", "all"}, jobs
    assert jobs["sample_compare"] == jobs["evaluate_compare"] == 1 and "models/paper/metrics/dpmpp-5.json" in proc.stdout


VARIANTS = """variants:
  - {name: cosine, train: {lr_schedule: cosine}}
  - {name: small, model: {channels: [4, 8]}, sample: {sampler: ddim, steps: 10}}
"""


def test_dry_run_plans_each_variant_by_the_same_rules(tmp_path):
    """A variant's jobs are the main model's rules with another {model}, under results/models/; the main
    model's paths do not move. small's own sampler is the compared DDIM-10, so it compares nothing more."""
    change = tmp_path / "variants.yaml"
    change.write_text(VARIANTS)
    plain = snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(TINY))
    proc = snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(TINY), str(change))
    jobs = planned_jobs(proc)
    assert {rule: jobs[rule] for rule in VARIANT_RULES} == {
        "train_variant": 2, "membership_variant": 2, "sample_variant": 2, "evaluate_variant": 2,
        "sample_variant_compare": 1, "evaluate_variant_compare": 1}, jobs
    for path in ("results/models/cosine/train/model.pt", "results/models/small/samples/main/0001.nii.gz",
                 "results/models/cosine/metrics/ddim-10.json", "results/models/small/metrics/main.json"):
        assert path in proc.stdout, path
    assert "results/models/small/samples/ddim-10/" not in proc.stdout
    outputs = set(re.findall(r"output: (.*)", plain.stdout))
    assert outputs <= set(re.findall(r"output: (.*)", proc.stdout))  # every main output where it was


def test_dry_run_plans_a_cosine_noise_schedule_variant(tmp_path):
    """diffusion.beta_schedule: cosine passes the workflow's config validation as a variant and is planned by the
    variant rules like any other row."""
    change = tmp_path / "variants.yaml"
    change.write_text("variants:\n  - {name: cosbeta, diffusion: {beta_schedule: cosine}}\n")
    jobs = planned_jobs(snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(TINY), str(change)))
    assert jobs["train_variant"] == jobs["sample_variant"] == jobs["evaluate_variant"] == 1, jobs


def test_bad_variant_stops_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("variants:\n  - {name: small, model: {width: 8}}\n")
    proc = snakemake(tmp_path, "-n", "--configfile", str(TINY), str(bad), check=False)
    assert proc.returncode != 0
    assert "variants[0] (small): model.width is no key a variant can set (allowed in model: channels" in (
        proc.stdout + proc.stderr)


@pytest.mark.slow
def test_adding_a_variant_reruns_only_that_variant(run_dir, tmp_path):
    change = tmp_path / "variants.yaml"
    change.write_text(VARIANTS)
    proc = snakemake(run_dir.parent, "-n", "--cores", "2", "--configfile", str(TINY), str(change))
    jobs = planned_jobs(proc)
    assert set(jobs) == VARIANT_RULES | {"variant_table", "report", "all"}, jobs
    assert jobs["train_variant"] == 2 and jobs["variant_table"] == 1


@pytest.mark.slow
def test_variants_run_end_to_end_beside_the_main_run(run_dir, tmp_path):
    """In a copy of the finished run: the paper's row (eps, voxels, DDPM), a flow-matching variant (Euler) and a
    wavelet + flow variant (Heun) train, sample and are scored by the same rules; the table puts the paper's rows
    first, each with its own cost, compares DDIM only where it fits (eps), and a second call finds nothing to do."""
    work = tmp_path / "copy"
    shutil.copytree(run_dir.parent, work, symlinks=True)  # copy2 keeps the times Snakemake compares
    change = tmp_path / "variants.yaml"
    change.write_text("variants:\n"
                      "  - {name: flow, diffusion: {objective: flow}, sample: {sampler: euler, steps: 5}}\n"
                      "  - {name: wavelet-flow, model: {representation: wavelet}, diffusion: {objective: flow},\n"
                      "     sample: {sampler: heun, steps: 3}}\n")
    snakemake(work, "--cores", "2", "--configfile", str(TINY), str(change))
    results = work / "results"
    table = pd.read_csv(results / "metrics" / "variants.tsv", sep="\t")
    assert list(zip(table["variant"], table["set"])) == [("paper", "main"), ("paper", "ddim-10"), ("flow", "main"),
                                                         ("wavelet-flow", "main")]
    assert list(table["network_evaluations"]) == [50, 10, 5, 5]  # Heun: 2 per step but the last
    main = json.loads((results / "models" / "paper" / "metrics" / "main.json").read_text())
    for name, sampler in (("flow", "euler"), ("wavelet-flow", "heun")):
        m = json.loads((results / "models" / name / "metrics" / "main.json").read_text())
        assert m["provenance"]["sampler"] == sampler and m["real_volumes"] == main["real_volumes"]
        row = table[table["variant"] == name].iloc[0]
        assert row["fid"] == m["fid"] and row["train_s_per_step"] > 0 and row["sampling_s_per_volume"] > 0
        volume = nib.load(results / "models" / name / "samples" / "main" / "0000.nii.gz")
        assert volume.shape == (16, 16, 16) and np.isfinite(volume.get_fdata()).all()
    assert "| wavelet-flow | main | heun | 3 |" in (results / "report.md").read_text()
    proc = snakemake(work, "-n", "--cores", "2", "--configfile", str(TINY), str(change))
    assert planned_rules(proc) == set(), proc.stdout


@pytest.mark.slow
def test_new_interval_settings_rescore_without_resampling(run_dir, tmp_path):
    change = tmp_path / "change.yaml"
    change.write_text("evaluate:\n  ci_level: 0.9\n")
    proc = snakemake(run_dir.parent, "-n", "--cores", "2", "--configfile", str(TINY), str(change))
    rules = planned_rules(proc)
    assert {"evaluate", "evaluate_compare", "variant_table", "report"} <= rules, rules
    assert not rules & {"train", "sample", "sample_compare", "figure"}, rules


@pytest.mark.slow
def test_changed_preprocessing_reruns_only_what_follows(run_dir, tmp_path):
    change = tmp_path / "change.yaml"
    change.write_text("preprocess:\n  spacing_mm: 20.0\n")
    proc = snakemake(run_dir.parent, "-n", "--cores", "2", "--configfile", str(TINY), str(change))
    rules = planned_rules(proc)
    assert {"preprocess", "train", "sample", "evaluate", "figure", "report"} <= rules
    assert not rules & {"phantom", "discover", "convert", "split"}, rules


@pytest.mark.slow
def test_snakemake_report_holds_figure_and_metrics(run_dir):
    out = run_dir / "snakemake_report.html"
    snakemake(run_dir.parent, "--configfile", str(TINY), "--report", str(out))
    page = out.read_text(errors="replace")
    assert "figure1.png" in page and "main.json" in page
    assert "report.html" in page and "summary.tsv" in page and "variants.tsv" in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_html_report_renders_in_headless_chromium(run_dir, tmp_path):
    page = (run_dir / "report.html").resolve().as_uri()
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert re.search(r'<img id="figure1"[^>]*src="data:image/png;base64,', dom)
    metrics = re.search(r'<div id="metrics">(.*?)</div>', dom, flags=re.S).group(1)
    assert "FID" in metrics and "9.70" in metrics and "0.266" in metrics
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1000,1600", page], capture_output=True,
                   timeout=120)
    image = plt.imread(shot)
    dark = (image[..., :3].mean(axis=-1) < 0.2).mean()
    assert dark > 0.02, "the rendered page shows no dark image area: Figure 1 did not render"


@pytest.mark.slow
def test_a_nodule_conditioned_variant_trains_samples_and_is_scored_through_the_rules(run_dir, tmp_path):
    """In a copy of the finished run: a model.condition: nodules variant with guidance trains on the phantom's
    masks, draws sample i with the i-th held-out mask (sorted test split) and is scored; the downstream stage runs
    for it alone."""
    from ctdiff.files import load_volume

    work = tmp_path / "copy"
    shutil.copytree(run_dir.parent, work, symlinks=True)
    change = tmp_path / "nodules.yaml"
    change.write_text("variants:\n  - {name: nodules, model: {condition: nodules}, "
                      "sample: {sampler: ddim, steps: 10, guidance: 2.0}}\n")
    snakemake(work, "--cores", "2", "--configfile", str(TINY), str(change))
    results = work / "results"
    variant = results / "models" / "nodules"
    metrics = json.loads((variant / "metrics" / "main.json").read_text())
    assert metrics["nodules"]["synthetic"]["n_volumes"] == 2 and metrics["nodules"]["real"]["n_volumes"] == 2
    assert "nodules" not in json.loads((results / "models" / "paper" / "metrics" / "main.json").read_text())
    assert metrics["provenance"]["guidance"] == 2.0 and metrics["provenance"]["network_evaluations"] == 20
    assert any((variant / "train_state" / "conditions").glob("*.npy"))
    test = sorted((results / "splits" / "test.txt").read_text().split())
    for i in range(2):  # sample.n = 2 = the test split: no cycling
        drawn, _ = load_volume(variant / "samples" / "main" / "nodules" / f"{i:04d}.nii.gz")
        real, _ = load_volume(results / "preprocessed" / "nodules" / f"{test[i]}.nii.gz")
        assert np.array_equal(drawn, real)
        assert (variant / "samples" / "main" / "nodules" / f"{i:04d}.tsv").read_text() == \
            (results / "preprocessed" / "nodules" / f"{test[i]}.tsv").read_text()
    # the downstream stage (tests/tiny.yaml enables it): its own samples carry the training split's masks, the
    # real arm runs once, the variant's two arms beside it, all scored on the 2 held-out volumes
    train = sorted((results / "splits" / "train.txt").read_text().split())
    for i in range(2):
        drawn, _ = load_volume(variant / "downstream" / "samples" / "nodules" / f"{i:04d}.nii.gz")
        real, _ = load_volume(results / "preprocessed" / "nodules" / f"{train[i]}.nii.gz")
        assert np.array_equal(drawn, real)
    arms = [json.loads(path.read_text()) for path in (results / "downstream" / "real.json",
                                                      variant / "downstream" / "synthetic.json",
                                                      variant / "downstream" / "combined.json")]
    assert [(a["arm"], a["n_real"], a["n_synthetic"], a["n_volumes"]) for a in arms] == \
        [("real", 3, 0, 2), ("synthetic", 0, 2, 2), ("combined", 3, 2, 2)]
    assert all(a["settings"]["steps"] == 4 and 0.0 <= a["dice"] <= 1.0 for a in arms)
    assert "## Downstream use" in (results / "report.md").read_text()
    table = pd.read_csv(results / "metrics" / "variants.tsv", sep="\t")
    rows = table[table.variant == "nodules"]
    assert (rows["downstream_real_dice"] == arms[0]["dice"]).all()
    assert (rows["downstream_combined_dice"] == arms[2]["dice"]).all()
    assert table[table.variant == "paper"]["downstream_real_dice"].isna().all()


def job_resources(proc: subprocess.CompletedProcess) -> dict[str, dict[str, str]]:
    """{rule: its resources} from the job blocks of a dry run (one job per rule is enough here)."""
    found, rule = {}, None
    for line in (proc.stdout + "\n" + proc.stderr).splitlines():
        if match := re.match(r"(?:local)?rule (\w+):$", line):
            rule = match.group(1)
            found.setdefault(rule, {})
        elif rule and (match := re.match(r"\s+resources: (.*)", line)):
            found[rule] = dict(item.split("=", 1) for item in match.group(1).split(", "))
        elif not line.startswith(" "):
            rule = None
    return found


def test_every_rule_that_runs_a_network_gets_gpus_from_both_profiles(tmp_path):
    """The rules that declare a gpu resource (those that train, sample or evaluate every model and sample set)
    all get GPUs from profiles/gpu and profiles/slurm; under the GPU profile no such job is left on the CPU
    (the compared samplers once ran there: days of work at the paper's scale)."""
    import yaml

    change = tmp_path / "variants.yaml"
    change.write_text(VARIANTS + NODULES_VARIANT)  # a conditioned variant: the downstream rules are planned too
    args = ["-n", "--configfile", str(TINY), str(change)]
    declared = {rule for rule, res in job_resources(snakemake(tmp_path, "--cores", "2", *args)).items()
                if "gpu" in res}
    assert {"train", "membership", "sample", "evaluate", "downstream_sample", "downstream_real",
            "downstream"} <= declared
    on_gpus = job_resources(snakemake(tmp_path, "--profile", str(REPO / "profiles" / "gpu"), *args))
    assert {rule: int(on_gpus[rule]["gpu"]) >= 1 for rule in declared} == dict.fromkeys(declared, True), on_gpus
    slurm = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())["set-resources"]
    assert {rule for rule in declared if slurm.get(rule, {}).get("gpu", 0) >= 1} == declared
