"""The report's "How to read the numbers": which metric answers which question, which direction is better,
what the reference (the real-vs-real floor) is and how to read the intervals.

Rows and sentences are built only for what ``metrics.json`` records, so the guide stays true for files written
before a metric existed and for runs that skip one. The words match the metrics table's row names.
"""

from __future__ import annotations

from typing import Any

from ctdiff.metrics import keys

HEADER = ["question", "metric", "better", "reference"]


def _has(metrics: dict[str, Any], prefix: str) -> bool:
    return any(key == prefix or key.startswith(prefix + "_") for key in metrics)


def guide_rows(metrics: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Rows (question, metric, better, reference) for the metrics ``metrics`` records."""
    rows = []
    floor = "the floor: the same number between two halves of the real test set"
    if keys.FID in metrics:
        rows.append(("Do synthetic and real volumes have the same distribution of features?",
                     "FID (Med3D features)", "lower; 0 = identical feature means and covariances",
                     f"{floor} (N/2 per set, so biased upward against full N)"))
    if _has(metrics, keys.KID):
        rows.append(("The same question, less dependent on N", "KID (same features)",
                     "lower; centred on 0 for identical distributions (unbiased, so small negative values happen)",
                     floor if isinstance(metrics.get(keys.FLOOR), dict) and _has(metrics[keys.FLOOR], keys.KID) else
                     "0; compare runs at their intervals"))
    if _has(metrics, keys.ANATOMY):
        rows.append(("Do the volumes contain plausible chests (body, two lungs, tissue HU)?", "Anatomy (HU)",
                     "closer to the real volumes' values; Wasserstein-1 distances lower. A lung counts only if "
                     "lung-shaped (its share of the body, sphericity, on its own side of the midline): noise has none",
                     "the real volumes' own spread and the real-vs-real floor shown beside them"))
    rows.append(("How close is each synthetic volume to some real one?",
                 "MS-SSIM, synthetic vs nearest real (the paper's protocol)",
                 "higher = closer, up to the floor; far above it means closer to real scans than real scans are "
                 "to each other (see memorisation)", floor))
    rows.append(("Are the synthetic volumes different from one another?", "MS-SSIM, synthetic vs synthetic",
                 "lower = more diverse; near 1 = mode collapse", "no floor computed: compare runs with each other"))
    memorisation = metrics.get(keys.MEMORISATION)
    if memorisation:
        audits = "voxels and Med3D features" if "features" in memorisation else "voxels"
        rows.append(("Does the model copy training volumes?", f"near-copies flagged ({audits})",
                     "0; each flagged volume is one to look at",
                     "the held-out volume closest to the training set sets the threshold: no held-out real "
                     "scan is flagged"))
    if metrics.get(keys.MEMBERSHIP):
        rows.append(("Can an attacker who holds the model tell its training scans from held-out ones?",
                     "membership inference: AUC and TPR at 1 % / 10 % FPR (Privacy)",
                     "AUC 0.5 and TPR at the FPR = the attack learns nothing; 1 = every training scan found",
                     "0.5; the audit is as strong as its strongest attack"))
    return rows


def guide_text(metrics: dict[str, Any]) -> str:
    """The paragraph above the guide's table: intervals, the floor, and FID's dependence on N."""
    parts = []
    boot = metrics.get(keys.BOOTSTRAP, {})
    if boot.get("n_boot"):
        parts.append(f"Values in square brackets are {round(100 * boot['level'])} % bootstrap intervals "
                     f"({boot['n_boot']} replicates): two runs differ credibly where their intervals do not "
                     "overlap; overlapping intervals do not show the runs are equal.")
    parts.append("The floor is what real data scores against real data; a synthetic set is as good as the "
                 "metric can tell once it reaches the floor within its interval.")
    if keys.FID in metrics:
        n = min(metrics.get(keys.N_REAL, 0), metrics.get(keys.N_SYNTHETIC, 0))
        dim = metrics.get(keys.FID_FEATURE_DIM) or metrics.get(keys.FEATURE_NETWORK, {}).get("feature_dim")
        here = f" (here {n} volumes per set against {dim} feature dimensions)" if n and dim else ""
        kid = " KID does not carry this bias." if _has(metrics, keys.KID) else ""
        parts.append("FID is biased upward at any finite N, strongly so with fewer volumes than feature dimensions"
                     + here + ", and the bias shrinks as N grows: FID values are comparable only at equal N and "
                     "with the same feature network (the paper: 500 vs 500 on MedicalNet weights)." + kid)
    if not metrics.get(keys.FEATURE_NETWORK, {}).get("pretrained", True):
        parts.append("The features come from a seeded random network: feature-based numbers compare runs of "
                     "this project with each other, not with the paper.")
    return " ".join(parts)
