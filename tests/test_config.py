"""Config: the schema fills defaults and rejects bad keys by name; from_dict checks cross-key rules."""
import re
from dataclasses import MISSING, fields, is_dataclass, replace
from pathlib import Path
from types import UnionType
from typing import Literal, Union, get_args, get_origin, get_type_hints

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from ctdiff import options
from ctdiff.config import (
    Config,
    EvaluateConfig,
    SamplerSetting,
    VariantConfig,
    check_bootstrap,
    from_dict,
    schema_checker,
    section_from_dict,
    to_dict,
)

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")


def load(name):
    return yaml.safe_load((REPO / "config" / name).read_text())


def test_default_config_is_valid_and_typed():
    raw = load("config.yaml")
    validate(raw, SCHEMA)
    cfg = from_dict(raw)
    assert isinstance(cfg, Config)
    assert cfg.preprocess.size == 24 and cfg.model.channels == (16, 32, 64)
    assert cfg.preprocess.hu_window == (-1000, 400)
    assert to_dict(cfg)["model"]["channels"] == [16, 32, 64]
    assert cfg.model.representation == "wavelet" and cfg.diffusion.objective == "flow"
    assert (cfg.sample.sampler, cfg.sample.steps) == ("euler", 30)
    assert cfg.evaluate.compare_samplers == (SamplerSetting("heun", 15, 0.0),)
    assert cfg.evaluate.bootstrap == 200 and cfg.evaluate.ci_level == 0.95
    assert to_dict(cfg)["evaluate"]["compare_samplers"][0] == {"sampler": "heun", "steps": 15, "eta": 0.0}
    assert from_dict(to_dict(cfg)) == cfg  # rule params carry to_dict sections
    assert cfg.reader_study.counts() == (4, 2)  # the demo's 4 held-out volumes and its 2 samples


def test_schema_fills_nested_defaults():
    raw = {"data": {"source": "phantom"}}
    validate(raw, SCHEMA)
    assert raw["preprocess"]["size"] == 128
    assert raw["diffusion"]["timesteps"] == 1000
    assert raw["train"]["lr"] == pytest.approx(1e-5)
    assert raw["evaluate"]["compare_samplers"] == [] and raw["evaluate"]["bootstrap"] == 200
    from_dict(raw)
    entries = {"evaluate": {"compare_samplers": [{"sampler": "ddim", "steps": 50}]}}
    validate(entries, SCHEMA)
    assert entries["evaluate"]["compare_samplers"] == [{"sampler": "ddim", "steps": 50, "eta": 0.0}]


@pytest.mark.parametrize(
    "patch, key",
    [
        ({"preprocess": {"sise": 32}}, "sise"),
        ({"train": {"precision": "fp8"}}, "fp8"),
        ({"sample": {"sampler": "plms"}}, "plms"),
        ({"data": {"source": "nifti"}}, "nifti"),
        ({"bogus": 1}, "bogus"),
        ({"evaluate": {"compare_samplers": [{"sampler": "ddim", "stepz": 5}]}}, "stepz"),
        ({"evaluate": {"compare_samplers": [{"sampler": "plms"}]}}, "plms"),
        ({"diffusion": {"objective": "x0"}}, "x0"),
        ({"diffusion": {"flow_t": "beta"}}, "beta"),
        ({"diffusion": {"flow_t_scale": 0}}, "flow_t_scale"),
        ({"evaluate": {"compare_samplers": [{"steps": 5}]}}, "sampler"),
        ({"evaluate": {"bootstrap": -1}}, "bootstrap"),
        ({"evaluate": {"ci_level": 1.0}}, "ci_level"),
        ({"evaluate": {"kid_subset_size": 1}}, "kid_subset_size"),
        ({"evaluate": {"kid_subsets": 0}}, "kid_subsets"),
        ({"reader_study": {"synthetic_fraction": 1.0}}, "synthetic_fraction"),
        ({"reader_study": {"n_cases": 1}}, "n_cases"),
        ({"reader_study": {"lung_window": [-600]}}, "lung_window"),
    ],
)
def test_schema_rejects_bad_keys_by_name(patch, key):
    with pytest.raises(WorkflowError, match=key):
        validate(patch, SCHEMA)


