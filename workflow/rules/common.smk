# Config validation, the item lists (chosen by discover, then converted) and path helpers. Every decision
# is a function of ctdiff.plan, which imports nothing heavy: every snakemake call parses these files.
import json
import os
import shlex
import sys

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod
from snakemake.utils import min_version, validate

from ctdiff.config import from_dict, schema_checker, to_dict, variant_config
from ctdiff.options import NAME_REGEX, TAG_REGEX
from ctdiff.overrides import coerce_config
from ctdiff.plan import (
    answer_files,
    answers_folder,
    comparison_runs,
    compared_sample,
    converted_items,
    dicom_tree,
    nodule_folder,
    row_names,
    sample_condition_options,
    sample_files,
    sample_options,
    train_condition_options,
    table_rows,
    variant_sample,
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
SAMPLES = sample_files(f"{R}/samples", CFG.sample.n)
SAMPLES_HU = sample_files(f"{R}/samples/hu", CFG.sample.n) if CFG.sample.hu else []


def section(name):
    """A config section as a plain dict: rule params, so a change reruns exactly the rules that use it."""
    return to_dict(getattr(CFG, name))


# Item ids become folder and file names: no path separators.
wildcard_constraints:
    item=r"[A-Za-z0-9._-]+",
    variant=NAME_REGEX,


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


def nodule_inputs(cfg, split=False):
    """What training (split=False) or sampling (split=True: also the test split naming the held-out masks) of
    a model.condition: nodules row reads: every converted item's preprocessed mask; nothing for none."""
    if cfg.model.condition != "nodules":
        return []
    masks = [f"{nodule_folder(cfg)}/{item}.nii.gz" for item in converted()]
    return masks + ([f"{R}/splits/test.txt"] if split else [])


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


def train_settings(cfg):
    """The sections a training run depends on, as the train rules pass them to `ctdiff train`."""
    return json.dumps({name: to_dict(getattr(cfg, name)) for name in ("model", "diffusion", "train", "preprocess")})


def srun(wildcards, resources):
    """The srun prefix that starts one launcher per node when a train job spans several (SLURM)."""
    return "srun --ntasks-per-node=1 " if int(resources.get("nodes", 1)) > 1 else ""


def guidance_of(settings):
    """{"guidance": w} when a sample section guides (w != 1: two network evaluations per step), else nothing,
    so that the evaluate rules of unguided sets keep their params."""
    return {"guidance": settings.guidance} if settings.guidance != 1.0 else {}


def sample_setting(settings):
    """The sampler setting of a sample section as the evaluate rules record it (steps unresolved)."""
    return {"sampler": settings.sampler, "steps": settings.steps, "eta": settings.eta, **guidance_of(settings)}


# The model variants (config `variants`): {name: merged config}, without the main row. Empty = no variant jobs.
VARIANTS = {name: variant_config(CFG, name) for name in row_names(CFG)[1:]}
# Every (variant, sampler) pair the run evaluates, the main config's rows first: the variants table's rows.
ROWS = table_rows(CFG)


def variant(name):
    """The merged config of a variant; a name `variants` does not list stops the run."""
    if name not in VARIANTS:
        raise WorkflowError(f"variants/{name}: no such entry in variants (configured: {', '.join(VARIANTS) or 'none'})")
    return VARIANTS[name]


def variant_compare_run(name, tag):
    """The resolved setting of a compared sampler of a variant (its config's comparison_runs)."""
    runs = comparison_runs(variant(name))
    if tag not in runs:
        raise WorkflowError(f"variants/{name}/compare/{tag}: no such sampler for this variant "
                            f"(configured: {', '.join(runs) or 'none'})")
    return runs[tag]


def nodule_figure_input(wildcards=None):
    """figures/nodules.png when the main run is nodule-conditioned, else nothing (no figure in the report)."""
    return [f"{R}/figures/nodules.png"] if CFG.model.condition == "nodules" else []


def variant_table_input(wildcards=None):
    """variants.tsv when the run compares anything (a sampler or a variant), else nothing (no table in the
    report)."""
    return [f"{R}/metrics/variants.tsv"] if len(ROWS) > 1 else []


def study_settings():
    """The reader_study section without answers: where answers are collected changes no study."""
    return {k: v for k, v in section("reader_study").items() if k != "answers"}
