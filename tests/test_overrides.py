"""Command-line config values: Snakemake hands over the scalars of a ``--config`` mapping as strings; they are
read as the schema types them before validation, and a wrong value is still refused naming its key."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from ctdiff.config import from_dict, schema_checker
from ctdiff.overrides import coerce, coerce_config

REPO = Path(__file__).resolve().parents[1]
SCHEMA_FILE = REPO / "workflow" / "schemas" / "config.schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_FILE.read_text())


def cli_value(text: str):
    """What ``snakemake --config key=TEXT`` hands the workflow for a mapping or list (its parse_config)."""
    from snakemake.cli import parse_config

    return parse_config([f"key={text}"])["key"]


def test_snakemake_hands_over_nested_scalars_as_strings():
    """The reason this module exists; if Snakemake ever types them itself, coercion is a no-op."""
    assert cli_value("{n: 8, hu: true, steps: null}") == {"n": "8", "hu": "true", "steps": "null"}


@pytest.mark.parametrize("section, text, expected", [
    ("sample", "{n: 8}", {"n": 8}),
    ("sample", "{hu: true, compile: false}", {"hu": True, "compile": False}),
    ("sample", "{steps: null, eta: 0.5}", {"steps": None, "eta": 0.5}),
    ("train", "{lr: 1e-3, lr_schedule: cosine}", {"lr": 1e-3, "lr_schedule": "cosine"}),
    ("figure", "{real: 3, synthetic: 1, slices: [40, null, null]}",
     {"real": 3, "synthetic": 1, "slices": [40, None, None]}),
    ("model", "{channels: [8, 16]}", {"channels": [8, 16]}),
    ("evaluate", "{compare_samplers: [{sampler: ddim, steps: 50, eta: 0.5}]}",
     {"compare_samplers": [{"sampler": "ddim", "steps": 50, "eta": 0.5}]}),
])
def test_command_line_values_are_read_as_the_schema_types_them(section, text, expected):
    raw = {section: cli_value(text)}
    coerced = coerce_config(raw, SCHEMA)
    assert coerced == {section: expected}
    assert {k: type(v) for k, v in coerced[section].items()} == {k: type(v) for k, v in expected.items()}
    validate(coerced, str(SCHEMA_FILE))


def test_strings_the_schema_allows_stay_strings():
    """Only values whose schema type is not string are read again: a folder named 'null' or '8' stays one,
    and a name that looks like a number stays a name."""
    raw = {"data": cli_value("{root: 'null'}"), "name": "8", "results": "007",
           "reader_study": cli_value("{answers: 'true'}")}
    assert coerce_config(raw, SCHEMA) == {"data": {"root": "null"}, "name": "8", "results": "007",
                                          "reader_study": {"answers": "true"}}


def test_typed_values_and_unknown_keys_are_left_alone():
    """A YAML file's values arrive typed and pass unchanged; keys the schema does not know are left for the
    validation to refuse by name."""
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert coerce_config(raw, SCHEMA) == raw
    assert coerce({"sample": {"nn": "8"}}, SCHEMA) == {"sample": {"nn": "8"}}


def test_a_whole_section_given_as_text_is_read():
    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "integer"}}}}}
    assert coerce({"a": "{b: 2}"}, schema) == {"a": {"b": 2}}
    assert coerce({"a": "b"}, schema) == {"a": "b"}  # not a mapping: left for the validation


def test_the_input_is_not_changed():
    raw = {"sample": {"n": "8"}}
    coerce_config(raw, SCHEMA)
    assert raw == {"sample": {"n": "8"}}


@pytest.mark.parametrize("text, message", [
    ("{n: -1}", "-1 is less than the minimum of 1"),
    ("{n: eight}", "'eight' is not of type 'integer'"),
    ("{n: 2.5}", "2.5 is not of type 'integer'"),
    ("{hu: maybe}", "'maybe' is not of type 'boolean'"),
    ("{n: '[1'}", "'[1' is not of type 'integer'"),  # YAML that does not parse stays the string it was
])
def test_wrong_values_are_still_refused_naming_the_key(text, message):
    coerced = coerce_config({"sample": cli_value(text)}, SCHEMA)
    with pytest.raises(WorkflowError) as err:
        validate(coerced, str(SCHEMA_FILE))
    assert message in str(err.value) and "['sample']" in str(err.value), str(err.value)


def test_variant_sections_are_read_against_the_main_sections():
    """A variant's section overrides are plain objects in the schema: they are read with the main section's
    types, then merged and checked as a config of their own."""
    raw = {"variants": cli_value("[{name: short, train: {steps: 5, compile: true}, sample: {steps: null}}]")}
    coerced = coerce_config(raw, SCHEMA)
    assert coerced["variants"] == [{"name": "short", "train": {"steps": 5, "compile": True},
                                    "sample": {"steps": None}}]
    validate(coerced, str(SCHEMA_FILE))
    cfg = from_dict(coerced, schema_check=schema_checker(str(SCHEMA_FILE)))
    assert cfg.variants[0].train == {"steps": 5, "compile": True}
    bad = coerce_config({"variants": cli_value("[{name: short, train: {steps: eight}}]")}, SCHEMA)
    validate(bad, str(SCHEMA_FILE))
    with pytest.raises(ValueError, match=r"variants\[0\] \(short\): train.steps: 'eight' is not of type"):
        from_dict(bad, schema_check=schema_checker(str(SCHEMA_FILE)))


def test_the_workflow_reads_command_line_values_as_typed(tmp_path):
    """End to end through the snakemake command line: a dry run with numbers, booleans, null and lists in
    --config, and a wrong number refused naming the key."""
    snakemake = [str(Path(sys.executable).parent / "snakemake"), "--snakefile", str(REPO / "Snakefile"),
                 "--directory", str(tmp_path), "-n", "--cores", "1", "--configfile", str(REPO / "tests" / "tiny.yaml")]
    ok = subprocess.run([*snakemake, "--config", "sample={n: 3, hu: false, steps: null}",
                         "figure={real: 1, synthetic: 2, slices: [4, null, null]}"],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    bad = subprocess.run([*snakemake, "--config", "sample={n: -1}"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "-1 is less than the minimum of 1" in bad.stdout + bad.stderr
    assert "['sample']['n']" in bad.stdout + bad.stderr
