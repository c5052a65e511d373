"""Typed configuration: the validated config dict becomes frozen dataclasses, once, at the edge.

The schema (``workflow/schemas/config.schema.yaml``) is the one source of every key's default and
description: it rejects unknown keys and wrong types and fills defaults. The dataclasses below repeat its
keys and defaults so that code can build a section without the schema; ``tests/test_config.py`` proves them
equal key by key. The closed option sets come from :mod:`ctdiff.options`. :func:`from_dict` adds the checks
that span several keys and names the offending key; :func:`section_from_dict` rebuilds one section from the
plain dict a workflow rule hands its script. Nothing downstream reads raw config keys.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any

from ctdiff.diffusion.samplers import FAMILIES, family
from ctdiff.options import (
    ETA_SAMPLERS,
    NAME_REGEX,
    SAMPLERS_FOR,
    SAMPLERS,
    VARIANT_SAMPLE_KEYS,
    VARIANT_SECTIONS,
    BetaSchedule,
    Condition,
    FlowTime,
    LrSchedule,
    Normalise,
    Objective,
    Precision,
    Representation,
    Sampler,
    SeriesChoice,
    Source,
    TrainPrecision,
    check_guidance,
    check_sampler_fits,
)


@dataclass(frozen=True)
class DataConfig:
    source: Source = "phantom"
    root: str | None = None
    n_patients: int = 16
    seed: int = 0
    phantom_matrix: int = 512
    series: SeriesChoice = "largest"
    recover_stacks: bool = False
    nodule_consensus: float = 0.5
    phantom_nodules: bool = True
    phantom_nodule_mm: tuple[float, float] = (3.0, 30.0)


@dataclass(frozen=True)
class PreprocessConfig:
    size: int = 128
    spacing_mm: float | None = 3.0
    hu_window: tuple[float, float] = (-1000.0, 400.0)


@dataclass(frozen=True)
class SplitConfig:
    test: float = 0.2
    seed: int = 0


@dataclass(frozen=True)
class ModelConfig:
    channels: tuple[int, ...] = (64, 128, 256, 512)
    res_blocks: int = 2
    attention: bool = False
    groups: int = 32
    representation: Representation = "voxels"
    condition: Condition = "none"


@dataclass(frozen=True)
class DiffusionConfig:
    timesteps: int = 1000
    beta_schedule: BetaSchedule = "linear"
    beta_start: float = 1.0e-4
    beta_end: float = 0.02
    objective: Objective = "eps"
    flow_t: FlowTime = "logit_normal"
    flow_t_location: float = 0.0
    flow_t_scale: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1_000_000
    batch_size: int = 2
    lr: float = 1.0e-5
    lr_schedule: LrSchedule = "constant"
    ema_decay: float = 0.9999
    precision: TrainPrecision = "fp32"
    grad_checkpointing: bool = False
    recompute_norm: bool = False
    compile: bool = False
    grad_accumulation: int = 1
    grad_clip: float | None = 1.0
    checkpoint_every: int = 1000
    log_every: int = 10
    tensorboard: bool = False
    cache_gb: float = 0.0
    condition_dropout: float = 0.1
    seed: int = 0


@dataclass(frozen=True)
class SampleConfig:
    n: int = 500
    sampler: Sampler = "ddpm"
    steps: int | None = None
    eta: float = 0.0
    batch_size: int = 8
    seed: int = 0
    precision: Precision = "fp32"
    compile: bool = False
    hu: bool = False
    guidance: float = 1.0


def check_bootstrap(
    n_boot: Any,
    level: Any,
    *,
    least: int = 0,
    names: tuple[str, str] = ("config: evaluate.bootstrap", "config: evaluate.ci_level"),
) -> None:
    """The one rule for bootstrap settings, applied to every :class:`EvaluateConfig` and by
    :mod:`ctdiff.metrics.bootstrap` to its direct callers: ``n_boot`` replicates, a whole number >= ``least``
    (``evaluate.bootstrap`` may be 0 = no intervals; an interval needs at least 1), and a confidence ``level``
    strictly between 0 and 1. Raises ``ValueError`` naming ``names`` (the config keys by default)."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, Integral) or n_boot < least:
        raise ValueError(f"{names[0]}={n_boot!r} must be a whole number >= {least}"
                         + (" (0 = no intervals)" if least == 0 else ""))
    if not 0.0 < level < 1.0:
        raise ValueError(f"{names[1]}={level!r} must lie strictly between 0 and 1")


