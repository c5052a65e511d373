"""The keys of ``metrics.json``, named once, and the check of a metrics dict against its schema.

``ctdiff/metrics/metrics.schema.json`` describes every key: its type, what it holds, and which keys a file
must have. The writer (:func:`ctdiff.metrics.evaluate.evaluate`) checks the dict with :func:`check_metrics`
before writing it; the readers (report, reading guide, variants table, figures) take the key names from the
constants here, which ``tests/test_metrics_schema.py`` checks against the schema's top-level keys. A bootstrap
interval and a floor value are stored under the name of the metric they belong to (``bootstrap[FID]``,
``floor[MSSSIM_NEAREST_REAL]``).

No heavy imports: the report and the workflow's rule files import this module.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

FID = "fid"
FID_RANK_DEFICIENT = "fid_rank_deficient"
FID_FEATURE_DIM = "fid_feature_dim"
KID = "kid"
MSSSIM_NEAREST_REAL = "msssim_nearest_real"
MSSSIM_DIVERSITY = "msssim_diversity"
BOOTSTRAP = "bootstrap"
FLOOR = "floor"
MEMORISATION = "memorisation"
FEATURE_NETWORK = "feature_network"
N_REAL = "n_real"
N_SYNTHETIC = "n_synthetic"
N_TRAIN = "n_train"
REAL_VOLUMES = "real_volumes"
VOLUME_SHAPE = "volume_shape"
MSSSIM = "msssim"
SEED = "seed"
PAPER = "paper"
PROVENANCE = "provenance"
ANATOMY = "anatomy"
NODULES = "nodules"
MEMBERSHIP = "membership"

#: Every top-level key, in the order the writer stores them.
ALL: tuple[str, ...] = (FID, FID_RANK_DEFICIENT, FID_FEATURE_DIM, KID, MSSSIM_NEAREST_REAL, MSSSIM_DIVERSITY,
                        BOOTSTRAP, FLOOR, MEMORISATION, FEATURE_NETWORK, N_REAL, N_SYNTHETIC, N_TRAIN, REAL_VOLUMES,
                        VOLUME_SHAPE, MSSSIM, SEED, PAPER, PROVENANCE, ANATOMY, NODULES, MEMBERSHIP)

SCHEMA_FILE = "metrics.schema.json"  # package data of ctdiff.metrics


@cache
def schema() -> dict[str, Any]:
    """The JSON Schema of ``metrics.json`` (draft 2020-12)."""
    return json.loads(resources.files("ctdiff.metrics").joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))


def check_metrics(metrics: dict[str, Any], where: str = "metrics.json") -> None:
    """Raise ``ValueError`` when ``metrics``, as JSON holds it (tuples become arrays), does not follow the schema,
    naming each offending key by its path (``msssim_nearest_real.mean: 'x' is not of type 'number'``; a missing
    key: ``(top level): 'fid' is a required property``). ``where`` begins the message."""
    from jsonschema import Draft202012Validator  # only the writer needs it

    as_json = json.loads(json.dumps(metrics))
    errors = sorted(Draft202012Validator(schema()).iter_errors(as_json), key=lambda e: list(map(str, e.path)))
    if errors:
        lines = [f"{'.'.join(map(str, e.path)) or '(top level)'}: {e.message}" for e in errors]
        raise ValueError(f"{where} does not follow {SCHEMA_FILE}:\n" + "\n".join(lines))