def test_kid_subsets_larger_than_the_test_split_are_left_to_the_evaluate_stage():
    """The real set is known only after ingestion; evaluate() refuses it there, naming the key
    (tests/test_evaluate.py::test_kid_refuses_sets_smaller_than_its_subsets)."""
    raw = {"split": {"test": 20}}
    validate(raw, SCHEMA)
    assert from_dict(raw).evaluate.kid_subset_size == 100


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"preprocess": {"size": 36}, "model": {"channels": [8, 16, 32, 64]}}, "preprocess.size=36"),
        ({"model": {"channels": [12, 24], "groups": 8}}, "model.groups=8"),
        ({"data": {"source": "dicom"}}, "data.root"),
        ({"train": {"batch_size": 2, "grad_accumulation": 4}}, "train.grad_accumulation=4"),
        ({"preprocess": {"hu_window": [400, -1000]}}, "hu_window"),
        ({"sample": {"sampler": "ddpm", "steps": 50}}, "sample.steps=50"),
        ({"sample": {"sampler": "ddim", "steps": 5000}}, "sample.steps=5000"),
        ({"sample": {"sampler": "dpmpp", "steps": 20, "eta": 0.5}}, "sample.eta=0.5"),
        ({"split": {"test": 2.5}}, "split.test"),
        ({"sample": {"n": 2}, "figure": {"synthetic": 2}}, "figure.synthetic"),
        ({"evaluate": {"compare_samplers": [{"sampler": "ddim", "steps": 50}, {"sampler": "ddpm", "steps": 50}]}},
         "evaluate.compare_samplers[1].steps=50: the ddpm sampler runs all 1000 steps"),
        ({"evaluate": {"compare_samplers": [{"sampler": "dpmpp", "steps": 5000}]}},
         "evaluate.compare_samplers[0].steps=5000 must lie in 1..999 (dpmpp: diffusion.timesteps - 1"),
        ({"evaluate": {"compare_samplers": [{"sampler": "ddim", "steps": 5000}]}},
         "evaluate.compare_samplers[0].steps=5000 must lie in 1..1000 (diffusion.timesteps)"),
        ({"sample": {"sampler": "dpmpp"}}, "sample.steps=null means diffusion.timesteps=1000, but dpmpp takes 1..999"),
        ({"sample": {"sampler": "euler", "steps": 30}},
         "sample.sampler='euler' cannot sample a diffusion.objective='eps' model (it samples flow models); "
         "allowed samplers for eps: ddpm, ddim, dpmpp"),
        ({"diffusion": {"objective": "flow"}},
         "sample.sampler='ddpm' cannot sample a diffusion.objective='flow' model (it samples eps and v models); "
         "allowed samplers for flow: euler, heun"),
        ({"diffusion": {"objective": "v"}, "sample": {"sampler": "heun", "steps": 10}},
         "sample.sampler='heun' cannot sample a diffusion.objective='v' model"),
        ({"diffusion": {"objective": "flow"}, "sample": {"sampler": "euler", "steps": 30},
          "evaluate": {"compare_samplers": [{"sampler": "heun", "steps": 15}, {"sampler": "dpmpp", "steps": 25}]}},
         "evaluate.compare_samplers[1].sampler='dpmpp' fits no configured objective (flow; their samplers: euler, heun)"),
        ({"diffusion": {"objective": "flow"}, "sample": {"sampler": "heun", "steps": 1001}},
         "sample.steps=1001 must lie in 1..1000 (diffusion.timesteps)"),
        ({"diffusion": {"objective": "flow"}, "sample": {"sampler": "euler", "steps": 30, "eta": 0.5}},
         "sample.eta=0.5: only the ddim sampler uses eta"),
        ({"diffusion": {"timesteps": 50}, "evaluate": {"compare_samplers": [{"sampler": "ddim", "steps": 51}]}},
         "evaluate.compare_samplers[0].steps=51 must lie in 1..50"),
        ({"evaluate": {"compare_samplers": [{"sampler": "dpmpp", "steps": 25, "eta": 0.5}]}},
         "evaluate.compare_samplers[0].eta=0.5: only the ddim sampler"),
        ({"evaluate": {"compare_samplers": [{"sampler": "ddim", "steps": 1000}, {"sampler": "ddim"}]}},
         "evaluate.compare_samplers[1] repeats evaluate.compare_samplers[0]"),
        ({"sample": {"n": 50}}, "evaluate.kid_subset_size=100 exceeds sample.n=50"),
        ({"sample": {"n": 50}, "evaluate": {"kid_subset_size": 60}}, "lower evaluate.kid_subset_size to at most 50"),
        ({"sample": {"n": 100}, "evaluate": {"kid_subset_size": 100}, "reader_study": {"n_cases": 2,
          "synthetic_fraction": 0.2}}, "reader_study.synthetic_fraction=0.2 with reader_study.n_cases=2 gives 2 real "
         "and 0 synthetic cases; the study needs both"),
        ({"sample": {"n": 100}, "evaluate": {"kid_subset_size": 100}, "reader_study": {"n_cases": 300}},
         "reader_study.n_cases=300 with reader_study.synthetic_fraction=0.5 asks for 150 synthetic cases but "
         "sample.n=100"),
        ({"sample": {"n": 100}, "evaluate": {"kid_subset_size": 100}, "reader_study": {"lung_window": [-600, 0]}},
         "reader_study.lung_window=[-600, 0] must be [level, width] with width > 0"),
    ],
)
def test_cross_key_errors_name_the_key(patch, message):
    raw = {k: dict(v) for k, v in patch.items()}
    validate(raw, SCHEMA)
    with pytest.raises(ValueError, match=re.escape(message)):
        from_dict(raw)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="train.learning_rate"):
        from_dict({"train": {"learning_rate": 1.0}})
    with pytest.raises(ValueError, match=r"evaluate\.compare_samplers\[1\]\.stepz"):
        from_dict({"evaluate": {"compare_samplers": [{"sampler": "ddim"}, {"sampler": "ddim", "stepz": 5}]}})
    with pytest.raises(ValueError, match=r"evaluate\.compare_samplers\[0\]\.sampler is missing"):
        from_dict({"evaluate": {"compare_samplers": [{"steps": 5}]}})


