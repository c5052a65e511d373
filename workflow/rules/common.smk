# Config validation, the item lists (chosen by discover, then converted) and path helpers.
import json
import os

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from ctdiff.config import from_dict, to_dict
from ctdiff.data.cohort import converted_items
from ctdiff.metrics.compare import comparison_runs

min_version("9.0")

validate(config, "../schemas/config.schema.yaml")
try:
    CFG = from_dict(config)
except ValueError as err:
    raise WorkflowError(str(err)) from None

R = CFG.results
DICOM_ROOT = f"{R}/dicom" if CFG.data.source == "phantom" else CFG.data.root
ENV = "../../envs/ctdiff.yaml"
SAMPLES = [f"{R}/samples/{i:04d}.nii.gz" for i in range(CFG.sample.n)]
SAMPLES_HU = [f"{R}/samples/hu/{i:04d}.nii.gz" for i in range(CFG.sample.n)] if CFG.sample.hu else []


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


def sample_options(run=None, hu=None):
    """`ctdiff sample` options from the sample section, with ``run`` (sampler, steps, eta) replacing its
    sampler setting for a compared sampler; a change of any of them reruns the rule."""
    s = {**section("sample"), **(run or {})}
    options = [f"-n {s['n']}", f"--sampler {s['sampler']}", f"--eta {s['eta']}", f"--batch-size {s['batch_size']}",
               f"--seed {s['seed']}", f"--precision {s['precision']}"]
    if s["steps"] is not None:
        options.append(f"--steps {s['steps']}")
    options += ["--compile"] * s["compile"] + ["--hu"] * (s["hu"] if hu is None else hu)
    return " ".join(options)


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
    return [f"{R}/compare/{tag}/samples/{i:04d}.nii.gz" for i in range(CFG.sample.n)]


def evaluate_settings():
    """The evaluate section without compare_samplers: what scoring one synthetic set depends on, so adding or
    removing a compared sampler reruns no existing evaluation."""
    return {k: v for k, v in section("evaluate").items() if k != "compare_samplers"}


def sampler_table_input(wildcards=None):
    """samplers.tsv when a comparison is configured, else nothing (the report then has no sampler table)."""
    return [f"{R}/metrics/samplers.tsv"] if COMPARE else []
