# Config validation, the item lists (chosen by discover, then converted) and the models. Every decision
# is a function of ctdiff.plan, which imports nothing heavy: every snakemake call parses these files.
import json
import os
import re
import shlex
import sys

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod
from snakemake.utils import min_version, validate

from ctdiff.config import from_dict, schema_checker, to_dict, variant_config
from ctdiff.options import TAG_REGEX
from ctdiff.overrides import coerce_config
from ctdiff.plan import (
    MAIN_SET,
    answer_files,
    answers_folder,
    converted_items,
    dicom_exports,
    dicom_tree,
    downstream_condition_options,
    downstream_file,
    downstream_files,
    downstream_sample_settings,
    evaluate_settings,
    membership_file,
    membership_inputs,
    metrics_file,
    model_config,
    model_folder,
    nnunet_export,
    nnunet_exports,
    nodule_folder,
    row_names,
    sample_condition_options,
    sample_files,
    sample_settings,
    samples_folder,
    set_sample,
    set_setting,
    study_settings,
    table_rows,
    train_condition_options,
    train_settings,
)

min_version("9.0")

SCHEMA = os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml")
with open(SCHEMA, encoding="utf-8") as fh:  # --config hands over numbers, booleans and null as strings
    config.update(coerce_config(config, yaml.safe_load(fh)))
validate(config, SCHEMA)

try:  # each variant's merged config goes through the same schema, then from_dict's checks
    CFG = from_dict(config, schema_check=schema_checker(SCHEMA))
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
# Every model of the run, the main one first: {name: its config} (variants merged into the main config).
MODELS = {name: model_config(CFG, name) for name in row_names(CFG)}
M = model_folder(CFG, "{model}")  # one layout for every model: {results}/models/{model}/
# What Figure 1, the report and the reader study show: the main model's own sample set and its metrics.
SAMPLES = sample_files(samples_folder(CFG, CFG.name), CFG.sample.n)
SAMPLES_HU = sample_files(f"{samples_folder(CFG, CFG.name)}/hu", CFG.sample.n) if CFG.sample.hu else []
METRICS = metrics_file(CFG, CFG.name)
TRAIN = f"{model_folder(CFG, CFG.name)}/train"
# Every (model, set) pair the run evaluates, the main model's first: the variants table's rows.
ROWS = table_rows(CFG)
# Every (model, set) written as DICOM, with export.dicom: true (none otherwise).
DICOM_EXPORTS = dicom_exports(CFG)


def section(name):
    """A config section as a plain dict: rule params, so a change reruns exactly the rules that use it."""
    return to_dict(getattr(CFG, name))


# Item ids become folder and file names: no path separators. A model is one of MODELS, a sample set main
# or a compared sampler's tag (the folder names ctdiff.options.tag writes).
wildcard_constraints:
    item=r"[A-Za-z0-9._-]+",
    model="|".join(re.escape(name) for name in MODELS),
    set=f"{MAIN_SET}|{TAG_REGEX}",
    arm="synthetic|combined",  # export_nnunet's and downstream's; their real arms are rules of their own
    dataset=r"Dataset\d{3}_[A-Za-z0-9][A-Za-z0-9_.+-]*",


def items():
    """Item ids chosen by the discover checkpoint (one per patient, or per CT series with series: all)."""
    with open(checkpoints.discover.get().output.series) as fh:
        return sorted(json.load(fh))


def convert_qc(wildcards=None):
    """The convert QC row of every chosen item."""
    return [f"{R}/qc/convert/{item}.tsv" for item in items()]


def convert_folders(wildcards=None):
    """The convert output folder of every chosen item (its annotation QC when it converted)."""
    return [f"{R}/nifti/{item}" for item in items()]


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


def nodule_inputs(cfg, split=False):
    """What training (split=False) or sampling (split=True: also the test split naming the held-out masks) of
    a model.condition: nodules row reads: every converted item's preprocessed mask; nothing for none."""
    if cfg.model.condition != "nodules":
        return []
    masks = [f"{nodule_folder(cfg)}/{item}.nii.gz" for item in converted()]
    return masks + ([f"{R}/splits/test.txt"] if split else [])


def srun(wildcards, resources):
    """The srun prefix that starts one launcher per node when a train job spans several (SLURM)."""
    return "srun --ntasks-per-node=1 " if int(resources.get("nodes", 1)) > 1 else ""


def nodule_figure_input(wildcards=None):
    """figures/nodules.png when the main run is nodule-conditioned, else nothing (no figure in the report)."""
    return [f"{R}/figures/nodules.png"] if CFG.model.condition == "nodules" else []


def nnunet_export_input(wildcards=None):
    """The dataset.json of every nnU-Net export the run writes (export.nnunet: true), else nothing."""
    return [f"{e.folder}/dataset.json" for e in nnunet_exports(CFG)]


def nnunet_dataset(wildcards, arm, model=None):
    """The dataset folder name the run gives (arm, model), checked against the one asked for."""
    try:
        expected = nnunet_export(CFG, arm, model)
    except ValueError as err:
        raise WorkflowError(str(err)) from None
    if os.path.basename(expected.folder) != wildcards.dataset:
        raise WorkflowError(f"{wildcards.dataset}: this run's {arm} nnU-Net export is {expected.folder}")
    return wildcards.dataset


def real_masks():
    """The consensus mask of every converted item (the real arm takes those of the training split)."""
    return [f"{nodule_folder(CFG)}/{item}.nii.gz" for item in converted()]


def variant_table_input(wildcards=None):
    """variants.tsv when the run compares anything (a sampler or a variant), else nothing (no table in the
    report)."""
    return [f"{R}/metrics/variants.tsv"] if len(ROWS) > 1 else []