@dataclass(frozen=True)
class SamplerSetting:
    """One entry of ``evaluate.compare_samplers``: a sampler drawn with the ``sample`` section's ``n`` and
    ``seed`` and scored like the main sample set. ``steps=None`` means every timestep (T)."""

    sampler: Sampler
    steps: int | None = None
    eta: float = 0.0


@dataclass(frozen=True)
class EvaluateConfig:
    med3d_weights: str | None = None
    med3d_depth: int = 50
    normalise: Normalise = "none"
    msssim_window: int = 7
    seed: int = 0
    bootstrap: int = 200
    ci_level: float = 0.95
    kid_subset_size: int = 100
    kid_subsets: int = 100
    compare_samplers: tuple[SamplerSetting, ...] = ()

    def __post_init__(self):
        check_bootstrap(self.bootstrap, self.ci_level)
        # Entries arrive as dicts from YAML (or as SamplerSetting from code); unknown keys are named.
        runs = []
        for k, run in enumerate(self.compare_samplers):
            if isinstance(run, dict):
                known = SamplerSetting.__dataclass_fields__
                unknown = sorted(set(run) - set(known))
                if unknown:
                    raise ValueError(f"config: unknown key evaluate.compare_samplers[{k}].{unknown[0]} "
                                     f"(allowed: {', '.join(known)})")
                if "sampler" not in run:
                    raise ValueError(f"config: evaluate.compare_samplers[{k}].sampler is missing")
                run = SamplerSetting(**run)
            elif not isinstance(run, SamplerSetting):
                raise ValueError(f"config: evaluate.compare_samplers[{k}] must be a mapping with keys sampler, "
                                 f"steps, eta; got {run!r}")
            runs.append(run)
        object.__setattr__(self, "compare_samplers", tuple(runs))


@dataclass(frozen=True)
class PrivacyConfig:
    """The membership-inference audit of every trained model (:mod:`ctdiff.metrics.membership`)."""

    enabled: bool = True
    n: int = 500
    times: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.4)
    t_error_time: float = 0.1
    t_error_steps: int = 10
    batch_size: int = 8
    seed: int = 0


@dataclass(frozen=True)
class DownstreamConfig:
    """Does synthetic data help a nodule segmenter? (:mod:`ctdiff.downstream.stage`)."""

    enabled: bool = False
    synthetic_n: int = 100
    steps: int = 2000
    batch_size: int = 2
    lr: float = 1.0e-3
    channels: tuple[int, ...] = (16, 32, 64, 128)
    res_blocks: int = 1
    groups: int = 8
    threshold: float = 0.5
    patch: int | None = None
    foreground: float = 0.33
    seed: int = 0


@dataclass(frozen=True)
class FigureConfig:
    real: int = 0
    synthetic: int = 0
    slices: tuple[int | None, int | None, int | None] | None = None


@dataclass(frozen=True)
class ReaderStudyConfig:
    n_cases: int = 50
    synthetic_fraction: float = 0.5
    answers: str | None = None
    lung_window: tuple[float, float] = (-600.0, 1500.0)
    mediastinal_window: tuple[float, float] = (40.0, 400.0)

    def counts(self) -> tuple[int, int]:
        """(real, synthetic) cases: ``round(n_cases * synthetic_fraction)`` synthetic (halves round up), the
        rest real."""
        n_synthetic = int(self.n_cases * self.synthetic_fraction + 0.5)
        return self.n_cases - n_synthetic, n_synthetic


@dataclass(frozen=True)
class ExportConfig:
    dicom: bool = False
    nnunet: bool = False
    nnunet_id: int = 500


@dataclass(frozen=True)
class VariantConfig:
    """One entry of ``variants``: a ``name`` (:data:`ctdiff.options.NAME_REGEX`) and the keys it sets in the
    main config's ``model``, ``diffusion`` and ``train`` sections and the ``sample`` section's sampler, steps,
    eta and guidance (plain values, as YAML gives them). Everything else is the main config's."""

    name: str
    model: dict[str, Any] = field(default_factory=dict)
    diffusion: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    sample: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        for section in VARIANT_SECTIONS:  # tuples as lists, so that to_dict and from_dict give back an equal entry
            object.__setattr__(self, section, _plain(dict(getattr(self, section) or {})))


