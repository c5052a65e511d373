"""A job's log file gets its prints, tracebacks, warnings and log records (ctdiff at INFO, libraries at WARNING)."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

JOB = """
import logging, sys, warnings
from ctdiff.logs import to_file
to_file(sys.argv[1])
print("printed")
logging.getLogger("ctdiff.ingest.discover").info("skipped 3 files")
logging.getLogger("ctdiff.ingest.discover").debug("not shown")
logging.getLogger("somelibrary").info("not shown either")
logging.getLogger("somelibrary").warning("library warning")
warnings.warn("python warning")
raise RuntimeError("the job failed")
"""


def test_a_job_logs_to_its_file(tmp_path):
    log = tmp_path / "job.log"
    proc = subprocess.run([sys.executable, "-c", JOB, str(log)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and proc.stdout == proc.stderr == ""
    text = log.read_text()
    assert "printed\n" in text
    assert "INFO ctdiff.ingest.discover: skipped 3 files" in text
    assert "WARNING somelibrary: library warning" in text
    assert "UserWarning: python warning" in text
    assert "RuntimeError: the job failed" in text
    assert "not shown" not in text
