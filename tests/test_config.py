"""Config: the schema fills defaults and rejects bad keys by name; from_dict checks cross-key rules."""
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from ctdiff.config import Config, SamplerSetting, from_dict, to_dict

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
    assert cfg.evaluate.compare_samplers == (SamplerSetting("ddim", 50, 0.0), SamplerSetting("dpmpp", 25, 0.0))
    assert cfg.evaluate.bootstrap == 200 and cfg.evaluate.ci_level == 0.95
    assert to_dict(cfg)["evaluate"]["compare_samplers"][1] == {"sampler": "dpmpp", "steps": 25, "eta": 0.0}
    assert from_dict(to_dict(cfg)) == cfg  # rule params carry to_dict sections


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
        ({"sample": {"sampler": "euler"}}, "euler"),
        ({"data": {"source": "nifti"}}, "nifti"),
        ({"bogus": 1}, "bogus"),
        ({"evaluate": {"compare_samplers": [{"sampler": "ddim", "stepz": 5}]}}, "stepz"),
        ({"evaluate": {"compare_samplers": [{"sampler": "euler"}]}}, "euler"),
        ({"evaluate": {"compare_samplers": [{"steps": 5}]}}, "sampler"),
        ({"evaluate": {"bootstrap": -1}}, "bootstrap"),
        ({"evaluate": {"ci_level": 1.0}}, "ci_level"),
    ],
)
def test_schema_rejects_bad_keys_by_name(patch, key):
    with pytest.raises(WorkflowError, match=key):
        validate(patch, SCHEMA)


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
         "evaluate.compare_samplers[0].steps=5000 must lie in 1..1000"),
        ({"diffusion": {"timesteps": 50}, "evaluate": {"compare_samplers": [{"sampler": "ddim", "steps": 51}]}},
         "evaluate.compare_samplers[0].steps=51 must lie in 1..50"),
        ({"evaluate": {"compare_samplers": [{"sampler": "dpmpp", "steps": 25, "eta": 0.5}]}},
         "evaluate.compare_samplers[0].eta=0.5: only the ddim sampler"),
        ({"evaluate": {"compare_samplers": [{"sampler": "ddim", "steps": 1000}, {"sampler": "ddim"}]}},
         "evaluate.compare_samplers[1] repeats evaluate.compare_samplers[0]"),
    ],
)
def test_cross_key_errors_name_the_key(patch, message):
    raw = {k: dict(v) for k, v in patch.items()}
    validate(raw, SCHEMA)
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("[", r"\[")):
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
    ],
)
def test_evaluate_checks_without_the_schema_name_the_key(evaluate, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("[", r"\[")):
        from_dict({"evaluate": evaluate})
