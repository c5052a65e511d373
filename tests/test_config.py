"""Config: the schema fills defaults and rejects bad keys by name; from_dict checks cross-key rules."""
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from ctdiff.config import Config, from_dict, to_dict

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


def test_schema_fills_nested_defaults():
    raw = {"data": {"source": "phantom"}}
    validate(raw, SCHEMA)
    assert raw["preprocess"]["size"] == 128
    assert raw["diffusion"]["timesteps"] == 1000
    assert raw["train"]["lr"] == pytest.approx(1e-5)
    from_dict(raw)


@pytest.mark.parametrize(
    "patch, key",
    [
        ({"preprocess": {"sise": 32}}, "sise"),
        ({"train": {"precision": "fp8"}}, "fp8"),
        ({"sample": {"sampler": "euler"}}, "euler"),
        ({"data": {"source": "nifti"}}, "nifti"),
        ({"bogus": 1}, "bogus"),
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
        ({"split": {"test": 2.5}}, "split.test"),
        ({"sample": {"n": 2}, "figure": {"synthetic": 2}}, "figure.synthetic"),
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
