"""Typed configuration: the validated config dict becomes frozen dataclasses, once, at the edge.

The schema (``workflow/schemas/config.schema.yaml``) is the one source of every key's default and
description: it rejects unknown keys and wrong types and fills defaults. The dataclasses below repeat its
keys and defaults so that code can build a section without the schema; ``tests/test_config.py`` proves them
equal key by key. The closed option sets come from :mod:`ctdiff.options`. :func:`from_dict` adds the checks
that span several keys and names the offending key; :func:`section_from_dict` rebuilds one section from the
plain dict a workflow rule hands its script. Nothing downstream reads raw config keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from numbers import Integral
from typing import Any

from ctdiff.options import (
    SAMPLERS,
    BetaSchedule,
    LrSchedule,
    Normalise,
    Objective,
    Precision,
    Sampler,
    SeriesChoice,
    Source,
    TrainPrecision,
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


@dataclass(frozen=True)
class DiffusionConfig:
    timesteps: int = 1000
    beta_schedule: BetaSchedule = "linear"
    beta_start: float = 1.0e-4
    beta_end: float = 0.02
    objective: Objective = "eps"


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
class FigureConfig:
    real: int = 0
    synthetic: int = 0
    slices: tuple[int | None, int | None, int | None] | None = None


@dataclass(frozen=True)
class ReaderStudyConfig:
    n_cases: int = 50
    synthetic_fraction: float = 0.5
    seed: int = 0
    answers: str | None = None
    lung_window: tuple[float, float] = (-600.0, 1500.0)
    mediastinal_window: tuple[float, float] = (40.0, 400.0)

    def counts(self) -> tuple[int, int]:
        """(real, synthetic) cases: ``round(n_cases * synthetic_fraction)`` synthetic (halves round up), the
        rest real."""
        n_synthetic = int(self.n_cases * self.synthetic_fraction + 0.5)
        return self.n_cases - n_synthetic, n_synthetic


@dataclass(frozen=True)
class Config:
    results: str = "results"
    data: DataConfig = DataConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    figure: FigureConfig = FigureConfig()
    reader_study: ReaderStudyConfig = ReaderStudyConfig()


_SECTIONS = {
    "data": DataConfig,
    "preprocess": PreprocessConfig,
    "split": SplitConfig,
    "model": ModelConfig,
    "diffusion": DiffusionConfig,
    "train": TrainConfig,
    "sample": SampleConfig,
    "evaluate": EvaluateConfig,
    "figure": FigureConfig,
    "reader_study": ReaderStudyConfig,
}


def section_from_dict(name: str, values: dict[str, Any]):
    """The dataclass of config section ``name`` (``"sample"`` → :class:`SampleConfig`, ...) from its plain-dict
    form, e.g. the ``to_dict`` view a workflow rule passes its script as a param: lists become tuples, keys left
    out take their defaults, and an unknown key raises ``ValueError`` naming it. Checks that span sections
    (steps against ``diffusion.timesteps``, ...) belong to :func:`from_dict`, which has them all."""
    if name not in _SECTIONS:
        raise ValueError(f"config: no section {name!r} (sections: {', '.join(_SECTIONS)})")
    return dataclass_from_dict(_SECTIONS[name], values, name)


def dataclass_from_dict(cls: type, values: dict[str, Any], name: str, *, source: str = "config"):
    """``cls`` from a plain dict: lists become tuples, keys left out take their defaults, and an unknown key
    raises ``ValueError`` naming it as ``{source}: unknown key {name}.{key}``."""
    known = cls.__dataclass_fields__
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{source}: unknown key {name}.{unknown[0]} (allowed: {', '.join(known)})")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def from_dict(raw: dict[str, Any]) -> Config:
    """Build a :class:`Config` from a (schema-validated) dict and check cross-key constraints.

    Raises ``ValueError`` naming the offending key.
    """
    unknown = sorted(set(raw) - set(_SECTIONS) - {"results"})
    if unknown:
        raise ValueError(f"config: unknown key {unknown[0]!r} (allowed: results, {', '.join(_SECTIONS)})")
    sections = {name: section_from_dict(name, dict(raw.get(name) or {})) for name in _SECTIONS}
    cfg = Config(results=str(raw.get("results", "results")), **sections)
    _check(cfg)
    return cfg


def _check(cfg: Config) -> None:
    if cfg.data.source == "dicom" and not cfg.data.root:
        raise ValueError("config: data.root must name the DICOM tree when data.source is 'dicom'")
    lo, hi = cfg.preprocess.hu_window
    if not lo < hi:
        raise ValueError(f"config: preprocess.hu_window must be [low, high] with low < high, got {[lo, hi]}")
    factor = 2 ** (len(cfg.model.channels) - 1)
    if cfg.preprocess.size % factor:
        raise ValueError(
            f"config: preprocess.size={cfg.preprocess.size} must be divisible by {factor} "
            f"(2^(levels-1) for model.channels={list(cfg.model.channels)})"
        )
    for c in cfg.model.channels:
        g = min(cfg.model.groups, c)
        if c % g:
            raise ValueError(f"config: model.groups={cfg.model.groups} does not divide model.channels entry {c}")
    if not cfg.diffusion.beta_start < cfg.diffusion.beta_end:
        raise ValueError("config: diffusion.beta_start must be smaller than diffusion.beta_end")
    if cfg.split.test >= 1 and cfg.split.test != int(cfg.split.test):
        raise ValueError(f"config: split.test={cfg.split.test} must be a fraction < 1 or a whole count")
    if cfg.train.batch_size % cfg.train.grad_accumulation:
        raise ValueError(
            f"config: train.grad_accumulation={cfg.train.grad_accumulation} must divide "
            f"train.batch_size={cfg.train.batch_size} (each step splits the batch into that many micro-batches)"
        )
    T = cfg.diffusion.timesteps
    _check_sampler_steps("sample", cfg.sample.sampler, cfg.sample.steps, cfg.sample.eta, T)
    if cfg.figure.synthetic >= cfg.sample.n:
        raise ValueError(f"config: figure.synthetic={cfg.figure.synthetic} must be below sample.n={cfg.sample.n}")
    _check_evaluate(cfg.evaluate, T)
    _check_kid(cfg)
    _check_reader_study(cfg)


def _check_sampler_steps(key: str, sampler: str, steps: int | None, eta: float, T: int) -> None:
    """The sample section's rules for one sampler setting at ``key``: a known sampler, steps in 1..T, ddpm
    runs all T steps; eta >= 0 and, since only DDIM uses it, 0 for the other samplers."""
    if sampler not in SAMPLERS:
        raise ValueError(f"config: {key}.sampler={sampler!r} must be one of {', '.join(SAMPLERS)}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T):
        raise ValueError(f"config: {key}.steps={steps} must lie in 1..{T} (diffusion.timesteps)")
    if sampler == "ddpm" and steps not in (None, T):
        raise ValueError(f"config: {key}.steps={steps}: the ddpm sampler runs all {T} steps (use null or ddim)")
    if eta < 0:
        raise ValueError(f"config: {key}.eta={eta} must be >= 0")
    if eta and sampler != "ddim":
        raise ValueError(f"config: {key}.eta={eta}: only the ddim sampler uses eta (leave it 0 for {sampler})")


def _check_evaluate(e: EvaluateConfig, T: int) -> None:
    seen: dict[tuple, int] = {}
    for k, run in enumerate(e.compare_samplers):
        key = f"evaluate.compare_samplers[{k}]"
        _check_sampler_steps(key, run.sampler, run.steps, run.eta, T)
        same = (run.sampler, T if run.steps is None else run.steps, run.eta)
        if same in seen:
            raise ValueError(f"config: {key} repeats evaluate.compare_samplers[{seen[same]}] "
                             f"({run.sampler}, {same[1]} steps, eta {run.eta})")
        seen[same] = k


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


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict view of a config or one of its sections (lists for tuples), e.g. for checkpoints."""

    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v

    return plain(asdict(cfg))
