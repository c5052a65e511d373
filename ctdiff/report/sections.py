"""What the report is made of: sections of text, tables, images and code, rendered alike in Markdown and HTML
(:mod:`ctdiff.report.document`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Table:
    """A table of text cells; ``caption`` (optional) introduces it, ``id`` (optional) names it in HTML."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""
    id: str = ""


@dataclass(frozen=True)
class Image:
    """A PNG file: linked from the Markdown, embedded in the HTML (``id`` names the ``<img>``)."""

    path: Path
    alt: str
    id: str


@dataclass(frozen=True)
class Section:
    """One heading of the report and its content, rendered in this order: the introducing ``text``, the
    ``tables``, the ``images``, then ``code`` (preformatted YAML)."""

    title: str
    text: str = ""
    tables: tuple[Table, ...] = ()
    images: tuple[Image, ...] = ()
    code: str = ""


def table(header: list[str], rows: list[tuple], *, caption: str = "", id: str = "") -> Table:
    """A :class:`Table` with every cell turned into text."""
    return Table(tuple(header), tuple(tuple(str(c) for c in row) for row in rows), caption, id)
