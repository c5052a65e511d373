"""Report: the metrics table sits beside the paper's numbers (as metrics.json records them) with bootstrap
intervals and the real-vs-real floor; the sampler comparison when there is one; the memorisation section;
Markdown and HTML hold the same sections, the HTML embeds its images and the Markdown links them."""
import html
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import write_train_folder
from ctdiff.files import save_volume
from ctdiff.metrics.variant_table import variant_table
from ctdiff.plan import TableRow
from ctdiff.report.plots import closest_pairs, figure1, learning_curve, memorisation_histogram
from ctdiff.report.document import build_sections, render_html, render_markdown, write_report
from ctdiff.report.sections import Section, Table


def memorisation():
    syn = [{"synthetic": f"{k:04d}.nii.gz", "nearest_train": "T1.nii.gz", "distance": d, "test_percentile": 0.0,
            "flagged": d < 2.0} for k, d in enumerate([0.0, 3.5, 4.25])]
    test = [{"test": f"r{k}.nii.gz", "nearest_train": "T0.nii.gz", "distance": d} for k, d in enumerate([2.0, 3.0])]
    return {
        "rule": "flagged when the synthetic-to-train distance is below the minimum test-to-train distance",
        "threshold": 2.0, "per_sample": syn,
        "test_to_train": {"n": 2, "min": 2.0, "p05": 2.05, "median": 2.5, "mean": 2.5, "max": 3.0,
                          "per_sample": test},
        "flagged": ["0000.nii.gz"], "n_flagged": 1,
        "closest_pairs": [{"synthetic": "0000.nii.gz", "train": "T1.nii.gz", "distance": 0.0},
                          {"synthetic": "0001.nii.gz", "train": "T1.nii.gz", "distance": 3.5}],
        "features": feature_audit(),
    }


def feature_audit():
    """The feature-space audit: flags 0000 (the exact copy) and 0002 (e.g. a shifted copy) with threshold 0.75."""
    syn = [{"synthetic": f"{k:04d}.nii.gz", "nearest_train": t, "distance": d, "test_percentile": 0.0,
            "flagged": d < 0.75} for k, (t, d) in enumerate([("T1.nii.gz", 1e-6), ("T0.nii.gz", 1.5),
                                                              ("T2.nii.gz", 0.125)])]
    test = [{"test": f"r{k}.nii.gz", "nearest_train": "T0.nii.gz", "distance": d} for k, d in enumerate([0.75, 1.25])]
    return {
        "rule": "flagged when the synthetic-to-train distance is below the minimum test-to-train distance",
        "threshold": 0.75, "per_sample": syn,
        "test_to_train": {"n": 2, "min": 0.75, "p05": 0.8, "median": 1.0, "mean": 1.0, "max": 1.25,
                          "per_sample": test},
        "flagged": ["0000.nii.gz", "0002.nii.gz"], "n_flagged": 2,
        "closest_pairs": [{"synthetic": "0000.nii.gz", "train": "T1.nii.gz", "distance": 1e-6},
                          {"synthetic": "0002.nii.gz", "train": "T2.nii.gz", "distance": 0.125}],
        "feature_network": {"depth": 10, "pretrained": False, "normalise": "none"},
    }


def metrics(pretrained: bool, rank_deficient: bool, floor=None, extended=True):
    m = {
        "fid": 123.456, "fid_rank_deficient": rank_deficient,
        "msssim_nearest_real": {"mean": 0.5123, "std": 0.01, "n": 4},
        "msssim_diversity": {"mean": 0.3001, "std": 0.02, "n_pairs": 6},
        "feature_network": {"depth": 10, "pretrained": pretrained, "sha256": None},
        "n_real": 4, "n_synthetic": 4, "volume_shape": [16, 16, 16],
        "provenance": {"sampler": "ddpm", "checkpoint_step": 7},
        "paper": {"fid": 9.70, "msssim": 0.266},
    }
    if extended:
        m["bootstrap"] = {"fid": {"low": 100.0, "high": 140.25, "bias": 3.0, "method": "shifted percentile"},
                          "msssim_nearest_real": {"low": 0.5, "high": 0.525, "bias": 0.0, "method": "percentile"},
                          "msssim_diversity": {"low": 0.28, "high": 0.33, "bias": 0.0, "method": "percentile"},
                          "kid": {"low": 0.002, "high": 0.02512, "bias": 0.001, "method": "shifted percentile"},
                          "level": 0.95, "n_boot": 200, "seed": 0}
        m["floor"] = floor or {"fid": 45.5, "msssim_nearest_real": 0.4321, "half_a": ["a", "b"],
                               "half_b": ["c", "d"], "seed": 0,
                               "kid": {"mean": -0.0004321, "std": 0.003, "subset_size": 2, "subsets": 100}}
        m["kid"] = {"mean": 0.012341, "std": 0.005, "subset_size": 4, "subsets": 100}
        m["memorisation"] = memorisation()
    return m


