"""Every sampler family's facts against what the code does with them: its network evaluations against the model
calls of the sampling loop, its grid against the times the model sees, its limits against the config checks and
the loop, its name against the schema, the command line and the samplers table of docs/configuration.md. A new family in
``ctdiff.diffusion.samplers.FAMILIES`` is checked here without a line of this file changing."""

import re
from pathlib import Path

import pytest
import torch
import yaml

from ctdiff import cli, options
from ctdiff.config import from_dict
from ctdiff.diffusion.samplers import FAMILIES, family, network_evaluations, timestep_sequence
from ctdiff.diffusion.sampling import sample
from ctdiff.diffusion.schedule import make_schedule

REPO = Path(__file__).resolve().parents[1]
T = 12  # a short schedule, so that every step count up to T is cheap to run
IDS = [f.name for f in FAMILIES]


class _Counting(torch.nn.Module):
    """A network that predicts zero and records the time of every call (one call = one evaluation for the batch)."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def forward(self, x, t):
        assert t.shape == (x.shape[0],) and len(set(t.tolist())) == 1
        self.times.append(t[0].item())
        return 0.1 * x


def _step_counts(f):
    """1, 2, a middle value and the most steps the family takes at T (only T for a full-chain sampler)."""
    most = f.max_steps(T)
    return [most] if f.full_chain else sorted({1, 2, most // 2, most})


def test_the_tuple_lists_each_family_once_with_a_name_a_tag_can_carry():
    assert len(set(IDS)) == len(IDS) and [family(n) for n in IDS] == list(FAMILIES)
    for f in FAMILIES:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", f.name), f.name  # a config value, a folder name, a tag prefix
        assert options.tag({"sampler": f.name, "steps": 3, "eta": 0.0}) == f"{f.name}-3"
        assert f.summary and "%" not in f.summary  # argparse formats the help text
    with pytest.raises(ValueError, match="sampler must be one of"):
        family("plms")


def test_options_derive_from_the_families():
    assert options.SAMPLERS == tuple(IDS)
    for objective in options.OBJECTIVES:
        assert options.SAMPLERS_FOR[objective] == tuple(f.name for f in FAMILIES if objective in f.objectives)
    assert options.ETA_SAMPLERS == tuple(f.name for f in FAMILIES if f.takes_eta)
    for f in FAMILIES:
        assert f.objectives and set(f.objectives) <= set(options.OBJECTIVES), f.name
        assert options.max_steps(f.name, T) == f.max_steps(T)


@pytest.mark.parametrize("name", IDS)
def test_evaluations_are_the_model_calls_and_the_grid_the_times_it_sees(name):
    f, s = family(name), make_schedule(timesteps=T)
    for objective in f.objectives:
        for steps in _step_counts(f):
            grid = f.grid(steps, T)
            flow = objective == "flow"
            assert len(grid) == steps + 1 and all(a > b for a, b in zip(grid, grid[1:]))
            assert grid[-1] == (0.0 if flow else -1), grid  # the data, or ᾱ = 1
            if not flow:
                assert grid[:-1] == timestep_sequence(name, steps, T) and all(0 <= t < T for t in grid[:-1])
            model = _Counting()
            gens = [torch.Generator().manual_seed(i) for i in range(2)]
            eta = 0.5 if f.takes_eta else 0.0
            x = sample(model, s, (1, 2, 2, 2), gens, sampler=name, steps=steps, eta=eta, objective=objective)
            assert x.shape == (2, 1, 2, 2, 2) and torch.isfinite(x).all()
            assert len(model.times) == f.evaluations(steps) == network_evaluations(name, steps, T), (objective, steps)
            # the network is evaluated at every time of the grid but the last, in order
            seen = list(dict.fromkeys(model.times))
            assert seen == pytest.approx([t * T if flow else t for t in grid[:-1]]), (objective, steps)  # float32 t·T


@pytest.mark.parametrize("name", IDS)
def test_limits_hold_in_the_config_and_in_the_loop(name):
    f, s = family(name), make_schedule(timesteps=T)
    objective = f.objectives[0]
    most = f.max_steps(T)
    assert 1 <= most <= T
    section = {"diffusion": {"objective": objective, "timesteps": T}}
    with pytest.raises(ValueError, match=rf"sample.steps={most + 1} must lie in 1..{most}"):
        from_dict({**section, "sample": {"sampler": name, "steps": most + 1}})
    with pytest.raises(ValueError, match=rf"\[1, {most}\] for {name}"):
        sample(_Counting(), s, (1, 2, 2, 2), [torch.Generator()], sampler=name, steps=most + 1, objective=objective)
    if most < T:  # steps: null means T, which this sampler cannot take
        with pytest.raises(ValueError, match=rf"{name} takes 1..{most} steps"):
            from_dict({**section, "sample": {"sampler": name}})
    else:
        assert from_dict({**section, "sample": {"sampler": name}}).sample.steps is None
    if f.full_chain:
        with pytest.raises(ValueError, match=rf"the {name} sampler runs all {T} steps"):
            from_dict({**section, "sample": {"sampler": name, "steps": T - 1}})
        with pytest.raises(ValueError, match=rf"steps must be {T}"):
            network_evaluations(name, T - 1, T)
    eta = {**section, "sample": {"sampler": name, "steps": min(2, most) if not f.full_chain else None, "eta": 0.5}}
    if f.takes_eta:
        assert from_dict(eta).sample.eta == 0.5
    else:
        with pytest.raises(ValueError, match=rf"only the .* sampler uses eta \(leave it 0 for {name}\)"):
            from_dict(eta)
    for other in set(options.OBJECTIVES) - set(f.objectives):
        with pytest.raises(ValueError, match=rf"sample.sampler='{name}' cannot sample a "
                                             rf"diffusion.objective='{other}' model"):
            from_dict({"diffusion": {"objective": other, "timesteps": T}, "sample": {"sampler": name}})


def test_the_schema_enums_name_every_family():
    """The schema stays a plain file that Snakemake and readers read: its two sampler enums are the families,
    in FAMILIES' order. A new family fails here until its name is added to both."""
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())["properties"]
    enums = {"sample.sampler": schema["sample"]["properties"]["sampler"]["enum"],
             "evaluate.compare_samplers[].sampler":
                 schema["evaluate"]["properties"]["compare_samplers"]["items"]["properties"]["sampler"]["enum"]}
    for key, enum in enums.items():
        assert enum == IDS, f"workflow/schemas/config.schema.yaml {key}: enum {enum}, the families are {IDS}"


@pytest.mark.parametrize("name", IDS)
def test_the_command_line_takes_and_describes_every_family(name):
    args = cli.parser().parse_args(["sample", "--checkpoint", "m.pt", "--out", "o", "-n", "1", "--sampler", name])
    assert cli.sample_settings(args).sampler == name
    f = family(name)
    assert f"{name} ({' and '.join(f.objectives)} checkpoints): {f.summary}" in cli._sampler_help()


def test_the_docs_samplers_table_has_a_row_per_family():
    readme = (REPO / "docs" / "configuration.md").read_text()
    for f in FAMILIES:
        row = re.search(rf"^  \| ([a-z, ]+) \| `{f.name}` \|", readme, re.MULTILINE)
        assert row, f"docs/configuration.md: no row for `{f.name}` in the samplers table"
        assert row.group(1).split(", ") == list(f.objectives), f.name
