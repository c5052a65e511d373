"""`ctdiff sample`: the settings the workflow writes parse back to the same sample section, its options (typed by
hand) are the section's keys with the section's defaults, and that section is what the sampling stage receives."""
from dataclasses import replace
from pathlib import Path

import pytest

from ctdiff import cli
from ctdiff.config import SampleConfig
from ctdiff.plan import compared_sample, sample_settings


def _parsed(options: list[str]) -> SampleConfig:
    """`ctdiff sample` with ``options``, parsed by the command line as it runs (without drawing)."""
    args = cli.parser().parse_args(["sample", "--checkpoint", "model.pt", "--out", "out", *options])
    return cli.sample_settings(args)


@pytest.mark.parametrize("settings", [
    SampleConfig(),
    SampleConfig(n=3, sampler="ddim", steps=50, eta=0.5, batch_size=2, seed=7, precision="bf16", compile=True,
                 hu=True),
    SampleConfig(n=1, sampler="dpmpp", steps=25, eta=0, hu=True),
    SampleConfig(n=2, sampler="euler", steps=30),
    SampleConfig(n=2, sampler="heun"),
    SampleConfig(n=2, guidance=2.5),
    compared_sample(SampleConfig(n=4, hu=True, compile=True), {"sampler": "ddim", "steps": 10, "eta": 1.0}),
])
def test_the_workflow_settings_and_the_typed_options_parse_back_to_the_same_section(settings):
    assert _parsed(["--settings", sample_settings(settings)]) == settings
    assert _parsed(_typed(settings)) == settings
    # an option typed beside --settings replaces that key only
    assert _parsed(["--settings", sample_settings(settings), "--seed", "11"]) == replace(settings, seed=11)


def _typed(s: SampleConfig) -> list[str]:
    """The options a person types for ``s``."""
    options = ["-n", str(s.n), "--sampler", s.sampler, "--eta", str(s.eta), "--batch-size", str(s.batch_size),
               "--seed", str(s.seed), "--precision", s.precision, "--guidance", str(s.guidance)]
    options += ["--steps", str(s.steps)] * (s.steps is not None) + ["--compile"] * s.compile + ["--hu"] * s.hu
    return options


def test_the_command_line_defaults_are_the_sample_sections():
    assert _parsed(["-n", str(SampleConfig().n)]) == SampleConfig()
    with pytest.raises(SystemExit):  # the count has no default on the command line
        _parsed([])
    with pytest.raises(SystemExit):
        _parsed(["-n", "2", "--sampler", "plms"])


def test_sample_hands_generate_the_sample_section(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr("ctdiff.sampling.generate.generate", lambda *args, **kwargs: calls.append((args, kwargs)))
    assert cli.main(["sample", "--checkpoint", "model.pt", "-n", "2", "--sampler", "ddim", "--steps", "4", "--hu",
                     "--out", str(tmp_path), "--device", "cpu", "--no-progress"]) == 0
    (checkpoint, out_files, cache, settings), kwargs = calls[0]
    assert checkpoint == Path("model.pt") and cache == tmp_path / ".cache"
    assert out_files == [tmp_path / "0000.nii.gz", tmp_path / "0001.nii.gz"]
    assert settings == replace(SampleConfig(), n=2, sampler="ddim", steps=4, hu=True)
    assert kwargs == {"hu_files": [tmp_path / "hu" / "0000.nii.gz", tmp_path / "hu" / "0001.nii.gz"],
                      "device": "cpu", "progress": False, "condition_masks": None}


def test_condition_options_follow_the_settings_and_leave_unconditioned_ones_as_they_were(tmp_path):
    from ctdiff.config import Config, ModelConfig
    from ctdiff.plan import sample_condition_options, train_condition_options

    plain, nodules = Config(results="r"), Config(results="r", model=ModelConfig(condition="nodules"))
    assert sample_condition_options(plain) == train_condition_options(plain) == ""
    options = sample_condition_options(nodules)
    assert options == "--nodules-from r/preprocessed/nodules --nodule-items r/splits/test.txt"
    args = cli.parser().parse_args(["sample", "--checkpoint", "m.pt", "--out", "o", "--settings",
                                    sample_settings(SampleConfig(n=2, guidance=2.0)), *options.split()])
    assert cli.sample_settings(args) == SampleConfig(n=2, guidance=2.0)
    assert (args.nodules_from, args.nodule_items) == ("r/preprocessed/nodules", "r/splits/test.txt")
    assert train_condition_options(nodules) == "--nodules r/preprocessed/nodules"


def test_help_describes_the_command_in_whole_sentences():
    """``ctdiff --help`` once printed its description cut mid-sentence ("``ctdiff sample`` (what the")."""
    text = " ".join(cli.parser().format_help().split())
    assert " ".join(cli.DESCRIPTION.split()) in text
    assert cli.DESCRIPTION.endswith(".") and cli.DESCRIPTION.count("(") == cli.DESCRIPTION.count(")")
    assert "``" not in text
