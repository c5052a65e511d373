"""The membership-inference audit in the run's report: the "Privacy" section, beside the memorisation audits,
from the ``membership`` record of ``metrics.json`` (:func:`ctdiff.metrics.membership.membership_audit`)."""

from __future__ import annotations

from typing import Any

from ctdiff.report.sections import Section, table

#: The attacks as the report names them, in the order it shows them.
NAMES = {"loss": "Loss (fixed times and noise)", "t_error": "SecMI t-error"}


def _cell(attack: dict, key: str, level: float | None, fmt: str = ".3f") -> str:
    interval = attack.get("intervals", {}).get(key)
    text = format(attack[key], fmt)
    if interval and level:
        text += f" [{round(100 * level)} % CI {format(interval['low'], fmt)} to {format(interval['high'], fmt)}]"
    return text


def privacy_rows(membership: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """One row per attack: (attack, AUC, TPR at 1 % FPR, TPR at 10 % FPR), with intervals where recorded."""
    level = membership.get("bootstrap", {}).get("level")
    return [(NAMES.get(name, name), _cell(a, "auc", level), _cell(a, "tpr_at_fpr_1pct", level),
             _cell(a, "tpr_at_fpr_10pct", level)) for name, a in membership["attacks"].items()]


def privacy_text(membership: dict[str, Any]) -> str:
    """How the audit was run and how to read it, with what this run's numbers say."""
    n, attacks = membership["n_per_side"], membership["attacks"]
    cost = membership.get("cost", {})
    strongest = membership["strongest"]
    parts = [
        f"Can an attacker who holds the model tell a training scan from a held-out one? {n} training volumes "
        f"(members) and {n} held-out volumes (non-members), drawn by seed, are scored with the model's EMA "
        "weights: by their training loss at fixed times with fixed noise (the same for every volume; lower = "
        "member), and by SecMI's t-error (Duan et al. 2023: how far a deterministic step back and forth lands "
        "from where it started; lower = member).",
        "How to read it: AUC 0.5 = the attack learns nothing about membership; 1 = it tells every training "
        "scan from every held-out one. The true-positive rate at 1 % and 10 % false positives (Carlini et al.) "
        "is the share of training scans caught while wrongly flagging at most that share of held-out scans: "
        "a rate far above the false-positive rate is a leak even where the AUC is near 0.5. An audit is only "
        "as strong as its strongest attack; a weak result bounds these attacks, not every attack.",
    ]
    if n < 100:
        parts.append(f"With {n} volumes per side the false-positive rate moves in steps of {100 / n:.3g} %: "
                     "below that the rate is read at zero false positives, and the intervals are wide.")
    best = attacks[strongest]
    interval = best.get("intervals", {}).get("auc")
    verdict = (f"The strongest attack here, {NAMES.get(strongest, strongest).lower()}, reaches AUC "
               f"{best['auc']:.3f}")
    if interval:
        covers = interval["low"] <= 0.5 <= interval["high"]
        verdict += (f"; its interval {'covers' if covers else 'excludes'} 0.5"
                    + ("" if covers else ": the model leaks membership to it") + ".")
    else:
        verdict += "."
    parts.append(verdict)
    below = [NAMES.get(k, k) for k, a in attacks.items()
             if a.get("intervals", {}).get("auc", {}).get("high", 1.0) < 0.5]
    if below:
        parts.append(f"{', '.join(below)}: the AUC lies below 0.5 within its interval, so the score separates the "
                     "two groups with the opposite sign; an attacker who knows a few members can turn that around.")
    if cost:
        device = cost.get("device", {})
        parts.append(f"Cost: {cost['seconds_per_volume']:.3g} s per volume ({cost['network_evaluations_per_volume']} "
                     f"network evaluations) on {device.get('name', 'this machine')}.")
    return " ".join(parts)


def privacy_section(membership: dict[str, Any]) -> Section:
    """The "Privacy" section: how to read it, one row per attack, and the loss attack's AUC per time."""
    tables = [table(["attack", "AUC", "TPR at 1 % FPR", "TPR at 10 % FPR"], privacy_rows(membership),
                    id="privacy")]
    per_time = membership["attacks"].get("loss", {}).get("per_time")
    if per_time:
        tables.append(table(["path time (0 = data, 1 = noise)", "network time", "AUC of the loss there"],
                            [(f"{p['time']:g}", f"{p['network_time']:g}", f"{p['auc']:.3f}") for p in per_time],
                            caption="The loss attack at each fixed time"))
    return Section("Privacy", text=privacy_text(membership), tables=tuple(tables))