@dataclass(frozen=True)
class Config:
    results: str = "results"
    name: str = "paper"
    data: DataConfig = DataConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    downstream: DownstreamConfig = DownstreamConfig()
    figure: FigureConfig = FigureConfig()
    reader_study: ReaderStudyConfig = ReaderStudyConfig()
    export: ExportConfig = ExportConfig()
    variants: tuple[VariantConfig, ...] = ()


_SECTIONS = {
    "data": DataConfig,
    "preprocess": PreprocessConfig,
    "split": SplitConfig,
    "model": ModelConfig,
    "diffusion": DiffusionConfig,
    "train": TrainConfig,
    "sample": SampleConfig,
    "evaluate": EvaluateConfig,
    "privacy": PrivacyConfig,
    "downstream": DownstreamConfig,
    "figure": FigureConfig,
    "reader_study": ReaderStudyConfig,
    "export": ExportConfig,
}


def section_from_dict(name: str, values: dict[str, Any]):
    """The dataclass of config section ``name`` (``"sample"`` → :class:`SampleConfig`, ...) from its plain-dict
    form, e.g. the ``to_dict`` view a workflow rule passes its script as a param: lists become tuples, keys left
    out take their defaults, and an unknown key raises ``ValueError`` naming it. Checks that span sections
    (steps against ``diffusion.timesteps``, ...) belong to :func:`from_dict`, which has them all."""
    if name not in _SECTIONS:
        raise ValueError(f"config: no section {name!r} (sections: {', '.join(_SECTIONS)})")
    return dataclass_from_dict(_SECTIONS[name], values, name)


#: The config sections each job reads from its settings (``ctdiff train --settings``, ``ctdiff sample
#: --settings``), in the order the settings hold them.
JOB_SECTIONS: dict[str, tuple[str, ...]] = {"train": ("model", "diffusion", "train", "preprocess"),
                                            "sample": ("sample",)}


def job_settings(job: str, **sections: Any) -> str:
    """The settings of ``job`` as the workflow writes them: its sections (:data:`JOB_SECTIONS`), each as
    :func:`to_dict` writes the dataclass, in one JSON object. :func:`read_job_settings` reads them back into
    the same dataclasses; a missing or extra section raises ``ValueError`` naming it."""
    _check_job_sections(job, sections)
    return json.dumps({name: to_dict(sections[name]) for name in JOB_SECTIONS[job]})


