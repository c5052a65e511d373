"""metrics.json has a schema: every key described, a real file from the tiny evaluate follows it, the writer
refuses a dict that does not (naming the key), and the readers take the key names from ctdiff.metrics.keys."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ctdiff.metrics import keys
from test_evaluate import _run, _volumes, _write

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, dict]:
    """A metrics.json that the tiny evaluate of tests/test_evaluate.py writes, and the dict it returned."""
    tmp = tmp_path_factory.mktemp("metrics")
    real = [_write(tmp / "real", f"LIDC-{k:04d}", v) for k, v in enumerate(_volumes(6, 0))]
    syn = [_write(tmp / "samples", f"{k:04d}", v) for k, v in enumerate(_volumes(4, 1))]
    out = tmp / "metrics" / "metrics.json"
    return out, _run(real, syn, out, provenance={"checkpoint": "model.pt", "step": 12})


def _described(node: dict, path: str = "") -> list[str]:
    """Paths of the schema's properties (at any depth) without a description."""
    missing = []
    for name, prop in node.get("properties", {}).items():
        if not prop.get("description"):
            missing.append(f"{path}{name}")
        missing += _described(prop, f"{path}{name}.")
    return missing


def test_every_key_is_described_and_named_once():
    schema = keys.schema()
    assert schema["additionalProperties"] is False  # a top-level key the schema does not describe is refused
    assert not _described(schema), _described(schema)
    assert all(d.get("description") for d in schema["$defs"].values() for d in d["properties"].values())
    assert tuple(schema["properties"]) == keys.ALL
    constants = {v for k, v in vars(keys).items() if k.isupper() and isinstance(v, str) and k != "SCHEMA_FILE"}
    assert constants == set(keys.ALL)
    # nodules: conditioned models only; membership: only where privacy.enabled
    assert set(schema["required"]) == set(keys.ALL) - {keys.NODULES, keys.MEMBERSHIP}


def test_a_metrics_json_written_by_evaluate_follows_the_schema(written):
    out, returned = written
    on_disk = json.loads(out.read_text())
    assert on_disk == json.loads(json.dumps(returned))
    keys.check_metrics(on_disk)
    assert list(on_disk) == [k for k in keys.ALL if k in on_disk]  # stored in the order ALL lists them
    assert set(keys.schema()["required"]) <= set(on_disk)


@pytest.mark.parametrize("change, named", [
    (lambda m: m.pop(keys.MSSSIM_NEAREST_REAL), r"\(top level\): 'msssim_nearest_real' is a required property"),
    (lambda m: m[keys.MSSSIM_DIVERSITY].pop("mean"), r"msssim_diversity: 'mean' is a required property"),
    (lambda m: m.update({keys.FID: "9.7"}), r"fid: '9.7' is not of type 'number'"),
    (lambda m: m[keys.BOOTSTRAP].update({keys.FID: {"low": 1.0}}), r"bootstrap.fid: 'high' is a required property"),
    (lambda m: m.update({keys.N_REAL: 2.5}), r"n_real: 2.5 is not of type 'integer'"),
    (lambda m: m.update({"fid_score": 1.0}), r"'fid_score' was unexpected"),
])
def test_a_metrics_dict_that_breaks_the_schema_is_refused_naming_the_key(written, change, named):
    metrics = json.loads(written[0].read_text())
    change(metrics)
    with pytest.raises(ValueError, match=named):
        keys.check_metrics(metrics)


def test_evaluate_checks_before_writing(tmp_path, monkeypatch):
    """The writer refuses a dict that breaks the schema and leaves no file behind."""
    from ctdiff.metrics import evaluate as module

    monkeypatch.setattr(module, "PAPER", {"fid": "9.70", "msssim": 0.266})
    real = [_write(tmp_path / "real", f"LIDC-{k:04d}", v) for k, v in enumerate(_volumes(4, 0))]
    syn = [_write(tmp_path / "samples", f"{k:04d}", v) for k, v in enumerate(_volumes(2, 1))]
    out = tmp_path / "metrics" / "metrics.json"
    with pytest.raises(ValueError, match=r"metrics.json \(not written\) does not follow metrics.schema.json:\n"
                                         r"paper.fid: '9.70' is not of type 'number'"):
        _run(real, syn, out, bootstrap=0)
    assert not out.exists()


def test_the_readers_spell_no_metrics_key_themselves():
    """Keys that only metrics.json uses appear as string literals in ctdiff.metrics.keys and nowhere else in the
    package (the readers: report, reading guide, variants table, figures; the writer: evaluate)."""
    own = [keys.MSSSIM_NEAREST_REAL, keys.MSSSIM_DIVERSITY, keys.FID_RANK_DEFICIENT, keys.FID_FEATURE_DIM,
           keys.REAL_VOLUMES, keys.FEATURE_NETWORK, keys.MEMORISATION, keys.PROVENANCE, keys.VOLUME_SHAPE,
           keys.N_TRAIN]
    pattern = re.compile(r"""(?<!`)["'](%s)["']""" % "|".join(own))
    found = [f"{path.relative_to(REPO)}: {m.group(1)}"
             for path in sorted((REPO / "ctdiff").rglob("*.py")) if path.name != "keys.py"
             for m in pattern.finditer(path.read_text(encoding="utf-8"))]
    assert not found, found
    assert len(re.findall(r'"msssim_nearest_real"', (REPO / "ctdiff" / "metrics" / "keys.py").read_text())) == 1
