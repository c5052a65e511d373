"""Report: the metrics table sits beside the paper's numbers; the HTML embeds its images."""
import json

import numpy as np
import pandas as pd

from ctdiff.figure import figure1
from ctdiff.io import save_volume
from ctdiff.report import write_report


def metrics(pretrained: bool, rank_deficient: bool):
    return {
        "fid": 123.456, "fid_rank_deficient": rank_deficient,
        "msssim_nearest_real": {"mean": 0.5123, "std": 0.01, "n": 4},
        "msssim_diversity": {"mean": 0.3001, "std": 0.02, "n_pairs": 6},
        "feature_network": {"depth": 10, "pretrained": pretrained, "sha256": None},
        "n_real": 4, "n_synthetic": 4, "volume_shape": [16, 16, 16],
        "provenance": {"sampler": "ddpm", "checkpoint_step": 7},
    }


def write_inputs(tmp_path, m):
    (tmp_path / "metrics.json").write_text(json.dumps(m))
    for name in ("a", "b"):
        save_volume(tmp_path / f"{name}.nii.gz", np.full((8, 8, 8), 0.5, np.float32), np.eye(4))
    figure1(tmp_path / "a.nii.gz", tmp_path / "b.nii.gz", tmp_path / "figure1.png")
    pd.DataFrame({"step": [1, 2, 3], "loss": [1.0, 0.5, 0.25], "lr": 1e-3, "elapsed_s": [1, 2, 3]}).to_csv(
        tmp_path / "log.csv", index=False)
    pd.DataFrame({"patient": ["P1", "P1", "P2"], "decision": ["chosen", "rejected", "chosen"],
                  "reason": ["", "modality CR is not CT", ""]}).to_csv(tmp_path / "inv.tsv", sep="\t", index=False)


def test_report_contents(tmp_path):
    write_inputs(tmp_path, metrics(pretrained=False, rank_deficient=True))
    write_report(tmp_path / "metrics.json", tmp_path / "figure1.png", tmp_path / "log.csv", tmp_path / "inv.tsv",
                 {"preprocess": {"size": 16}}, tmp_path / "report.md", tmp_path / "report.html")
    md = (tmp_path / "report.md").read_text()
    assert "| FID (Med3D features) | 123.456 | 9.70 |" in md
    assert "0.512 ± 0.010 | 0.266" in md
    assert "not comparable to the paper" in md and "rank-deficient" in md
    assert "modality CR is not CT | 1" in md
    assert "checkpoint_step: 7" in md
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    assert 'id="metrics"' in page and "9.70" in page


def test_pretrained_features_carry_no_warning(tmp_path):
    write_inputs(tmp_path, metrics(pretrained=True, rank_deficient=False))
    write_report(tmp_path / "metrics.json", tmp_path / "figure1.png", tmp_path / "log.csv", tmp_path / "inv.tsv",
                 {}, tmp_path / "report.md", tmp_path / "report.html")
    md = (tmp_path / "report.md").read_text()
    assert "not comparable" not in md and "rank-deficient" not in md
