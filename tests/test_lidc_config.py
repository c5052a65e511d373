"""config/lidc.yaml: the paper's settings validate, and the DAG starts from the user's DICOM tree."""

import yaml

from ctdiff.config import from_dict

from test_workflow import REPO, planned_rules, snakemake


def test_lidc_config_states_the_paper(tmp_path):
    lidc = yaml.safe_load((REPO / "config" / "lidc.yaml").read_text())
    assert lidc["preprocess"]["size"] == 128 and lidc["preprocess"]["hu_window"] == [-1000, 400]
    assert lidc["diffusion"]["timesteps"] == 1000 and lidc["train"]["lr"] == 1e-5
    assert lidc["train"]["batch_size"] == 2 and lidc["sample"]["n"] == 500 and lidc["split"]["test"] == 500
    text = (REPO / "config" / "lidc.yaml").read_text()
    assert "choice" in text and "paper" in text


def test_lidc_layered_on_the_demo_is_the_papers_recipe():
    """Snakemake layers --configfile lidc.yaml over config/config.yaml: every demo choice that differs from the
    paper (its name, the wavelet representation, the flow objective, Euler sampling, Heun compared) must be
    set back by lidc.yaml, not leak into the paper's run."""
    def merged(base, over):
        out = dict(base)
        for k, v in over.items():
            out[k] = merged(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        return out

    demo, lidc = (yaml.safe_load((REPO / "config" / f).read_text()) for f in ("config.yaml", "lidc.yaml"))
    lidc["data"]["root"] = "/data/LIDC-IDRI"
    cfg = from_dict(merged(demo, lidc))
    assert cfg.name == "paper" and cfg.variants == ()
    assert cfg.model.representation == "voxels" and cfg.diffusion.objective == "eps"
    assert (cfg.sample.sampler, cfg.sample.steps) == ("ddpm", None)
    assert [r.sampler for r in cfg.evaluate.compare_samplers] == ["ddim", "dpmpp"]
    assert not cfg.export.dicom


def test_lidc_dry_run_reads_the_given_tree(tmp_path):
    tree = tmp_path / "LIDC-IDRI"
    tree.mkdir()
    proc = snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(REPO / "config" / "lidc.yaml"),
                     "--config", f"data={{root: {tree}}}")
    rules = planned_rules(proc)
    assert "discover" in rules and "phantom" not in rules, rules
    # lidc.yaml sets its own sampler comparison (a list in a layered config file replaces config.yaml's)
    assert {"sample_compare", "evaluate_compare", "variant_table"} <= rules, rules
    assert "results/lidc/models/paper/metrics/ddim-50.json" in proc.stdout
    # the membership-inference audit, once for the model, beside its evaluations
    assert "membership" in rules and "results/lidc/models/paper/metrics/membership.json" in proc.stdout


def test_lidc_8gb_overlay_validates_and_sets_the_memory_settings(tmp_path):
    overlay = yaml.safe_load((REPO / "config" / "lidc_8gb.yaml").read_text())["train"]
    assert overlay["grad_checkpointing"] and overlay["recompute_norm"] and overlay["precision"] == "bf16"
    tree = tmp_path / "LIDC-IDRI"
    tree.mkdir()
    proc = snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(REPO / "config" / "lidc.yaml"),
                     str(REPO / "config" / "lidc_8gb.yaml"), "--config", f"data={{root: {tree}}}")
    assert "train" in planned_rules(proc)


def test_lidc_without_root_names_the_key(tmp_path):
    proc = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config" / "lidc.yaml"), check=False)
    assert proc.returncode != 0 and "data.root" in proc.stdout + proc.stderr


