"""What the workflow decides when the Snakefile is parsed: where the DICOM tree comes from, which items the
cohort kept, how much memory an item's ingestion jobs declare, which model variants and (variant, sampler)
pairs the run compares and where their files go, the sample file names and the ``ctdiff sample`` options of
a sample set, which answer files the reader study's analysis reads, which sets are exported as DICOM or for
nnU-Net, and which models the downstream stage runs for and where its files go.

Every ``snakemake`` call, a dry run included, parses the Snakefile, so this module imports only the standard
library, :mod:`ctdiff.config` and :mod:`ctdiff.options`: no torch, numpy, pandas or DICOM/NIfTI readers
(``tests/test_plan.py`` checks it in a fresh interpreter). The rules call these functions; the stages' own
code imports them too, so each decision is written once.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from ctdiff.config import JOB_SECTIONS, Config, SampleConfig, job_settings, to_dict, variant_config
from ctdiff.options import ETA_SAMPLERS, SAMPLERS_FOR, tag


@dataclass(frozen=True)
class DicomTree:
    """The DICOM tree that discovery and conversion read: ``root``, written by this run's phantom rule when
    ``phantom`` is true, else an existing tree the run only reads."""

    root: str
    phantom: bool

    @property
    def written(self) -> list[str]:
        """The tree as an output of this run, for the rules that read it to wait for: ``[root]`` for the
        phantom, nothing for an existing tree (a folder outside the run is no rule's output)."""
        return [self.root] if self.phantom else []


def dicom_tree(cfg: Config) -> DicomTree:
    """``data.source`` phantom: the phantom cohort written to ``{results}/dicom``; dicom: ``data.root``."""
    if cfg.data.source == "phantom":
        return DicomTree(f"{cfg.results}/dicom", phantom=True)
    return DicomTree(str(cfg.data.root), phantom=False)


def converted_items(cohort_tsv: Path | str) -> dict[str, str]:
    """``{item: patient}`` of the rows of a cohort table (:func:`ctdiff.ingest.cohort.summarise`) whose decision
    is ``'converted'``: the items every stage after ingestion uses."""
    with open(cohort_tsv, newline="", encoding="utf-8") as fh:
        return {r["item"]: r["patient"] for r in csv.DictReader(fh, delimiter="\t") if r["decision"] == "converted"}


#: Peak resident memory (MB, 10^6 bytes) of one convert / preprocess job, interpreter and imports included:
#: ``base + per_in * voxels / 10^6 + per_out * size**3 / 10^6`` for a series of ``voxels = files x rows x
#: columns`` (the preprocess output, ``size``³ voxels, adds to preprocess only). Least-squares fits to the
#: peaks that ``benchmarks/convert_preprocess.py`` measured for 32 x 32 x 16 and 512 x 512 x 100, 400 and 764
#: slices (preprocess at sizes 64, 128 and 256); the table is in benchmarks/README.md.
INGEST_MEMORY_MB = {  # stage: (base, per million input voxels, per million output voxels)
    "convert": (101.0, 12.13, 0.0),
    "preprocess": (182.0, 8.75, 12.4),
}

#: A job declares the fitted peak times this factor, rounded up to 10 MB: room for the fit's error (up to
#: 15 % below a measured peak), other library versions and Snakemake's script preamble (~15 MB), which the
#: benchmark does not run. Every measured peak lies at least 6 % below what its job declares.
INGEST_MEMORY_MARGIN = 1.25

#: Image matrix assumed for a series whose headers give no Rows or Columns (discovery records 0 there;
#: LIDC-IDRI's CT slices are all 512 x 512).
DEFAULT_MATRIX = (512, 512)


@lru_cache(maxsize=4)
def _series_voxels(path: str, mtime_ns: int, size: int) -> dict[str, int]:
    """``{item: files x rows x columns}`` of a series table; cached per file version, because the workflow
    asks once per job and LIDC-IDRI's table lists ~240,000 file names."""
    with open(path, encoding="utf-8") as fh:
        table = json.load(fh)
    return {item: int(entry["n_files"]) * int(entry["rows"] or DEFAULT_MATRIX[0])
            * int(entry["columns"] or DEFAULT_MATRIX[1]) for item, entry in table.items()}


def mem_mb_for(stage: Literal["convert", "preprocess"], voxels: int, size: int = 0) -> int:
    """The memory (MB) a ``stage`` job declares for a series of ``voxels`` (files x rows x columns) and, for
    preprocess, an output of ``size``³ voxels: :data:`INGEST_MEMORY_MB`'s fit times
    :data:`INGEST_MEMORY_MARGIN`, rounded up to 10 MB. Grows with ``voxels`` and ``size``; the smallest
    series gets the fit's base, the memory of the interpreter and its imports."""
    if stage not in INGEST_MEMORY_MB:
        raise ValueError(f"stage must be one of {', '.join(INGEST_MEMORY_MB)}, got {stage!r}")
    base, per_in, per_out = INGEST_MEMORY_MB[stage]
    peak = base + per_in * voxels / 1e6 + per_out * size**3 / 1e6
    return int(math.ceil(peak * INGEST_MEMORY_MARGIN / 10) * 10)


def ingest_mem_mb(stage: Literal["convert", "preprocess"], series_json: Path | str, item: str,
                  size: int = 0) -> int:
    """The memory (MB) the ``stage`` job of ``item`` declares (the rules' ``mem_mb`` resource, so that
    Snakemake runs jobs together only within ``--resources mem_mb``): :func:`mem_mb_for` of the item's
    files x rows x columns in discovery's series table (:func:`ctdiff.ingest.discover.discover`) and the
    preprocess ``size``. Raises ``ValueError`` naming the table when ``item`` is not in it."""
    st = os.stat(series_json)
    voxels = _series_voxels(str(series_json), st.st_mtime_ns, st.st_size)
    if item not in voxels:
        raise ValueError(f"{item}: not in the series table {series_json}")
    return mem_mb_for(stage, voxels[item], size)


def answers_folder(cfg: Config) -> str:
    """Where the readers' returned answer files go: ``reader_study.answers``, or ``{results}/reader/answers``."""
    return cfg.reader_study.answers or f"{cfg.results}/reader/answers"


def answer_files(cfg: Config) -> list[str]:
    """The answer files in :func:`answers_folder` (``*.json``, ``*.csv``, hidden files left out), sorted: the
    analysis rule's inputs, so that a file added or changed reruns it. No folder = no files."""
    folder = Path(answers_folder(cfg))
    if not folder.is_dir():
        return []
    return sorted(str(p) for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in (".json", ".csv"))


def sample_files(folder: Path | str, n: int) -> list[str]:
    """The files of a sample set of ``n`` volumes: sample ``i`` is ``{folder}/{i:04d}.nii.gz``."""
    return [f"{folder}/{i:04d}.nii.gz" for i in range(n)]


def setting(sampler: str, steps: int | None, eta: float, timesteps: int) -> dict[str, Any]:
    """A sampler setting with ``steps`` resolved (None → T) and ``eta`` kept only where it acts
    (:data:`ctdiff.options.ETA_SAMPLERS`: ddim)."""
    return {"sampler": sampler, "steps": timesteps if steps is None else int(steps),
            "eta": float(eta) if sampler in ETA_SAMPLERS else 0.0}


def comparison_runs(cfg: Config) -> dict[str, dict[str, Any]]:
    """``{tag: resolved setting}`` for each ``evaluate.compare_samplers`` entry that fits ``cfg``'s objective
    (:data:`ctdiff.options.SAMPLERS_FOR`), in config order, leaving out an entry equal to the ``sample``
    section's setting: that set is already drawn, as the row's main set. Tags are :func:`ctdiff.options.tag`
    (``ddim-50``, ``dpmpp-25``, ``ddim-50-eta0.5``). For a variant, pass its config (:func:`ctdiff.config.variant_config`)."""
    T = cfg.diffusion.timesteps
    main = setting(cfg.sample.sampler, cfg.sample.steps, cfg.sample.eta, T)
    fits = SAMPLERS_FOR.get(cfg.diffusion.objective, ())
    runs = {}
    for entry in cfg.evaluate.compare_samplers:
        run = setting(entry.sampler, entry.steps, entry.eta, T)
        if run != main and entry.sampler in fits:
            runs[tag(run)] = run
    return runs


#: The ``set`` drawn with a model's own ``sample`` section (the others are sampler tags).
MAIN_SET = "main"


def row_names(cfg: Config) -> list[str]:
    """The models of the run: the main config's ``name`` first, then ``variants`` in order."""
    return [cfg.name, *(v.name for v in cfg.variants)]


def model_config(cfg: Config, model: str) -> Config:
    """The config model ``model`` is trained and sampled with: the main config for its own name, else the
    variant's merged config; ``ValueError`` naming the configured models for any other name."""
    if model not in row_names(cfg):
        raise ValueError(f"models/{model}: no such model (configured: {', '.join(row_names(cfg))})")
    return variant_config(cfg, model)


def model_folder(cfg: Config, model: str) -> str:
    """Every file of model ``model``, the main one and each variant alike: ``{results}/models/{model}`` with
    ``train/`` (``model.pt``, ``log.csv``), ``train_state/``, ``samples/{set}/``, ``metrics/{set}.json`` and
    ``logs/``."""
    return f"{cfg.results}/models/{model}"


def sample_sets(cfg: Config, model: str) -> list[str]:
    """The sample sets of model ``model``: :data:`MAIN_SET` (its own ``sample`` section), then the tag of
    each :func:`comparison_runs` entry of its config."""
    return [MAIN_SET, *comparison_runs(model_config(cfg, model))]


def set_sample(cfg: Config, model: str, set: str) -> SampleConfig:
    """The sample section set ``set`` of model ``model`` is drawn with: the model's own for :data:`MAIN_SET`
    (HU copies are a rule of their own), a compared sampler's (:func:`compared_sample`) for a tag;
    ``ValueError`` for a tag the model does not compare."""
    model_cfg = model_config(cfg, model)
    if set == MAIN_SET:
        return replace(model_cfg.sample, hu=False)
    runs = comparison_runs(model_cfg)
    if set not in runs:
        raise ValueError(f"models/{model}/samples/{set}: no such sampler for this model "
                         f"(configured: {', '.join(runs) or 'none'})")
    return compared_sample(model_cfg.sample, runs[set])


def set_setting(cfg: Config, model: str, set: str) -> dict[str, Any]:
    """The sampler setting of a set as its evaluation records it (``ctdiff.metrics.variant_table.sampling_provenance``
    resolves the rest): the model's sampler, steps (unresolved) and eta for :data:`MAIN_SET`, the resolved
    compared setting for a tag; with ``guidance`` where the model's sample section guides (w != 1)."""
    settings = model_config(cfg, model).sample
    guidance = {"guidance": settings.guidance} if settings.guidance != 1.0 else {}
    if set == MAIN_SET:
        return {"sampler": settings.sampler, "steps": settings.steps, "eta": settings.eta, **guidance}
    return {**comparison_runs(model_config(cfg, model))[set], **guidance}


def samples_folder(cfg: Config, model: str, set: str = MAIN_SET) -> str:
    """The volumes of set ``set`` of model ``model`` (``{i:04d}.nii.gz``, ``sampling.json``; ``hu/`` for HU copies)."""
    return f"{model_folder(cfg, model)}/samples/{set}"


def metrics_file(cfg: Config, model: str, set: str = MAIN_SET) -> str:
    """The metrics of set ``set`` of model ``model``."""
    return f"{model_folder(cfg, model)}/metrics/{set}.json"


def dicom_export_folder(cfg: Config, model: str, set: str = MAIN_SET) -> str:
    """Set ``set`` of model ``model`` written as DICOM (:mod:`ctdiff.export.dicom`)."""
    return f"{model_folder(cfg, model)}/export/dicom/{set}"


def dicom_exports(cfg: Config) -> list[str]:
    """The DICOM export of every (model, sample set) pair the run draws, with ``export.dicom: true``; else none."""
    if not cfg.export.dicom:
        return []
    return [dicom_export_folder(cfg, model, set) for model in row_names(cfg) for set in sample_sets(cfg, model)]


def membership_file(cfg: Config, model: str) -> str:
    """The membership-inference audit of model ``model`` (one per model, whatever its sample sets)."""
    return f"{model_folder(cfg, model)}/metrics/membership.json"


def membership_inputs(cfg: Config, model: str) -> list[str]:
    """What every evaluation of model ``model`` copies in: its :func:`membership_file` where ``privacy.enabled``,
    else nothing."""
    return [membership_file(cfg, model)] if cfg.privacy.enabled else []


@dataclass(frozen=True)
class TableRow:
    """One row of the variants table: model ``variant`` drawn with sampler set ``set`` (:data:`MAIN_SET` or a
    comparison tag); its ``metrics`` file, ``samples`` folder, the model's ``train`` folder and the model's
    ``downstream`` records (:func:`downstream_files`: the real arm, then the model's own; none where the stage does
    not run for it)."""

    variant: str
    set: str
    metrics: str
    samples: str
    train: str
    downstream: tuple[str, ...] = ()


def table_rows(cfg: Config) -> list[TableRow]:
    """Every (model, sample set) pair the run evaluates, the main model's first: per model its own sample
    section's set, then each :func:`comparison_runs` entry of its config."""
    return [TableRow(model, set, metrics_file(cfg, model, set), samples_folder(cfg, model, set),
                     f"{model_folder(cfg, model)}/train", tuple(downstream_files(cfg, model)))
            for model in row_names(cfg) for set in sample_sets(cfg, model)]


def compared_sample(settings: SampleConfig, run: dict[str, Any]) -> SampleConfig:
    """The sample section as a compared sampler draws it: ``run``'s sampler, steps and eta replace the
    section's; count, seed, batch size, precision and compile stay; no HU copies."""
    return replace(settings, sampler=run["sampler"], steps=run["steps"], eta=run["eta"], hu=False)


def evaluate_settings(cfg: Config) -> dict[str, Any]:
    """The evaluate section without ``compare_samplers``: what scoring one sample set depends on, so adding or
    removing a compared sampler rescores no existing set."""
    return {k: v for k, v in to_dict(cfg.evaluate).items() if k != "compare_samplers"}


def train_settings(cfg: Config) -> str:
    """The settings of ``cfg``'s training run, as ``ctdiff train --settings`` reads them back
    (:func:`ctdiff.config.job_settings`)."""
    return job_settings("train", **{name: getattr(cfg, name) for name in JOB_SECTIONS["train"]})


def sample_settings(settings: SampleConfig) -> str:
    """The settings of a sample set, as ``ctdiff sample --settings`` reads them back: its ``sample`` section."""
    return job_settings("sample", sample=settings)


def study_settings(cfg: Config) -> dict[str, Any]:
    """The reader_study section without ``answers``: where answers are collected changes no study."""
    return {k: v for k, v in to_dict(cfg.reader_study).items() if k != "answers"}


def nodule_folder(cfg: Config) -> str:
    """The preprocessed nodule masks (``{item}.nii.gz`` on the training grid) that training and sampling of a
    ``model.condition: nodules`` row read."""
    return f"{cfg.results}/preprocessed/nodules"


def train_condition_options(cfg: Config) -> str:
    """The ``ctdiff train`` options of ``cfg``'s condition: the mask folder for nodules, nothing for none."""
    return f"--nodules {nodule_folder(cfg)}" if cfg.model.condition == "nodules" else ""


def sample_condition_options(cfg: Config) -> str:
    """The ``ctdiff sample`` options of ``cfg``'s condition: for nodules, the held-out (test split) masks,
    which sample ``i`` takes in sorted order, cycled (:mod:`ctdiff.sampling.conditions`); nothing for none. Inputs of
    the job, not settings: they follow ``--settings`` on the command line."""
    if cfg.model.condition != "nodules":
        return ""
    return f"--nodules-from {nodule_folder(cfg)} --nodule-items {cfg.results}/splits/test.txt"


#: The arms of an nnU-Net export: the real training split, a model's main sample set, and both in one set.
NNUNET_ARMS = ("real", "synthetic", "combined")


@dataclass(frozen=True)
class NnunetExport:
    """One nnU-Net v2 raw dataset the run writes: its ``arm`` (:data:`NNUNET_ARMS`), the ``model`` whose main
    sample set it holds (None for the real arm), its dataset ``id`` and its ``folder``
    (``.../Dataset{id:03d}_{name}``)."""

    arm: str
    model: str | None
    id: int
    folder: str


def nnunet_export(cfg: Config, arm: str, model: str | None = None) -> NnunetExport:
    """The nnU-Net export of ``arm``: the real training split as ``{results}/export/nnunet/real/
    Dataset{export.nnunet_id}_real``; model ``model``'s main sample set (``synthetic``) or it beside the real
    split (``combined``) as ``models/{model}/export/nnunet/{arm}/Dataset{id}_{model}-{arm}``, where the k-th
    model of :func:`row_names` gets ``nnunet_id + 1 + 2k`` (synthetic) and ``nnunet_id + 2 + 2k`` (combined),
    so that all of a run's exports can share one ``nnUNet_raw`` folder. ``ValueError`` for an unknown arm or
    model, and for a synthetic arm of a model without nodule masks (``model.condition: none``): nnU-Net
    trains on labelled cases only."""
    if arm not in NNUNET_ARMS:
        raise ValueError(f"nnU-Net export arm {arm!r}: must be one of {', '.join(NNUNET_ARMS)}")
    base = cfg.export.nnunet_id
    if arm == "real":
        if model is not None:
            raise ValueError("the real nnU-Net export holds no model's samples")
        return NnunetExport(arm, None, base, f"{cfg.results}/export/nnunet/real/Dataset{base:03d}_real")
    if model is None:
        raise ValueError(f"the {arm} nnU-Net export needs a model")
    if model_config(cfg, model).model.condition != "nodules":
        raise ValueError(f"models/{model}: the {arm} nnU-Net export needs nodule labels, and this model is "
                         "unconditional (model.condition: none), so its samples have none; export a model "
                         "trained with model.condition: nodules")
    k = row_names(cfg).index(model)
    number = base + 1 + 2 * k + (arm == "combined")
    return NnunetExport(arm, model, number,
                        f"{model_folder(cfg, model)}/export/nnunet/{arm}/Dataset{number:03d}_{model}-{arm}")


def nnunet_exports(cfg: Config) -> list[NnunetExport]:
    """Every nnU-Net export the run writes: none unless ``export.nnunet``; then the real arm, and the synthetic
    and combined arms of every model with ``model.condition: nodules`` (an unconditional model's samples
    carry no labels), the main model first."""
    if not cfg.export.nnunet:
        return []
    conditioned = [m for m in row_names(cfg) if model_config(cfg, m).model.condition == "nodules"]
    return [nnunet_export(cfg, "real"),
            *(nnunet_export(cfg, arm, m) for m in conditioned for arm in NNUNET_ARMS[1:])]


#: The downstream stage's arms (:mod:`ctdiff.downstream.stage`): the real training split, a model's synthetic
#: volumes, and both drawn 1:1; in this order the report and the variants table show them.
DOWNSTREAM_ARMS = ("real", "synthetic", "combined")


def downstream_models(cfg: Config) -> list[str]:
    """The models the downstream stage runs for: none unless ``downstream.enabled``; then every model with
    ``model.condition: nodules`` (an unconditional model's samples carry no masks), the main model first."""
    if not cfg.downstream.enabled:
        return []
    return [m for m in row_names(cfg) if model_config(cfg, m).model.condition == "nodules"]


def downstream_file(cfg: Config, arm: str, model: str | None = None) -> str:
    """The record of downstream arm ``arm``: ``{results}/downstream/real.json`` for the real arm, which depends
    on no model; ``models/{model}/downstream/{arm}.json`` for a model's synthetic and combined arms.
    ``ValueError`` for an unknown arm, a model arm without a model or a real arm with one."""
    if arm not in DOWNSTREAM_ARMS:
        raise ValueError(f"downstream arm {arm!r}: must be one of {', '.join(DOWNSTREAM_ARMS)}")
    if arm == "real":
        if model is not None:
            raise ValueError("the real downstream arm trains on no model's samples")
        return f"{cfg.results}/downstream/real.json"
    if model is None:
        raise ValueError(f"the {arm} downstream arm needs a model")
    return f"{model_folder(cfg, model)}/downstream/{arm}.json"


def downstream_files(cfg: Config, model: str | None = None) -> list[str]:
    """The downstream records of the run (of ``model`` alone where given): the real arm, then the synthetic
    and combined arms of every :func:`downstream_models` model; none where the stage runs for no model (or not
    for ``model``)."""
    models = [m for m in downstream_models(cfg) if model is None or m == model]
    if not models:
        return []
    return [downstream_file(cfg, "real"), *(downstream_file(cfg, arm, m) for m in models
                                            for arm in DOWNSTREAM_ARMS[1:])]


def downstream_samples_folder(cfg: Config, model: str) -> str:
    """The synthetic volumes model ``model`` draws for its downstream arms (``{i:04d}.nii.gz``, ``nodules/``)."""
    return f"{model_folder(cfg, model)}/downstream/samples"


def downstream_sample_settings(cfg: Config, model: str) -> str:
    """The ``ctdiff sample --settings`` of :func:`downstream_samples_folder`: the model's own sample section with
    ``downstream.synthetic_n`` volumes and no HU copies."""
    return sample_settings(replace(model_config(cfg, model).sample, n=cfg.downstream.synthetic_n, hu=False))


def downstream_condition_options(cfg: Config) -> str:
    """The ``ctdiff sample`` options of the downstream samples: the *training* split's masks (sorted, cycled),
    so that the segmenters never train on a test nodule's place (:mod:`ctdiff.downstream.stage`)."""
    return f"--nodules-from {nodule_folder(cfg)} --nodule-items {cfg.results}/splits/train.txt"
