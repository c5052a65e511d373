"""Where a workflow job writes what it has to say: its rule's log file.

Every ``workflow/scripts/*.py`` starts with :func:`to_file`, so that ``print``, tracebacks, Python warnings
and the ``logging`` records of ctdiff (INFO and above: discovery's counts of files read and skipped, ...) and
of the libraries it calls (WARNING and above) all land in ``logs/<rule>/...log``. Standard library only:
every job imports it before anything else.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def to_file(path: str | Path) -> None:
    """Send this process's stdout, stderr, warnings and log records to ``path`` (truncated first).

    The root logger takes WARNING and above from every library, the ``ctdiff`` loggers INFO and above;
    handlers configured before are replaced.
    """
    stream = open(path, "w", buffering=1, encoding="utf-8")  # line-buffered: a crash loses no finished line
    sys.stdout = sys.stderr = stream
    logging.basicConfig(level=logging.WARNING, format=FORMAT, stream=stream, force=True)
    logging.getLogger("ctdiff").setLevel(logging.INFO)
    logging.captureWarnings(True)