def write_inputs(tmp_path, m):
    (tmp_path / "metrics.json").write_text(json.dumps(m))
    for name in ("a", "b"):
        save_volume(tmp_path / f"{name}.nii.gz", np.full((8, 8, 8), 0.5, np.float32), np.eye(4))
    figure1(tmp_path / "a.nii.gz", tmp_path / "b.nii.gz", tmp_path / "figure1.png")
    pd.DataFrame({"step": [1, 2, 3], "loss": [1.0, 0.5, 0.25], "lr": 1e-3, "elapsed_s": [1, 2, 3]}).to_csv(
        tmp_path / "log.csv", index=False)
    learning_curve(tmp_path / "log.csv", tmp_path / "learning_curve.png")
    if "memorisation" in m:
        memorisation_histogram(m["memorisation"], tmp_path / "memorisation.png")
    pd.DataFrame({"stage": ["discover", "discover", "cohort"], "decision": ["chosen", "rejected", "usable"],
                  "reason": ["", "modality CR is not CT", "patients"], "count": [2, 1, 2]}).to_csv(
        tmp_path / "inv.tsv", sep="\t", index=False)


def figures(tmp_path, m, pairs_png=None):
    """The figure arguments of write_report / build_sections for the files write_inputs made."""
    histogram = tmp_path / "memorisation.png"
    return {"figure1_png": tmp_path / "figure1.png", "learning_curve_png": tmp_path / "learning_curve.png",
            "memorisation_png": histogram if "memorisation" in m else None, "pairs_png": pairs_png}