@pytest.mark.parametrize(
    "evaluate, message",
    [
        ({"bootstrap": -1}, "evaluate.bootstrap=-1"),
        ({"bootstrap": 2.5}, "evaluate.bootstrap=2.5"),
        ({"ci_level": 1.0}, "evaluate.ci_level=1.0"),
        ({"ci_level": 0}, "evaluate.ci_level=0"),
        ({"compare_samplers": [{"sampler": "ddim", "steps": 10, "eta": -1}]}, r"compare_samplers[0].eta=-1"),
        ({"compare_samplers": ["ddim"]}, r"evaluate.compare_samplers[0] must be a mapping"),
        ({"kid_subset_size": 1}, "evaluate.kid_subset_size=1 must be >= 2"),
        ({"kid_subsets": 0}, "evaluate.kid_subsets=0 >= 1"),
    ],
)
def test_evaluate_checks_without_the_schema_name_the_key(evaluate, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        from_dict({"evaluate": evaluate})


def _schema():
    return yaml.safe_load(Path(SCHEMA).read_text())


def _plain(value):
    """A dataclass default as the schema writes it: tuples as lists."""
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


def _schema_types(hint) -> set[str]:
    """The JSON-schema types of a dataclass annotation."""
    if get_origin(hint) is Literal:
        return {{str: "string", int: "integer"}[type(a)] for a in get_args(hint)}
    if get_origin(hint) in (Union, UnionType):
        return set().union(*(_schema_types(h) for h in get_args(hint)))
    if get_origin(hint) is tuple:
        return {"array"}
    if get_origin(hint) is dict:
        return {"object"}
    return {{str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}[hint]}


def _sections():
    """(key path, dataclass, schema object) of every section and of a compare_samplers entry."""
    schema = _schema()
    hints = get_type_hints(Config)
    for f in fields(Config):
        if is_dataclass(hints[f.name]):
            yield f.name, hints[f.name], schema["properties"][f.name]
    yield "evaluate.compare_samplers[]", SamplerSetting, schema["properties"]["evaluate"]["properties"][
        "compare_samplers"]["items"]
    yield "variants[]", VariantConfig, schema["properties"]["variants"]["items"]


@pytest.mark.parametrize("path, cls, obj", [pytest.param(*s, id=s[0]) for s in _sections()])
def test_dataclasses_have_the_schema_keys_types_and_defaults(path, cls, obj):
    """The schema is the one source of defaults: every dataclass field is a schema key, in the same order,
    with the schema's type and default (a key without a default in one has none in the other)."""
    props = obj["properties"]
    assert [f.name for f in fields(cls)] == list(props), path
    hints = get_type_hints(cls)
    for f in fields(cls):
        prop, where = props[f.name], f"{path}.{f.name}"
        types = prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
        assert _schema_types(hints[f.name]) == set(types), where
        if f.default is MISSING and f.default_factory is not MISSING:
            assert f.default_factory() == prop["default"], where
        elif f.default is MISSING:
            assert "default" not in prop and f.name in obj.get("required", []), where
        else:
            assert _plain(f.default) == prop["default"], where
    if "default" in obj:
        assert obj["default"] == {} and cls() == section_from_dict(path, {}), path


def test_schema_top_level_defaults_are_the_config_defaults():
    top = _schema()["properties"]
    assert (top["results"]["default"], top["name"]["default"], top["variants"]["default"]) == (
        Config().results, Config().name, list(Config().variants))
    assert list(_schema()["properties"]) == [f.name for f in fields(Config)]


def test_schema_enums_are_the_option_sets():
    """Every closed set of the schema is the Literal of its dataclass field, which comes from ctdiff.options."""
    from ctdiff.metrics.med3d import DEPTHS

    option_sets = {options.Sampler, options.Precision, options.TrainPrecision, options.Objective, options.FlowTime,
                   options.BetaSchedule, options.LrSchedule, options.Source, options.SeriesChoice, options.Normalise,
                   options.Representation, options.Condition}
    literals = 0
    for path, cls, obj in _sections():
        hints = get_type_hints(cls)
        for name, prop in obj["properties"].items():
            if get_origin(hints[name]) is Literal:
                literals += 1
                assert hints[name] in option_sets, f"{path}.{name}: a Literal not taken from ctdiff.options"
                assert tuple(prop["enum"]) == get_args(hints[name]), f"{path}.{name}"
            elif "enum" in prop:
                assert (path, name) == ("evaluate", "med3d_depth") and tuple(prop["enum"]) == DEPTHS
    assert literals == 13
    assert options.SAMPLERS == ("ddpm", "ddim", "dpmpp", "euler", "heun") and options.PRECISIONS == ("fp32", "bf16")
    assert options.OBJECTIVES == ("eps", "v", "flow") and options.FLOW_TIMES == ("logit_normal", "uniform")
    # every objective has its samplers, and every sampler serves some objective
    assert tuple(options.SAMPLERS_FOR) == options.OBJECTIVES
    assert set(options.SAMPLERS) == {s for samplers in options.SAMPLERS_FOR.values() for s in samplers}
    assert options.TRAIN_PRECISIONS == ("fp32", "bf16", "auto")  # sampling has no auto
    assert options.NORMALISE == get_args(options.Normalise) and options.SOURCES == get_args(options.Source)
    assert options.CONDITIONS == ("none", "nodules")


def test_section_from_dict_rebuilds_what_rule_params_carry():
    cfg = from_dict(load("config.yaml"))
    for f in fields(Config):
        if f.name not in ("results", "name", "variants"):
            assert section_from_dict(f.name, to_dict(getattr(cfg, f.name))) == getattr(cfg, f.name), f.name
    evaluate = {k: v for k, v in to_dict(cfg.evaluate).items() if k != "compare_samplers"}
    assert section_from_dict("evaluate", evaluate) == replace(cfg.evaluate, compare_samplers=())
    with pytest.raises(ValueError, match="unknown key preprocess.sise"):
        section_from_dict("preprocess", {"sise": 3})
    with pytest.raises(ValueError, match="no section 'sampling'"):
        section_from_dict("sampling", {})


def test_bootstrap_settings_have_one_rule():
    """EvaluateConfig refuses bad bootstrap settings however it is built; the interval functions apply the same
    rule with at least one replicate."""
    with pytest.raises(ValueError, match=r"evaluate\.bootstrap=True"):
        EvaluateConfig(bootstrap=True)
    with pytest.raises(ValueError, match=r"evaluate\.ci_level=0\.0"):
        EvaluateConfig(ci_level=0.0)
    assert EvaluateConfig(bootstrap=0).bootstrap == 0
    check_bootstrap(1, 0.5, least=1, names=("n_boot", "level"))
    with pytest.raises(ValueError, match=r"n_boot=0 must be a whole number >= 1"):
        check_bootstrap(0, 0.5, least=1, names=("n_boot", "level"))


def test_hu_window_and_ema_decay_defaults_live_in_the_dataclasses():
    """Functions that take the HU window or the EMA decay restate no default of their own: they default to the
    dataclass field (whose default the schema test above ties to the schema) or take the value from the caller."""
    import inspect

    from ctdiff.config import PreprocessConfig
    from ctdiff.ingest.preprocess import preprocess
    from ctdiff.metrics.evaluate import evaluate
    from ctdiff.training.step import train_step

    for function in (preprocess, evaluate):
        assert inspect.signature(function).parameters["hu_window"].default is PreprocessConfig.hu_window
    assert inspect.signature(train_step).parameters["ema_decay"].default is inspect.Parameter.empty


# Model variants: a named list of overrides, each merged into the main config and checked like one.

VARIANTS = [{"name": "cosine", "train": {"lr_schedule": "cosine"}},
            {"name": "small", "model": {"channels": [8, 16]}, "sample": {"sampler": "ddim", "steps": 20}}]


def test_variants_merge_into_the_main_config():
    from ctdiff.config import variant_config

    raw = {"model": {"channels": [16, 32, 64], "groups": 8}, "variants": [dict(v) for v in VARIANTS]}
    validate(raw, SCHEMA)
    cfg = from_dict(raw, schema_check=schema_checker(SCHEMA))
    assert cfg.name == "paper" and [v.name for v in cfg.variants] == ["cosine", "small"]
    assert cfg.variants[1] == VariantConfig("small", model={"channels": [8, 16]},
                                            sample={"sampler": "ddim", "steps": 20})
    cosine, small = variant_config(cfg, "cosine"), variant_config(cfg, "small")
    assert cosine.train == replace(cfg.train, lr_schedule="cosine") and cosine.model == cfg.model
    assert small.model == replace(cfg.model, channels=(8, 16))  # a list replaces the whole list; groups stay
    assert small.sample == replace(cfg.sample, sampler="ddim", steps=20)
    assert (cosine.name, small.name, small.variants) == ("cosine", "small", ())
    assert small.evaluate == cfg.evaluate and small.preprocess == cfg.preprocess and small.results == cfg.results
    assert variant_config(cfg, "paper") is cfg
    with pytest.raises(ValueError, match="no variant 'big' .configured: paper, cosine, small."):
        variant_config(cfg, "big")
    assert from_dict(to_dict(cfg)) == cfg  # the report's config param rebuilds it
    assert from_dict({}).variants == () and from_dict({"name": "demo"}).name == "demo"



def test_the_cosine_noise_schedule_is_a_choice_and_linear_stays_the_default():
    """diffusion.beta_schedule: cosine validates in the main config and in a variant and reaches make_schedule;
    the default and config/lidc.yaml keep the paper's linear schedule."""
    from ctdiff.diffusion.schedule import build_schedule
    from ctdiff.config import variant_config
    from ctdiff.diffusion.schedule import make_schedule

    assert options.BETA_SCHEDULES == ("linear", "cosine")
    assert Config().diffusion.beta_schedule == "linear"
    for name in ("config.yaml", "lidc.yaml"):
        raw = load(name)
        validate(raw, SCHEMA)
        assert raw["diffusion"]["beta_schedule"] == "linear", name
    raw = {"diffusion": {"beta_schedule": "cosine"}}
    validate(raw, SCHEMA)
    assert from_dict(raw).diffusion.beta_schedule == "cosine"
    raw = {"variants": [{"name": "cos", "diffusion": {"beta_schedule": "cosine"}}]}
    validate(raw, SCHEMA)
    cfg = from_dict(raw, schema_check=schema_checker(SCHEMA))
    cos = variant_config(cfg, "cos")
    assert cos.diffusion == replace(cfg.diffusion, beta_schedule="cosine")
    assert (build_schedule(cos.diffusion).betas == make_schedule(cfg.diffusion.timesteps, "cosine").betas).all()
    assert (build_schedule(cfg.diffusion).betas == make_schedule(cfg.diffusion.timesteps, "linear").betas).all()
    with pytest.raises(WorkflowError, match="beta_schedule"):
        validate({"diffusion": {"beta_schedule": "quadratic"}}, SCHEMA)

@pytest.mark.parametrize("variants, message", [
    ([{"name": "a b", "train": {"lr": 1.0}}], r"variants[0].name='a b' must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}"),
    ([{"name": "../up", "train": {"lr": 1.0}}], r"variants[0].name='../up' must match"),
    ([{"name": "-x", "train": {"lr": 1.0}}], r"variants[0].name='-x' must match"),
    ([{"name": "x" * 65, "train": {"lr": 1.0}}], r"variants[0].name='" + "x" * 65 + "' must match"),
    ([{"train": {"lr": 1.0}}], r"variants[0].name=None must match"),
    ([{"name": "paper", "train": {"lr": 1.0}}], r"variants[0].name='paper' is already the name of the main config's "
                                                 r"row (key name); names must differ"),
    ([{"name": "a", "train": {"lr": 1.0}}, {"name": "a", "train": {"lr": 2.0}}],
     r"variants[1].name='a' is already the name of variants[0]"),
    ([{"name": "a", "train": {"learning_rate": 1.0}}],
     r"variants[0] (a): train.learning_rate is no key a variant can set (allowed in train: steps, batch_size, lr,"),
    ([{"name": "a", "data": {"n_patients": 4}}],
     r"variants[0].data: a variant overrides only model, diffusion, train, sample (allowed keys: name, model,"),
    ([{"name": "a", "sample": {"n": 4}}], r"variants[0] (a): sample.n is no key a variant can set (allowed in "
                                           r"sample: sampler, steps, eta, guidance)"),
    ([{"name": "a", "train": {"lr_schedule": "linear"}}],
     r"variants[0] (a): train.lr_schedule: 'linear' is not one of ['constant', 'cosine']"),
    ([{"name": "a", "model": {"channels": "wide"}}], r"variants[0] (a): model.channels: 'wide' is not of type 'array'"),
    ([{"name": "a", "diffusion": {"beta_end": 2.0}}], r"variants[0] (a): diffusion.beta_end: 2.0 is greater than"),
    ([{"name": "a", "model": {"channels": [12, 24], "groups": 8}}], r"variants[0] (a): model.groups=8 does not divide"),
    ([{"name": "a", "sample": {"sampler": "ddpm", "steps": 20}}],
     r"variants[0] (a): sample.steps=20: the ddpm sampler runs all 1000 steps"),
    ([{"name": "a", "diffusion": {"timesteps": 40}}],  # the main config's compared DDIM-50 no longer fits
     r"variants[0] (a): evaluate.compare_samplers[0].steps=50 must lie in 1..40"),
    ([{"name": "a"}], r"variants[0] (a) trains and samples exactly as the main config (paper): a variant must change"),
    ([{"name": "a", "train": {"lr": 1.0e-5}}], r"variants[0] (a) trains and samples exactly as the main config"),
    ([{"name": "a", "train": {"lr": 1.0}}, {"name": "b", "train": {"lr": 1.0}}],
     r"variants[1] (b) trains and samples exactly as variants[0] (a)"),
    ("cosine", r"variants must be a list of mappings"),
])
def test_bad_variants_are_refused_naming_the_key(variants, message):
    """Refused before any work: what the schema sees in the merged config and what from_dict checks."""
    raw = {"evaluate": {"compare_samplers": [{"sampler": "ddim", "steps": 50}]}, "variants": variants}
    with pytest.raises(ValueError, match=re.escape("config: " + message)):
        from_dict(raw, schema_check=schema_checker(SCHEMA))


def test_the_main_row_name_is_a_file_name_token():
    with pytest.raises(ValueError, match=r"config: name='my run' must match"):
        from_dict({"name": "my run"})
    with pytest.raises(WorkflowError, match="variants"):
        validate({"variants": [{"name": "a", "evaluate": {}}]}, SCHEMA)  # only the listed sections


def test_compared_samplers_must_fit_some_objective(monkeypatch):
    """Each row compares the entries that fit its objective (plan.comparison_runs); an entry no row's
    objective fits is refused."""
    monkeypatch.setitem(options.SAMPLERS_FOR, "eps", ("ddpm", "ddim"))
    with pytest.raises(ValueError, match=r"evaluate.compare_samplers\[1\].sampler='dpmpp' fits no configured "
                                         r"objective \(eps; their samplers: ddim, ddpm\)"):
        from_dict({"evaluate": {"compare_samplers": [{"sampler": "ddim", "steps": 5}, {"sampler": "dpmpp", "steps": 5}]}})


def test_every_objective_names_its_samplers():
    assert set(options.SAMPLERS_FOR) == set(options.OBJECTIVES)
    assert all(set(s) <= set(options.SAMPLERS) for s in options.SAMPLERS_FOR.values())


def _changed(section):
    """``section`` with every field moved off its default where a plain change is valid (each a different
    value, so a key read back into the wrong field shows)."""
    import dataclasses

    values = {}
    for f in dataclasses.fields(section):
        v = getattr(section, f.name)
        if isinstance(v, bool):
            values[f.name] = not v
        elif isinstance(v, int):
            values[f.name] = v + 3
        elif isinstance(v, float):
            values[f.name] = v / 2 if v else 0.25
    return dataclasses.replace(section, **values)


@pytest.mark.parametrize("name", ["data", "preprocess", "split", "model", "diffusion", "train", "sample",
                                  "evaluate", "privacy", "downstream", "figure", "reader_study"])
def test_every_section_round_trips_through_its_written_form(name):
    """What the workflow writes of a section (to_dict, as JSON) reads back into the same dataclass."""
    import json

    from ctdiff.config import section_from_dict

    default = getattr(Config(), name)
    for section in (default, _changed(default)):
        assert section_from_dict(name, json.loads(json.dumps(to_dict(section)))) == section


def test_job_settings_round_trip_and_name_what_is_wrong(tmp_path):
    import dataclasses

    from ctdiff.config import JOB_SECTIONS, job_settings, read_job_settings

    cfg = from_dict({"model": {"channels": [8, 16], "representation": "wavelet"}, "diffusion": {"objective": "flow"},
                     "train": {"steps": 9, "grad_accumulation": 2}, "preprocess": {"size": 32},
                     "sample": {"sampler": "euler", "steps": 4}})
    text = job_settings("train", **{name: getattr(cfg, name) for name in JOB_SECTIONS["train"]})
    back = read_job_settings("train", text)
    assert [getattr(back, n) for n in JOB_SECTIONS["train"]] == [getattr(cfg, n) for n in JOB_SECTIONS["train"]]
    (tmp_path / "train.json").write_text(text)
    assert read_job_settings("train", f"@{tmp_path / 'train.json'}") == back  # the same from a file
    assert read_job_settings("sample", job_settings("sample", sample=cfg.sample)).sample == cfg.sample
    # a flow model needs no invented sampler to be trained: training reads no sample section
    assert back.sample == Config().sample
    with pytest.raises(ValueError, match=r"train settings hold the sections model, diffusion, train, preprocess; "
                                         r"missing: preprocess; not read by train: sample"):
        read_job_settings("train", '{"model": {}, "diffusion": {}, "train": {}, "sample": {}}')
    with pytest.raises(ValueError, match=r"unknown key sample.stepz"):
        read_job_settings("sample", '{"sample": {"stepz": 3}}')
    bad = dataclasses.replace(cfg.train, batch_size=3)
    with pytest.raises(ValueError, match=r"train.grad_accumulation=2 must divide train.batch_size=3"):
        read_job_settings("train", job_settings("train", model=cfg.model, diffusion=cfg.diffusion, train=bad,
                                                preprocess=cfg.preprocess))
    with pytest.raises(ValueError, match=r"sample settings are not JSON"):
        read_job_settings("sample", "{sample: 1}")
