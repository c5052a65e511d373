"""What the workflow decides when the Snakefile is parsed: where the DICOM tree comes from, which items the
cohort kept, which sampler settings the comparison draws, the sample file names and the ``ctdiff sample``
options of a sample set.

Every ``snakemake`` call, a dry run included, parses the Snakefile, so this module imports only the standard
library, :mod:`ctdiff.config` and :mod:`ctdiff.options`: no torch, numpy, pandas or DICOM/NIfTI readers
(``tests/test_plan.py`` checks it in a fresh interpreter). The rules call these functions; the stages' own
code imports them too, so each decision is written once.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ctdiff.config import Config, SampleConfig
from ctdiff.options import tag


@dataclass(frozen=True)
class DicomTree:
    """The DICOM tree that discovery and conversion read: ``root``, written by this run's phantom rule when
    ``phantom`` is true, else an existing tree the run only reads."""

    root: str
    phantom: bool

    @property
    def written(self) -> list[str]:
        """The tree as an output of this run, for the rules that read it to wait for: ``[root]`` for the
        phantom, nothing for an existing tree (a folder outside the run is no rule's output)."""
        return [self.root] if self.phantom else []


def dicom_tree(cfg: Config) -> DicomTree:
    """``data.source`` phantom: the phantom cohort written to ``{results}/dicom``; dicom: ``data.root``."""
    if cfg.data.source == "phantom":
        return DicomTree(f"{cfg.results}/dicom", phantom=True)
    return DicomTree(str(cfg.data.root), phantom=False)


def converted_items(cohort_tsv: Path | str) -> dict[str, str]:
    """``{item: patient}`` of the rows of a cohort table (:func:`ctdiff.data.cohort.summarise`) whose decision
    is ``'converted'``: the items every stage after ingestion uses."""
    with open(cohort_tsv, newline="", encoding="utf-8") as fh:
        return {r["item"]: r["patient"] for r in csv.DictReader(fh, delimiter="\t") if r["decision"] == "converted"}


def sample_files(folder: Path | str, n: int) -> list[str]:
    """The files of a sample set of ``n`` volumes: sample ``i`` is ``{folder}/{i:04d}.nii.gz``."""
    return [f"{folder}/{i:04d}.nii.gz" for i in range(n)]


def setting(sampler: str, steps: int | None, eta: float, timesteps: int) -> dict[str, Any]:
    """A sampler setting with ``steps`` resolved (None → T) and ``eta`` kept only where it acts (ddim)."""
    return {"sampler": sampler, "steps": timesteps if steps is None else int(steps),
            "eta": float(eta) if sampler == "ddim" else 0.0}


def comparison_runs(cfg: Config) -> dict[str, dict[str, Any]]:
    """``{tag: resolved setting}`` for each ``evaluate.compare_samplers`` entry, in config order, leaving out
    an entry equal to the ``sample`` section's setting: that set is already drawn, as the table's main row.
    Tags are :func:`ctdiff.options.tag` (``ddim-50``, ``dpmpp-25``, ``ddim-50-eta0.5``)."""
    T = cfg.diffusion.timesteps
    main = setting(cfg.sample.sampler, cfg.sample.steps, cfg.sample.eta, T)
    runs = {}
    for entry in cfg.evaluate.compare_samplers:
        run = setting(entry.sampler, entry.steps, entry.eta, T)
        if run != main:
            runs[tag(run)] = run
    return runs


def compared_sample(settings: SampleConfig, run: dict[str, Any]) -> SampleConfig:
    """The sample section as a compared sampler draws it: ``run``'s sampler, steps and eta replace the
    section's; count, seed, batch size, precision and compile stay; no HU copies."""
    return replace(settings, sampler=run["sampler"], steps=run["steps"], eta=run["eta"], hu=False)


def sample_options(settings: SampleConfig) -> str:
    """The ``ctdiff sample`` options that draw ``settings``; ``ctdiff.cli`` parses them back to ``settings``.

    The order and spelling are part of the sample rules' params, so changing them reruns every sample set.
    """
    s = settings
    options = [f"-n {s.n}", f"--sampler {s.sampler}", f"--eta {s.eta}", f"--batch-size {s.batch_size}",
               f"--seed {s.seed}", f"--precision {s.precision}"]
    if s.steps is not None:
        options.append(f"--steps {s.steps}")
    options += ["--compile"] * s.compile + ["--hu"] * s.hu
    return " ".join(options)