def read_job_settings(job: str, text: str) -> Config:
    """The settings :func:`job_settings` wrote (the JSON itself, or ``@path`` of a file holding it) as a
    :class:`Config` holding those sections, the others at their defaults, after the checks that span the
    sections the job reads (:func:`check_training` for ``train``). ``ValueError`` names a missing or extra
    section, an unknown key or a bad value."""
    if job not in JOB_SECTIONS:
        raise ValueError(f"no job {job!r} (jobs: {', '.join(JOB_SECTIONS)})")
    try:
        raw = json.loads(Path(text[1:]).read_text(encoding="utf-8") if text.startswith("@") else text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{job} settings are not JSON: {err}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{job} settings must be a JSON object of sections, got {type(raw).__name__}")
    _check_job_sections(job, raw)
    cfg = Config(**{name: section_from_dict(name, raw[name]) for name in JOB_SECTIONS[job]})
    if job == "train":
        check_training(cfg)
    return cfg


def _check_job_sections(job: str, sections: dict[str, Any]) -> None:
    wanted = JOB_SECTIONS[job]
    missing, extra = [n for n in wanted if n not in sections], sorted(set(sections) - set(wanted))
    if missing or extra:
        raise ValueError(f"{job} settings hold the sections {', '.join(wanted)}"
                         + (f"; missing: {', '.join(missing)}" if missing else "")
                         + (f"; not read by {job}: {', '.join(extra)}" if extra else ""))


def dataclass_from_dict(cls: type, values: dict[str, Any], name: str, *, source: str = "config"):
    """``cls`` from a plain dict: lists become tuples, keys left out take their defaults, and an unknown key
    raises ``ValueError`` naming it as ``{source}: unknown key {name}.{key}``."""
    known = cls.__dataclass_fields__
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{source}: unknown key {name}.{unknown[0]} (allowed: {', '.join(known)})")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def from_dict(raw: dict[str, Any], *, schema_check: Callable[[dict[str, Any]], None] | None = None) -> Config:
    """Build a :class:`Config` from a (schema-validated) dict and check cross-key constraints.

    Each entry of ``variants`` is checked (:func:`_variants`), merged into the main config
    (:func:`merged_variant`) and the result checked like a config of its own: by ``schema_check`` (the
    workflow's schema validation; it raises ``ValueError``), then by this function. Raises ``ValueError``
    naming the offending key (``config: variants[1] (small): model.groups=...`` for a variant).
    """
    cfg = _build(raw)
    main = {k: v for k, v in raw.items() if k != "variants"}
    seen: dict[str, str] = {_comparable(cfg): f"the main config ({cfg.name})"}
    for k, variant in enumerate(cfg.variants):
        where = f"config: variants[{k}] ({variant.name})"
        merged = merged_variant(main, variant)
        try:
            if schema_check is not None:
                schema_check(merged)
            built = _build(merged)
        except ValueError as err:
            raise ValueError(f"{where}: {str(err).removeprefix('config: ')}") from None
        same = seen.setdefault(_comparable(built), where)
        if same != where:
            raise ValueError(f"{where} trains and samples exactly as {same.removeprefix('config: ')}: "
                             "a variant must change a setting")
    _check_compare_fits(cfg)
    return cfg


def schema_checker(schema_file: str) -> Callable[[dict[str, Any]], None]:
    """A ``schema_check`` for :func:`from_dict`: validates a config dict against the JSON schema in
    ``schema_file`` (``workflow/schemas/config.schema.yaml``) and raises ``ValueError`` naming the key and the
    reason (``train.lr_schedule: 'linear' is not one of ['constant', 'cosine']``). Imports jsonschema and
    YAML only when called."""

    def check(raw: dict[str, Any]) -> None:
        import jsonschema
        import yaml

        with open(schema_file, encoding="utf-8") as fh:
            schema = yaml.safe_load(fh)
        validator = jsonschema.validators.validator_for(schema)(schema)
        error = jsonschema.exceptions.best_match(validator.iter_errors(raw))
        if error is not None:
            where = ".".join(str(k) for k in error.absolute_path)
            raise ValueError(f"{where}: {error.message}" if where else error.message)

    return check


def _build(raw: dict[str, Any]) -> Config:
    """The :class:`Config` of ``raw`` with its own checks (:func:`_check`), variants parsed but not merged."""
    top = ("results", "name", *_SECTIONS, "variants")
    unknown = sorted(set(raw) - set(top))
    if unknown:
        raise ValueError(f"config: unknown key {unknown[0]!r} (allowed: {', '.join(top)})")
    sections = {name: section_from_dict(name, dict(raw.get(name) or {})) for name in _SECTIONS}
    name = raw.get("name", Config.name)
    if not isinstance(name, str) or not re.fullmatch(NAME_REGEX, name):
        raise ValueError(f"config: name={name!r} must match {NAME_REGEX} (a folder name: a letter or digit, "
                         "then letters, digits, '_', '-' or '.', at most 64)")
    cfg = Config(results=str(raw.get("results", "results")), name=name, **sections,
                 variants=_variants(raw.get("variants") or [], name))
    _check(cfg)
    return cfg


def _comparable(cfg: Config) -> str:
    """What makes two rows of the variants table the same run: everything but their names."""
    d = to_dict(cfg)
    d.pop("name"), d.pop("variants")
    return repr(d)


def _variants(entries: Any, main: str) -> tuple[VariantConfig, ...]:
    """The ``variants`` list as :class:`VariantConfig` entries: each a mapping with a ``name`` that matches
    :data:`ctdiff.options.NAME_REGEX` and differs from ``name`` (the main row's) and every other variant's, and
    only :data:`ctdiff.options.VARIANT_SECTIONS`, each a mapping of keys its section has (the ``sample``
    section: :data:`ctdiff.options.VARIANT_SAMPLE_KEYS` only). Raises ``ValueError`` naming the entry and key."""
    if not isinstance(entries, (list, tuple)):
        raise ValueError(f"config: variants must be a list of mappings, got {entries!r}")
    allowed = ("name", *VARIANT_SECTIONS)
    names = {main: "the main config's row (key name)"}
    out = []
    for k, entry in enumerate(entries):
        where = f"config: variants[{k}]"
        if isinstance(entry, VariantConfig):
            entry = to_dict(entry)
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be a mapping with keys {', '.join(allowed)}; got {entry!r}")
        unknown = sorted(set(entry) - set(allowed))
        if unknown:
            raise ValueError(f"{where}.{unknown[0]}: a variant overrides only {', '.join(VARIANT_SECTIONS)} "
                             f"(allowed keys: {', '.join(allowed)})")
        name = entry.get("name")
        if not isinstance(name, str) or not re.fullmatch(NAME_REGEX, name):
            raise ValueError(f"{where}.name={name!r} must match {NAME_REGEX} (a folder name: a letter or digit, "
                             "then letters, digits, '_', '-' or '.', at most 64)")
        if name in names:
            raise ValueError(f"{where}.name={name!r} is already the name of {names[name]}; names must differ")
        names[name] = f"variants[{k}]"
        for section in VARIANT_SECTIONS:
            values = entry.get(section) or {}
            if not isinstance(values, dict):
                raise ValueError(f"{where}.{section} must be a mapping of {section} keys, got {values!r}")
            known = VARIANT_SAMPLE_KEYS if section == "sample" else tuple(_SECTIONS[section].__dataclass_fields__)
            bad = sorted(set(values) - set(known))
            if bad:
                raise ValueError(f"{where} ({name}): {section}.{bad[0]} is no key a variant can set "
                                 f"(allowed in {section}: {', '.join(known)})")
        out.append(VariantConfig(**entry))
    return tuple(out)


def merged_variant(main: dict[str, Any], variant: VariantConfig) -> dict[str, Any]:
    """The plain config of ``variant``: the ``main`` config dict (without its ``variants``) with the variant's
    keys replacing the main's in each section it sets (a list value replaces the whole list), named after
    the variant."""
    merged = copy.deepcopy({k: v for k, v in main.items() if k != "variants"})
    merged["name"] = variant.name
    for section in VARIANT_SECTIONS:
        values = getattr(variant, section)
        if values:
            merged[section] = {**(merged.get(section) or {}), **copy.deepcopy(values)}
    return merged


def variant_config(cfg: Config, name: str) -> Config:
    """The config of the table row ``name``: ``cfg`` itself for its own name, else the variant of that name
    merged into it (:func:`merged_variant`). Raises ``ValueError`` naming the configured rows."""
    if name == cfg.name:
        return cfg
    for variant in cfg.variants:
        if variant.name == name:
            return _build(merged_variant(to_dict(cfg), variant))
    raise ValueError(f"no variant {name!r} (configured: {', '.join([cfg.name, *(v.name for v in cfg.variants)])})")


def _check_compare_fits(cfg: Config) -> None:
    """Every ``evaluate.compare_samplers`` entry must fit the objective of the main config or of a variant
    (:data:`ctdiff.options.SAMPLERS_FOR`); each row compares only the entries that fit its own."""
    objectives = {cfg.diffusion.objective}
    objectives |= {v.diffusion.get("objective", cfg.diffusion.objective) for v in cfg.variants}
    fitting = {s for o in objectives for s in SAMPLERS_FOR.get(o, ())}
    for k, run in enumerate(cfg.evaluate.compare_samplers):
        if run.sampler not in fitting:
            raise ValueError(f"config: evaluate.compare_samplers[{k}].sampler={run.sampler!r} fits no configured "
                             f"objective ({', '.join(sorted(objectives))}; their samplers: "
                             f"{', '.join(sorted(fitting))})")


def _check(cfg: Config) -> None:
    if cfg.data.source == "dicom" and not cfg.data.root:
        raise ValueError("config: data.root must name the DICOM tree when data.source is 'dicom'")
    lo, hi = cfg.data.phantom_nodule_mm
    if not 0 < lo <= hi:
        raise ValueError(f"config: data.phantom_nodule_mm must be [smallest, largest] diameter in mm with "
                         f"0 < smallest <= largest, got {[lo, hi]}")
    check_training(cfg)
    if cfg.split.test >= 1 and cfg.split.test != int(cfg.split.test):
        raise ValueError(f"config: split.test={cfg.split.test} must be a fraction < 1 or a whole count")
    check_guidance(cfg.sample.guidance, cfg.model.condition != "none")
    T = cfg.diffusion.timesteps
    _check_sampler_steps("sample", cfg.sample.sampler, cfg.sample.steps, cfg.sample.eta, T, cfg.diffusion.objective)
    if cfg.figure.synthetic >= cfg.sample.n:
        raise ValueError(f"config: figure.synthetic={cfg.figure.synthetic} must be below sample.n={cfg.sample.n}")
    _check_evaluate(cfg.evaluate, T)
    check_privacy(cfg.privacy, cfg.diffusion)
    check_downstream(cfg.downstream, cfg.preprocess.size)
    _check_kid(cfg)
    _check_reader_study(cfg)
    _check_export(cfg)


def check_training(cfg: Config) -> None:
    """The checks that span the sections a training run reads (``preprocess``, ``model``, ``diffusion``,
    ``train``): what :func:`from_dict` checks of them, and what ``ctdiff train`` checks of its settings."""
    lo, hi = cfg.preprocess.hu_window
    if not lo < hi:
        raise ValueError(f"config: preprocess.hu_window must be [low, high] with low < high, got {[lo, hi]}")
    check_network_size(cfg.preprocess.size, cfg.model.channels, cfg.model.representation)
    for c in cfg.model.channels:
        g = min(cfg.model.groups, c)
        if c % g:
            raise ValueError(f"config: model.groups={cfg.model.groups} does not divide model.channels entry {c}")
    if not cfg.diffusion.beta_start < cfg.diffusion.beta_end:
        raise ValueError("config: diffusion.beta_start must be smaller than diffusion.beta_end")
    if not cfg.diffusion.flow_t_scale > 0:
        raise ValueError(f"config: diffusion.flow_t_scale={cfg.diffusion.flow_t_scale} must be > 0")
    if cfg.train.batch_size % cfg.train.grad_accumulation:
        raise ValueError(
            f"config: train.grad_accumulation={cfg.train.grad_accumulation} must divide "
            f"train.batch_size={cfg.train.batch_size} (each step splits the batch into that many micro-batches)"
        )
    if not 0.0 <= cfg.train.condition_dropout < 1.0:
        raise ValueError(f"config: train.condition_dropout={cfg.train.condition_dropout} must lie in [0, 1)")


def check_network_size(size: int, channels: tuple[int, ...], representation: str, *, source: str = "config") -> int:
    """The side the U-Net sees for ``preprocess.size`` voxels per side: ``size`` for ``voxels``, ``size / 2``
    for ``wavelet`` (8 Haar sub-bands at half resolution), which must be divisible by ``2^(levels-1)``, the
    U-Net's downsampling factor. Raises ``ValueError`` naming ``preprocess.size``, ``model.representation`` and
    ``model.channels`` (prefixed by ``source``: the config, or a checkpoint read back)."""
    factor = 2 ** (len(channels) - 1)
    levels = f"2^(levels-1) for model.channels={list(channels)}"
    if representation == "wavelet":
        if size % 2:
            raise ValueError(f"{source}: preprocess.size={size} is odd, but model.representation: wavelet halves "
                             "every axis (8 Haar sub-bands at half resolution): preprocess.size must be even")
        side = size // 2
        if side % factor:
            raise ValueError(f"{source}: preprocess.size={size} with model.representation: wavelet gives the "
                             f"U-Net {side}^3 voxels, which must be divisible by {factor} ({levels}): choose "
                             f"preprocess.size divisible by {2 * factor} or fewer model.channels levels")
        return side
    if size % factor:
        raise ValueError(f"{source}: preprocess.size={size} must be divisible by {factor} ({levels})")
    return size


def _check_sampler_steps(key: str, sampler: str, steps: int | None, eta: float, T: int,
                         objective: str | None) -> None:
    """The sample section's rules for one sampler setting at ``key``, from the sampler's family
    (:mod:`ctdiff.diffusion.samplers`): a known sampler that fits ``diffusion.objective``
    (:data:`ctdiff.options.SAMPLERS_FOR`; not checked when ``objective`` is None), steps in 1..max_steps (T;
    T−1 for dpmpp), a full-chain sampler (ddpm) runs all T steps; eta >= 0 and 0 for samplers that do not
    use it (all but ddim)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"config: {key}.sampler={sampler!r} must be one of {', '.join(SAMPLERS)}")
    if objective is not None:
        check_sampler_fits(sampler, objective, key=f"{key}.sampler")
    f = family(sampler)
    most = f.max_steps(T)
    # e.g. dpmpp never evaluates the network at t = 0, so it takes at most T − 1 steps.
    why = "diffusion.timesteps" if most == T else f"{sampler}: {f.max_steps_why}"
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= most):
        raise ValueError(f"config: {key}.steps={steps} must lie in 1..{most} ({why})")
    if steps is None and most < T:
        raise ValueError(f"config: {key}.steps=null means diffusion.timesteps={T}, but {sampler} takes 1..{most} "
                         f"steps ({why}): set {key}.steps")
    if f.full_chain and steps not in (None, T):
        fewer = [g.name for g in FAMILIES if not g.full_chain and set(g.objectives) & set(f.objectives)]
        raise ValueError(f"config: {key}.steps={steps}: the {sampler} sampler runs all {T} steps "
                         f"(use null, or {' or '.join(fewer)} for fewer steps)")
    if eta < 0:
        raise ValueError(f"config: {key}.eta={eta} must be >= 0")
    if eta and sampler not in ETA_SAMPLERS:
        raise ValueError(f"config: {key}.eta={eta}: only the {' and '.join(ETA_SAMPLERS)} sampler uses eta "
                         f"(leave it 0 for {sampler})")


def _check_evaluate(e: EvaluateConfig, T: int) -> None:
    """Each compared sampler setting is valid and given once. Whether it fits an objective is
    :func:`_check_compare_fits`'s: with variants, an entry may fit a variant's objective and not the main one's."""
    seen: dict[tuple, int] = {}
    for k, run in enumerate(e.compare_samplers):
        key = f"evaluate.compare_samplers[{k}]"
        _check_sampler_steps(key, run.sampler, run.steps, run.eta, T, None)
        same = (run.sampler, T if run.steps is None else run.steps, run.eta)
        if same in seen:
            raise ValueError(f"config: {key} repeats evaluate.compare_samplers[{seen[same]}] "
                             f"({run.sampler}, {same[1]} steps, eta {run.eta})")
        seen[same] = k


def check_privacy(p: PrivacyConfig, diffusion: DiffusionConfig) -> None:
    """The privacy section against the model's ``diffusion`` section (every variant's own is checked too): path
    times strictly inside (0, 1), and for eps and v, whose times are DDPM timesteps ``round(time · (T − 1))``, a
    t-error time after timestep 0 (:mod:`ctdiff.metrics.membership`). Also what the audit itself checks of its
    settings (``ValueError`` naming the key)."""
    if not p.times or not all(0.0 < f < 1.0 for f in p.times):
        raise ValueError(f"config: privacy.times={list(p.times)} must be a non-empty list of path times in (0, 1)")
    if not 0.0 < p.t_error_time < 1.0:
        raise ValueError(f"config: privacy.t_error_time={p.t_error_time} must lie in (0, 1)")
    for key in ("n", "t_error_steps", "batch_size"):
        value = getattr(p, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"config: privacy.{key}={value!r} must be a whole number >= 1")
    if diffusion.objective != "flow" and round(p.t_error_time * (diffusion.timesteps - 1)) < 1:
        raise ValueError(f"config: privacy.t_error_time={p.t_error_time} is DDPM timestep 0 of "
                         f"diffusion.timesteps={diffusion.timesteps}: the t-error needs a later one")


def check_downstream(d: DownstreamConfig, size: int) -> None:
    """The downstream segmenter's GroupNorm groups divide every level's channels and, where the stage is enabled,
    it fits the volumes (``preprocess.size`` divisible by its downsampling factor; a run without the stage keeps
    every size the model itself takes); ``ValueError`` naming the key."""
    factor = 2 ** (len(d.channels) - 1)
    if d.enabled and size % factor:
        raise ValueError(f"config: preprocess.size={size} must be divisible by {factor} for the downstream "
                         f"segmenter (2^(levels-1) for downstream.channels={list(d.channels)})")
    if d.enabled and d.patch is not None and (d.patch % factor or not factor <= d.patch <= size):
        raise ValueError(f"config: downstream.patch={d.patch} must be divisible by {factor} (2^(levels-1) for "
                         f"downstream.channels={list(d.channels)}) and at most preprocess.size={size}")
    if not 0.0 <= d.foreground <= 1.0:
        raise ValueError(f"config: downstream.foreground={d.foreground} must lie in [0, 1]")
    for c in d.channels:
        if c % min(d.groups, c):
            raise ValueError(f"config: downstream.groups={d.groups} does not divide downstream.channels entry {c}")
    if not 0.0 < d.threshold < 1.0:
        raise ValueError(f"config: downstream.threshold={d.threshold} must lie strictly between 0 and 1")


def _check_kid(cfg: Config) -> None:
    """KID subsets are drawn without replacement from each set: the subset size must fit the synthetic set
    (``sample.n``). The real set is checked by the evaluate stage, where it is known (the usable cohort decides
    it); checking a whole-count ``split.test`` here would also stop runs that only ingest."""
    e = cfg.evaluate
    if e.kid_subset_size < 2 or e.kid_subsets < 1:
        raise ValueError(f"config: evaluate.kid_subset_size={e.kid_subset_size} must be >= 2 and "
                         f"evaluate.kid_subsets={e.kid_subsets} >= 1")
    if e.kid_subset_size > cfg.sample.n:
        raise ValueError(f"config: evaluate.kid_subset_size={e.kid_subset_size} exceeds sample.n={cfg.sample.n}: "
                         f"KID draws subsets without replacement; lower evaluate.kid_subset_size to at most "
                         f"{cfg.sample.n}")


def _check_reader_study(cfg: Config) -> None:
    """Both kinds of case in the study, no more synthetic cases than ``sample.n`` volumes, windows of positive
    width. The real cases are checked against the held-out set by the study stage, where it is known."""
    r = cfg.reader_study
    n_real, n_synthetic = r.counts()
    if not 0.0 < r.synthetic_fraction < 1.0 or n_real < 1 or n_synthetic < 1:
        raise ValueError(f"config: reader_study.synthetic_fraction={r.synthetic_fraction} with reader_study.n_cases="
                         f"{r.n_cases} gives {n_real} real and {n_synthetic} synthetic cases; the study needs both")
    if n_synthetic > cfg.sample.n:
        raise ValueError(f"config: reader_study.n_cases={r.n_cases} with reader_study.synthetic_fraction="
                         f"{r.synthetic_fraction} asks for {n_synthetic} synthetic cases but sample.n={cfg.sample.n}")
    for key in ("lung_window", "mediastinal_window"):
        level, width = getattr(r, key)
        if not width > 0:
            raise ValueError(f"config: reader_study.{key}=[{level}, {width}] must be [level, width] with width > 0")


def _check_export(cfg: Config) -> None:
    """The nnU-Net dataset ids of the run's exports stay three digits: the last model's combined arm gets
    ``export.nnunet_id + 2 * (models)`` (the id scheme is ``ctdiff.plan.nnunet_export``'s)."""
    if not cfg.export.nnunet:
        return
    last = cfg.export.nnunet_id + 2 * (1 + len(cfg.variants))
    if last > 999:
        raise ValueError(f"config: export.nnunet_id={cfg.export.nnunet_id} with {1 + len(cfg.variants)} models "
                         f"gives nnU-Net dataset ids up to {last}, above 999; choose export.nnunet_id <= "
                         f"{999 - 2 * (1 + len(cfg.variants))}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict view of a config or one of its sections (lists for tuples), e.g. for checkpoints."""
    return _plain(asdict(cfg))


def _plain(v: Any) -> Any:
    """``v`` with every tuple a list, nested dicts and lists included."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    return v