def _report(tmp_path, m, config=None, variants_tsv=None, pairs_png=None):
    write_inputs(tmp_path, m)
    write_report(tmp_path / "metrics.json", tmp_path / "inv.tsv", config or {}, tmp_path / "report.md",
                 tmp_path / "report.html", variants_tsv=variants_tsv, **figures(tmp_path, m, pairs_png))
    return (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()


def _variants_tsv(tmp_path, sets):
    """variants.tsv of ``sets`` [(variant, set, metrics.json)], each variant trained as write_train_folder says
    (0.1 s/step on two H200s, 40 steps) and the paper's main set drawn at 2.5 s per volume on a CPU."""
    rows = []
    for variant, name, metrics in sets:
        train = tmp_path / "runs" / variant / "train"
        if not train.exists():
            write_train_folder(train, machine={"type": "cuda", "name": "NVIDIA H200", "processes": 2, "threads": None})
        samples = tmp_path / "runs" / variant / name / "samples"
        rows.append(TableRow(variant, name, str(metrics), str(samples), str(train)))
    samples = Path(rows[0].samples)
    samples.mkdir(parents=True, exist_ok=True)
    (samples / "sampling.json").write_text(json.dumps({"seconds_per_volume": 2.5, "timed": 4, "n": 4, "batch": 2,
        "machines": [{"type": "cpu", "name": "Some CPU", "processes": 1, "threads": 2}]}))
    variant_table(rows, tmp_path / "variants.tsv")
    return tmp_path / "variants.tsv"


def test_report_contents(tmp_path):
    md, page = _report(tmp_path, metrics(pretrained=False, rank_deficient=True), {"preprocess": {"size": 16}})
    assert "| FID (Med3D features) | 123.456 [95 % CI 100.000 to 140.250] | 9.70 |" in md
    assert "0.512 ± 0.010 [95 % CI 0.500 to 0.525] | 0.266" in md
    assert "| Floor: real vs real (FID; nearest-real MS-SSIM) | FID 45.500; MS-SSIM 0.432 |" in md
    assert "2 vs 2 volumes" in md and "200 bootstrap replicates, seed 0" in md
    assert "FID: shifted percentile; MS-SSIM: percentile; diversity: percentile" in md
    assert "| KID (Med3D features; lower = closer) | 0.01234 ± 0.005 [95 % CI 0.002 to 0.02512] | — |" in md
    assert "mean ± sd over 100 subsets of 4 volumes per set" in md and "; KID: shifted percentile" in md
    assert md.index("| FID (Med3D features)") < md.index("| KID (Med3D") < md.index("| MS-SSIM, synthetic vs nearest")
    assert "| Floor: real vs real (KID) | -0.0004321 ± 0.003 | — | two halves of the test set" in md
    assert "| 0.300 ± 0.020 [95 % CI 0.280 to 0.330] | — |" in md
    assert "not comparable to the paper" in md and "rank-deficient" in md
    assert "## Memorisation" in md and "1 of 3 synthetic volumes flagged" in md and "(0000.nii.gz)" in md
    assert "| 0000.nii.gz | T1.nii.gz | 0 |" in md and "| 0001.nii.gz | T1.nii.gz | 3.5 |" in md
    # the feature-space audit beside the voxel audit
    assert "|  | voxels (L2) | Med3D ResNet-10 features (random weights) (L2) |" in md
    assert "| near-copies flagged | 1 of 3 | 2 of 3 |" in md
    assert "| flagged volumes | 0000.nii.gz | 0000.nii.gz, 0002.nii.gz |" in md
    assert "| threshold: closest held-out volume to the training set | 2 | 0.75 |" in md
    assert ("| closest synthetic–training pair | 0000.nii.gz – T1.nii.gz (0) | 0000.nii.gz – T1.nii.gz (1e-06) |"
            in md)
    assert "Closest pairs in feature space:" in md and "| 0002.nii.gz | T2.nii.gz | 0.125 |" in md
    assert 'id="memorisation-audits"' in page and "<td>2 of 3</td>" in page
    assert "| discover | rejected | modality CR is not CT | 1 |" in md
    assert "| cohort | usable | patients | 2 |" in md
    assert "checkpoint_step: 7" in md
    assert "Samplers" not in md and 'id="samplers"' not in page  # no comparison configured
    assert page.count("data:image/png;base64,") == 3
    assert 'id="metrics"' in page and "9.70" in page
    assert 'id="memorisation-histogram"' in page and "1 of 3 synthetic volumes flagged" in page
    # the Markdown links the same three images, relative to report.md
    assert "![Figure 1: axial, coronal and sagittal slices, real (a) and synthetic (b)](figure1.png)" in md
    assert "![training loss](learning_curve.png)" in md and "(memorisation.png)" in md
    assert md.index("## Learning curve") > md.index("## Figure 1")


def test_null_floor_shows_its_reason(tmp_path):
    floor = {"fid": None, "msssim_nearest_real": None, "seed": 0,
             "reason": "2 real volumes: each half needs at least 2 (FID needs 2 per set)", "kid": None}
    md, _ = _report(tmp_path, metrics(pretrained=True, rank_deficient=False, floor=floor))
    assert "| Floor: real vs real (FID; nearest-real MS-SSIM) | — | — | not computed: 2 real volumes" in md
    assert "| Floor: real vs real (KID) | — | — | not computed: 2 real volumes" in md


def test_pretrained_features_carry_no_warning(tmp_path):
    md, page = _report(tmp_path, metrics(pretrained=True, rank_deficient=False, extended=False))
    assert "not comparable" not in md and "rank-deficient" not in md
    # metrics written before intervals, floor and memorisation existed still render
    assert "| 123.456 | 9.70 |" in md and "Floor" not in md and "Memorisation" not in md
    assert "KID" not in md  # nor KID
    assert page.count("data:image/png;base64,") == 2


def test_variants_table(tmp_path):
    m = metrics(pretrained=False, rank_deficient=True)
    m["real_volumes"] = ["r0.nii.gz", "r1.nii.gz", "r2.nii.gz", "r3.nii.gz"]
    m["provenance"] = {"sampler": "ddpm", "sampler_steps": 1000, "eta": 0.0, "network_evaluations": 1000,
                       "sample_seed": 4, "checkpoint_step": 7, "checkpoint_sha256": "c" * 64}
    other = json.loads(json.dumps(m))
    other["fid"], other["bootstrap"]["fid"] = 98.0, {"low": 90.0, "high": 101.5}
    other["msssim_diversity"]["mean"] = 0.25
    other["provenance"].update(sampler="ddim", sampler_steps=50, eta=0.5, network_evaluations=50)
    small = json.loads(json.dumps(m))
    small["fid"], small["provenance"]["checkpoint_sha256"] = 150.0, "d" * 64
    for name, values in (("main", m), ("ddim", other), ("small", small)):
        (tmp_path / f"{name}.json").write_text(json.dumps(values))
    sets = [("paper", "main", tmp_path / "main.json"), ("paper", "ddim-50-eta0.5", tmp_path / "ddim.json"),
            ("small", "main", tmp_path / "small.json")]
    md, page = _report(tmp_path, m, variants_tsv=_variants_tsv(tmp_path, sets))
    assert "## Variants and samplers" in md
    assert "One row per (variant, sampler): 'paper', the main configuration whose metrics are shown above, first" in md
    assert "Every row draws 4 volumes with the same seeds (sample.seed = 4" in md
    assert "scored against the same 4 held-out real volumes" in md and "compare them only between rows" in md
    assert ("| variant | set | sampler | steps | eta | network evaluations per volume | training s/step (machine) "
            "| training hours for its steps | sampling s/volume, one device (machine) | FID [95 % CI] |" in md)
    assert ("| paper | main | ddpm | 1000 | — | 1000 | 0.1 (2 × NVIDIA H200) | 0.00111 h for 40 steps "
            "| 2.5 (1 × Some CPU (CPU, 2 threads)) | 123.456 [100.000, 140.250] | 0.512 [0.500, 0.525] "
            "| 0.300 [0.280, 0.330] |" in md)
    assert "| MS-SSIM, diversity (lower = more diverse) [95 % CI] | KID (lower = closer) [95 % CI] |" in md
    assert "| 0.300 [0.280, 0.330] | 0.01234 [0.002, 0.02512] |" in md
    assert "| small | main | ddpm | 1000 | — | 1000 | 0.1 (2 × NVIDIA H200) | 0.00111 h for 40 steps | — | 150.000" in md
    del other["bootstrap"]["msssim_diversity"]  # a missing interval leaves the value alone
    (tmp_path / "ddim.json").write_text(json.dumps(other))
    md, page = _report(tmp_path, m, variants_tsv=_variants_tsv(tmp_path, sets))
    assert ("| paper | ddim-50-eta0.5 | ddim | 50 | 0.5 | 50 | 0.1 (2 × NVIDIA H200) | 0.00111 h for 40 steps | — "
            "| 98.000 [90.000, 101.500] | 0.512 [0.500, 0.525] | 0.250 |" in md)
    assert md.index("## Variants and samplers") < md.index("## Memorisation")
    assert "| near-copies flagged (voxels / features) |" in md
    # every set holds the same audits: the memorisation column of each row, then no membership audit (—)
    assert re.search(r"\| 0\.300 \[0\.280, 0\.330\] \|[^\n]* \| 1 / 2 \| — \| — \|\n", md)
    assert 'id="variants"' in page and "<td>ddim-50-eta0.5</td>" in page and "same seeds" in page


def membership_record() -> dict:
    """A membership audit as ctdiff.metrics.membership writes it (the fields the report reads)."""
    def attack(auc, low, high, tpr1, tpr10):
        ci = {"low": low, "high": high, "bias": 0.0, "method": "percentile interval"}
        return {"score": "s", "auc": auc, "tpr_at_fpr_1pct": tpr1, "tpr_at_fpr_10pct": tpr10, "n_positive": 4,
                "n_negative": 4, "fpr_resolution": 0.25, "intervals": {"auc": ci, "tpr_at_fpr_1pct": ci,
                                                                      "tpr_at_fpr_10pct": ci}}
    loss = attack(0.9375, 0.75, 1.0, 0.75, 0.75)
    loss["per_time"] = [{"time": 0.1, "network_time": 99, "auc": 0.875}, {"time": 0.4, "network_time": 400, "auc": 0.5}]
    return {"attacks": {"loss": loss, "t_error": attack(0.125, 0.0, 0.375, 0.0, 0.0)}, "strongest": "loss",
            "strongest_auc": 0.9375, "n_per_side": 4, "n_requested": 500, "n_train_available": 12, "n_held_out_available": 4,
            "members": [], "non_members": [], "per_volume": [], "probe": {}, "checkpoint": {},
            "bootstrap": {"n_boot": 200, "level": 0.95, "seed": 0},
            "cost": {"seconds": 1.0, "seconds_per_volume": 0.125, "network_evaluations_per_volume": 17,
                     "device": {"name": "Some CPU"}}}


def test_privacy_section_beside_the_memorisation_audits(tmp_path):
    m = metrics(pretrained=False, rank_deficient=True)
    m["membership"] = membership_record()
    md, page = _report(tmp_path, m)
    assert md.index("## Memorisation") < md.index("## Privacy") < md.index("## Figure 1")
    assert "AUC 0.5 = the attack learns nothing about membership" in md
    assert ("| Loss (fixed times and noise) | 0.938 [95 % CI 0.750 to 1.000] | 0.750 [95 % CI 0.750 to 1.000] "
            "| 0.750 [95 % CI 0.750 to 1.000] |" in md)
    assert "| SecMI t-error | 0.125 [95 % CI 0.000 to 0.375] |" in md
    assert "reaches AUC 0.938; its interval excludes 0.5: the model leaks membership to it." in md
    assert "SecMI t-error: the AUC lies below 0.5 within its interval" in md
    assert "in steps of 25 %" in md and "0.125 s per volume (17 network evaluations) on Some CPU" in md
    assert "| 0.1 | 99 | 0.875 |" in md and 'id="privacy"' in page
    assert "membership inference: AUC and TPR at 1 % / 10 % FPR (Privacy)" in _guide(md)


def test_variants_table_carries_the_membership_aucs(tmp_path):
    m = metrics(pretrained=False, rank_deficient=True)
    m["real_volumes"] = ["r0.nii.gz"]
    m["provenance"] = {"sampler": "ddpm", "sampler_steps": 1000, "eta": 0.0, "network_evaluations": 1000,
                       "sample_seed": 4, "checkpoint_step": 7, "checkpoint_sha256": "c" * 64}
    m["membership"] = membership_record()
    (tmp_path / "main.json").write_text(json.dumps(m))
    tsv = _variants_tsv(tmp_path, [("paper", "main", tmp_path / "main.json")])
    row = pd.read_csv(tsv, sep="\t").iloc[0]
    assert (row.mia_loss_auc, row.mia_loss_auc_low, row.mia_loss_auc_high, row.mia_t_error_tpr_at_fpr_1pct) == (
        0.9375, 0.75, 1.0, 0.0)
    md, _ = _report(tmp_path, m, variants_tsv=tsv)
    assert "| membership AUC, loss attack [95 % CI] | membership AUC, SecMI t-error [95 % CI] |" in md
    assert "| 1 / 2 | 0.938 [0.750, 1.000] | 0.125 [0.000, 0.375] |" in md


def test_downstream_section_and_the_variants_tables_downstream_columns(tmp_path):
    """The downstream stage's arms: a "Downstream use" section before Figure 1, in both renderings, and the
    arms' Dice and sensitivity in the report's variants table (from variants.tsv's downstream columns)."""
    from test_downstream import _record

    m = metrics(pretrained=False, rank_deficient=True)
    m["real_volumes"] = ["r0.nii.gz"]
    m["provenance"] = {"sampler": "ddpm", "sampler_steps": 1000, "eta": 0.0, "network_evaluations": 1000,
                       "sample_seed": 4, "checkpoint_step": 7, "checkpoint_sha256": "c" * 64}
    (tmp_path / "main.json").write_text(json.dumps(m))
    arms = []
    for arm, model, sensitivity in (("real", None, 0.8), ("synthetic", "paper", 0.4), ("combined", "paper", 0.6)):
        arms.append(tmp_path / f"{arm}.json")
        arms[-1].write_text(json.dumps(_record(arm, model, sensitivity, sensitivity - 0.1, sensitivity + 0.1)))
    tsv = _variants_tsv(tmp_path, [("paper", "main", tmp_path / "main.json")])
    table = pd.read_csv(tsv, sep="\t")
    assert table["downstream_real_dice"].isna().all()  # a row without downstream records: empty cells
    train = tmp_path / "runs" / "paper" / "train"
    variant_table([TableRow("paper", "main", str(tmp_path / "main.json"), str(tmp_path / "runs" / "paper" / "main"
                                                                                / "samples"), str(train),
                            tuple(str(a) for a in arms))], tsv)
    write_inputs(tmp_path, m)
    write_report(tmp_path / "main.json", tmp_path / "inv.tsv", {}, tmp_path / "report.md", tmp_path / "report.html",
                 variants_tsv=tsv, downstream_jsons=arms, **figures(tmp_path, m))
    md, page = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    assert md.index("## Downstream use") < md.index("## Figure 1") and 'id="downstream"' in page
    assert "| synthetic | paper | synthetic (5 synthetic) | 0.600 [95 % CI 0.400 to 0.800] |" in md
    assert "the synthetic arm lies below the real arm" in md
    assert "| downstream Dice, real arm [95 % CI] |" in md
    assert "| 0.800 [0.700, 0.900] | 0.400 [0.300, 0.500] | 0.600 [0.500, 0.700] |" in md


def test_report_without_intervals(tmp_path):
    m = metrics(pretrained=True, rank_deficient=False)
    m["bootstrap"] = {"n_boot": 0, "level": 0.95, "seed": 0}
    md, _ = _report(tmp_path, m)
    assert "| 123.456 | 9.70 |" in md and "CI" not in md
    assert "| Intervals | none (evaluate.bootstrap is 0) |" in md


def test_closest_pairs_image_in_both_renderings(tmp_path):
    (tmp_path / "figures").mkdir()
    for name in ("s", "t"):
        save_volume(tmp_path / f"{name}.nii.gz", np.full((8, 8, 8), 0.25, np.float32), np.eye(4))
    closest_pairs([(tmp_path / "s.nii.gz", tmp_path / "t.nii.gz", 0.0)], tmp_path / "figures" / "pairs.png")
    md, page = _report(tmp_path, metrics(pretrained=True, rank_deficient=False),
                       pairs_png=tmp_path / "figures" / "pairs.png")
    assert "![closest synthetic and training volumes](figures/pairs.png)" in md
    assert 'id="closest-pairs"' in page and page.count("data:image/png;base64,") == 4
    assert md.index("figures/pairs.png") < md.index("## Figure 1")


def test_paper_values_are_read_from_metrics_json(tmp_path):
    m = metrics(pretrained=True, rank_deficient=False)
    m["paper"] = {"fid": 1.5, "msssim": 0.123}
    md, page = _report(tmp_path, m)
    assert "| 123.456 [95 % CI 100.000 to 140.250] | 1.50 |" in md and "[95 % CI 0.500 to 0.525] | 0.123 |" in md
    assert "9.70" not in md and "0.266" not in md and "<td>1.50</td>" in page
    del m["paper"]["msssim"]
    with pytest.raises(ValueError, match=r"no paper value for \['msssim'\]"):
        _report(tmp_path, m)


def _numbers(text: str) -> Counter:
    return Counter(re.findall(r"\d+\.\d+", text))


def test_markdown_and_html_hold_the_same_sections(tmp_path):
    """Every section, table cell, text, image and code block is in both renderings, with the same numbers."""
    m = metrics(pretrained=False, rank_deficient=True)
    m["real_volumes"] = ["r0.nii.gz", "r1.nii.gz", "r2.nii.gz", "r3.nii.gz"]
    m["provenance"] = {"sampler": "ddpm", "sampler_steps": 1000, "eta": 0.0, "network_evaluations": 1000,
                       "sample_seed": 4, "checkpoint_step": 7, "checkpoint_sha256": "c" * 64}
    (tmp_path / "main.json").write_text(json.dumps(m))
    variants = _variants_tsv(tmp_path, [("paper", "main", tmp_path / "main.json")])
    write_inputs(tmp_path, m)
    sections = build_sections(tmp_path / "metrics.json", tmp_path / "inv.tsv", {"train": {"lr": 0.0001}},
                              variants_tsv=variants, **figures(tmp_path, m, tmp_path / "figure1.png"))
    titles = [s.title for s in sections]
    assert titles == ["Metrics", "How to read the numbers", "Variants and samplers", "Memorisation", "Figure 1", "Learning curve", "Data QC", "Provenance",
                      "Config"]
    md = render_markdown(sections, tmp_path)
    page = render_html(sections)
    md_parts = md.split("\n## ")[1:]
    html_parts = re.sub(r"data:image/png;base64,[^\"]*", "", page).split("<h2>")[1:]
    assert [p.split("\n")[0] for p in md_parts] == titles
    assert [p.split("</h2>")[0] for p in html_parts] == titles
    for section, md_part, html_part in zip(sections, md_parts, html_parts):
        assert _numbers(md_part) == _numbers(html_part), section.title
        assert section.text in md_part and html.escape(section.text) in html_part
        for t in section.tables:
            for row, cell in ((t.header, "th"), *((r, "td") for r in t.rows)):
                assert "| " + " | ".join(row) + " |" in md_part
                assert "".join(f"<{cell}>{html.escape(c)}</{cell}>" for c in row) in html_part
        for image in section.images:
            assert f"![{image.alt}]({image.path.name})" in md_part and f'<img id="{image.id}"' in html_part
        assert section.code in md_part and html.escape(section.code) in html_part
    assert sum(len(s.images) for s in sections) == 4 and _numbers(md_parts[-1]) == Counter({"0.0001": 1})


def test_a_pipe_in_a_cell_keeps_the_markdown_table_whole():
    sections = [Section("QC", tables=(Table(("reason",), (("a | b",),)),))]
    assert "| a \\| b |" in render_markdown(sections, Path(".")) and "<td>a | b</td>" in render_html(sections)


def anatomy_record() -> dict:
    """``metrics.json``'s ``anatomy`` for 4 real chests (16³ balls at 12 mm: a body with two lungs) against 2
    chests, an all-air and an all-bone volume."""
    from ctdiff.metrics.anatomy_compare import evaluate_anatomy

    grid = np.indices((16, 16, 16), dtype=float)
    ball = lambda c, r: sum((g - x) ** 2 for g, x in zip(grid, c)) <= r * r  # noqa: E731
    hu = np.full((16, 16, 16), -1000.0)
    hu[ball((7.5, 7.5, 7.5), 7)] = 40.0
    hu[ball((4.5, 7.5, 7.5), 2.5) | ball((10.5, 7.5, 7.5), 2.5)] = -850.0
    chest = ((hu + 1000) / 1400).astype(np.float32)
    syn = np.stack([chest, chest, np.zeros_like(chest), np.ones_like(chest)])
    affines = [np.diag([12.0, 12.0, 12.0, 1.0])] * 4
    return evaluate_anatomy(np.stack([chest] * 4), affines, [f"r{k}" for k in range(4)], syn, affines,
                            [f"s{k}" for k in range(4)], hu_window=(-1000.0, 400.0), seed=0, n_boot=20, level=0.95)


def test_anatomy_section_in_both_renderings(tmp_path):
    from ctdiff.report.plots import anatomy_plot

    m = metrics(pretrained=True, rank_deficient=False)
    m["anatomy"] = anatomy_record()
    write_inputs(tmp_path, m)
    anatomy_plot(m["anatomy"], tmp_path / "anatomy.png")
    sections = build_sections(tmp_path / "metrics.json", tmp_path / "inv.tsv", {},
                              anatomy_png=tmp_path / "anatomy.png", **figures(tmp_path, m))
    titles = [s.title for s in sections]
    assert titles.index("Memorisation") < titles.index("Anatomy (HU)") < titles.index("Figure 1")
    section = sections[titles.index("Anatomy (HU)")]
    assert "real: 4 of 4 volumes with two lungs" in section.text
    assert "synthetic: 2 of 4 volumes with two lungs, 0 with one, 1 with none, 1 without a body" in section.text
    assert "bone is truncated" in section.text
    volumes, classes, misses = section.tables
    # the all-air and all-bone synthetic volumes, each with what the checks found
    assert [r[:3] for r in misses.rows] == [("synthetic", "s2", "no body"), ("synthetic", "s3", "no lungs")], misses
    assert "no connected component above -500 HU" in misses.rows[0][3] and "air-like" in misses.rows[1][3]
    rows = {r[0]: r for r in volumes.rows}
    lungs = rows["lungs found per volume"]
    assert lungs[1] == "2.00 ± 0.00 (n = 4)" and lungs[2] == "1.00 ± 1.15 (n = 4)"  # sd of 2, 2, 0, 0 is 2/√3
    # the balance of a volume without two lungs is undefined: two synthetic values remain
    assert rows["lung balance, smaller / larger (two lungs only)"][2] == "1.000 ± 0.000 (n = 2)"
    cls = {r[0]: r for r in classes.rows}
    assert cls["fat (-190 to -30 HU)"][3].startswith("absent: no real voxel")  # neither set has fat
    assert cls["bone (>= 150 HU)"][2] == "0.333" and cls["lung (-950 to -190 HU)"][4] == "0.0"
    assert cls["air (< -950 HU)"][4] == "absent: no first-half real voxel in this class"
    assert cls["soft tissue (-30 to 150 HU)"][3].startswith("0.0 [95 % CI")
    md, page = render_markdown(sections, tmp_path), render_html(sections)
    assert "## Anatomy (HU)" in md and "(anatomy.png)" in md and 'id="anatomy"' in page
    assert 'id="anatomy-classes"' in page and 'id="anatomy-volumes"' in page
    for t in section.tables:
        for row in t.rows:
            assert "| " + " | ".join(row) + " |" in md
            assert "".join(f"<td>{html.escape(c)}</td>" for c in row) in page
    json.dumps(m["anatomy"], allow_nan=False)


def _guide(md: str) -> str:
    return md.split("## How to read the numbers")[1].split("\n## ")[0]


def test_reading_guide_in_both_renderings_with_rows_for_the_metrics_present(tmp_path):
    m = metrics(pretrained=False, rank_deficient=True)
    for part in (m, m["bootstrap"], m["floor"]):  # a file without KID first
        part.pop("kid", None)
    md, page = _report(tmp_path, m)
    assert md.index("## Metrics") < md.index("## How to read the numbers") < md.index("## Memorisation")
    assert "<h2>How to read the numbers</h2>" in page and 'id="reading-guide"' in page
    guide = _guide(md)
    assert "| question | metric | better | reference |" in guide
    assert "| FID (Med3D features) | lower;" in guide and "MS-SSIM, synthetic vs nearest real" in guide
    assert "lower = more diverse" in guide and "near-copies flagged (voxels and Med3D features)" in guide
    assert "95 % bootstrap intervals (200 replicates)" in guide
    assert "here 4 volumes per set against" not in guide  # no feature dimension recorded in this file
    assert "seeded random network" in guide
    assert "KID" not in guide and "Anatomy" not in guide  # no rows for metrics the file does not hold
    for text in ("FID (Med3D features)", "lower = more diverse", "bootstrap intervals"):
        assert text in page.split("<h2>How to read the numbers</h2>")[1].split("<h2>")[0]

    m.update(kid={"mean": 0.01, "std": 0.005, "subset_size": 4, "subsets": 100}, anatomy=anatomy_record(),
             fid_feature_dim=512)
    guide = _guide(_report(tmp_path, m)[0])
    assert "| KID (same features) |" in guide and "KID does not carry this bias" in guide
    assert "| Anatomy (HU) |" in guide and "here 4 volumes per set against 512 feature dimensions" in guide

    old = metrics(pretrained=True, rank_deficient=False, extended=False)  # no intervals, floor or audits
    guide = _guide(_report(tmp_path, old)[0])
    assert "bootstrap" not in guide and "near-copies" not in guide and "seeded random" not in guide
    assert "| FID (Med3D features) |" in guide
