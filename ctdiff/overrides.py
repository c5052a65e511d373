"""Config values given on the command line, read as the schema types them.

``snakemake --config sample='{n: 8}'`` hands the workflow ``{"sample": {"n": "8"}}``: Snakemake reads the
value of a ``--config`` entry with YAML's base loader, which keeps every scalar inside a mapping or list a
string (``'8'``, ``'true'``, ``'null'``). :func:`coerce_config` reads such strings again as YAML wherever the
schema does not allow a string there, so numbers, booleans, null and lists work as typed; a value that is
still wrong (``n: -1``, ``n: eight``) is left for the schema validation, whose error names the key.
Imports only YAML (every ``snakemake`` call parses ``workflow/rules/common.smk``, which calls this).
"""

from __future__ import annotations

import math
from typing import Any

import yaml


def schema_types(schema: dict[str, Any]) -> set[str]:
    """The JSON-schema types a (sub)schema allows: ``{"integer", "null"}`` for ``type: [integer, "null"]``;
    empty when it names none."""
    types = schema.get("type", [])
    return {types} if isinstance(types, str) else set(types)


def coerce(value: Any, schema: dict[str, Any]) -> Any:
    """``value`` with every string the schema does not type as a string read again as YAML, recursively
    through ``properties`` of mappings and ``items`` of lists. A string the schema may hold as a string stays
    as it is (``data.root: 'null'`` is a folder named null). A string that does not parse, or parses to
    another string, stays a string, except that a ``number`` also accepts what Python's ``float`` reads
    (YAML 1.1 reads ``1e-3`` as a string). Returns new containers; ``value`` is not changed."""
    types = schema_types(schema)
    if isinstance(value, str) and types and "string" not in types:
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        if isinstance(parsed, str):
            return _number(parsed) if "number" in types else parsed
        return coerce(parsed, schema)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        return {k: coerce(v, properties[k]) if k in properties else v for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [coerce(v, schema["items"]) for v in value]
    return value


def coerce_config(raw: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The whole config ``raw`` through :func:`coerce` with the config schema. A ``variants`` entry's
    sections (``{name: small, train: {steps: '5'}}``) are plain objects in the schema (docs/facts.md says
    why), so they are read against the main config's section of the same name."""
    out = coerce(raw, schema)
    sections = schema.get("properties", {})
    variants = out.get("variants")
    if isinstance(variants, list):
        out["variants"] = [
            {k: coerce(v, sections[k]) if k != "name" and k in sections else v for k, v in entry.items()}
            if isinstance(entry, dict) else entry
            for entry in variants
        ]
    return out


def _number(text: str) -> Any:
    """``text`` as a finite float when Python reads it as one (``1e-3``), else unchanged."""
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text
