# Config validation, the item lists (chosen by discover, then converted) and path helpers. Every decision
# is a function of ctdiff.plan, which imports nothing heavy: every snakemake call parses these files.
import json
import os
import shlex
import sys

from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod
from snakemake.utils import min_version, validate

from ctdiff.config import from_dict, to_dict
from ctdiff.options import TAG_REGEX
from ctdiff.plan import (
    answer_files,
    answers_folder,
    comparison_runs,
    compared_sample,
    converted_items,
    dicom_tree,
    sample_files,
    sample_options,
)

min_version("9.0")

validate(config, "../schemas/config.schema.yaml")
try:
    CFG = from_dict(config)
except ValueError as err:
    raise WorkflowError(str(err)) from None

R = CFG.results
DICOM = dicom_tree(CFG)  # the phantom written under {results}/dicom, or data.root
ENV = "../../envs/ctdiff.yaml"
# The interpreter of the shell rules (train, sample), which run "${CTDIFF_PYTHON:-python}": this Snakemake's
# own, as for script rules, so that `.venv/bin/snakemake` works without the venv on PATH; under --sdm conda
# it is left unset and the rule environment's python runs. A shell prefix, not a param, so that a venv in
# another folder reruns nothing.
if DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method:
    shell.prefix(f"export CTDIFF_PYTHON={shlex.quote(sys.executable)}; ")
SAMPLES = sample_files(f"{R}/samples", CFG.sample.n)
SAMPLES_HU = sample_files(f"{R}/samples/hu", CFG.sample.n) if CFG.sample.hu else []


def section(name):
    """A config section as a plain dict: rule params, so a change reruns exactly the rules that use it."""
    return to_dict(getattr(CFG, name))


# Item ids become folder and file names: no path separators.
wildcard_constraints:
    item=r"[A-Za-z0-9._-]+",


def items():
    """Item ids chosen by the discover checkpoint (one per patient, or per CT series with series: all)."""
    with open(checkpoints.discover.get().output.series) as fh:
        return sorted(json.load(fh))


def convert_qc(wildcards=None):
    """The convert QC row of every chosen item."""
    return [f"{R}/qc/convert/{item}.tsv" for item in items()]


def converted():
    """Items converted to a volume, from the cohort checkpoint; stops the run only when none is left."""
    cohort = checkpoints.cohort.get().output
    usable = converted_items(cohort.table)
    if not usable:
        raise WorkflowError(
            f"no usable scan left: no CT series passed discovery and conversion; see {cohort.summary}, "
            f"{R}/qc/inventory.tsv and {cohort.table} for the reasons"
        )
    return sorted(usable)


def preprocessed(wildcards=None):
    return [f"{R}/preprocessed/{item}.nii.gz" for item in converted()]


# The sampler comparison (evaluate.compare_samplers): {tag: resolved sampler setting}, without an entry equal
# to the sample section's (that set is the table's main row). Empty = no comparison jobs.
COMPARE = comparison_runs(CFG)


def compare_run(tag):
    """The resolved setting of a compared sampler; a tag evaluate.compare_samplers does not name stops the run."""
    if tag not in COMPARE:
        raise WorkflowError(f"compare/{tag}: no such entry in evaluate.compare_samplers "
                            f"(configured: {', '.join(COMPARE) or 'none'})")
    return COMPARE[tag]


def compare_samples(tag):
    """The sample files of one compared sampler: sample.n volumes, like samples/."""
    return sample_files(f"{R}/compare/{tag}/samples", CFG.sample.n)


def evaluate_settings():
    """The evaluate section without compare_samplers: what scoring one synthetic set depends on, so adding or
    removing a compared sampler reruns no existing evaluation."""
    return {k: v for k, v in section("evaluate").items() if k != "compare_samplers"}


def sampler_table_input(wildcards=None):
    """samplers.tsv when a comparison is configured, else nothing (the report then has no sampler table)."""
    return [f"{R}/metrics/samplers.tsv"] if COMPARE else []


def study_settings():
    """The reader_study section without answers: where answers are collected changes no study."""
    return {k: v for k, v in section("reader_study").items() if k != "answers"}
