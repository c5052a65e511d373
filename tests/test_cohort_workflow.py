"""The workflow on a DICOM tree with faulty scans: a faulty scan is recorded, never fatal, unless none is left."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import generate_uid

from ctdiff.phantom import write_patient
from ctdiff.plan import ingest_mem_mb
from test_workflow import planned_rules, snakemake

pytestmark = pytest.mark.slow  # each test runs the workflow's ingestion

CONFIG = """data: {{source: dicom, root: {root}}}
preprocess: {{size: 8, spacing_mm: 48.0}}
split: {{test: 1}}
"""


def tree(root: Path, good: list[int], faulty: list[int], cut_xml: tuple[int, ...] = ()) -> Path:
    """Phantom patients (32x32 slices); each faulty one loses a slice from the middle of its stack; the
    annotation XML of each ``cut_xml`` one is cut off mid-file, its header intact."""
    for number in good + faulty:
        pid = f"WF-{number:04d}"
        write_patient(root, pid, np.random.default_rng([3, number]), matrix=32)
        folders = {f.parent for f in (root / pid).glob("*/*/*.dcm")}
        main = max(folders, key=lambda d: len(list(d.iterdir())))
        if number in faulty:
            sorted(main.glob("*.dcm"))[len(list(main.glob("*.dcm"))) // 2].unlink()
        if number in cut_xml:
            xml = main / f"{number:03d}.xml"
            xml.write_bytes(xml.read_bytes()[: xml.stat().st_size // 2])
    return root


def test_faulty_scan_is_recorded_and_the_rest_go_on(tmp_path):
    root = tree(tmp_path / "dicom", good=[2, 3], faulty=[6], cut_xml=(3,))
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(root=root))
    snakemake(tmp_path, "results/splits/test.txt", "--cores", "2", "--configfile", str(config))

    cohort = pd.read_csv(tmp_path / "results/qc/cohort.tsv", sep="\t", keep_default_na=False)
    assert dict(zip(cohort.item, cohort.decision)) == {"WF-0002": "converted", "WF-0003": "converted",
                                                       "WF-0006": "rejected"}
    assert cohort.set_index("item").reason["WF-0006"].startswith("missing slice(s): ")
    summary = pd.read_csv(tmp_path / "results/qc/summary.tsv", sep="\t", keep_default_na=False)
    assert {"convert", "cohort"} <= set(summary.stage)
    # Every annotation file with its final decision: WF-0003's, cut off after its header, was matched at
    # discovery and refused at conversion; WF-0006's series was rejected at conversion.
    xml = pd.read_csv(tmp_path / "results/qc/annotations.tsv", sep="\t", keep_default_na=False)
    ct = xml[xml.root_element == "LidcReadMessage"].set_index("item")
    assert dict(ct.decision) == {"WF-0002": "matched", "WF-0003": "rejected", "WF-0006": "unmatched"}
    assert ct.reason["WF-0003"].startswith("malformed XML: ")
    assert ct.reason["WF-0006"].startswith("its series was rejected at conversion: missing slice(s): ")
    counts = {(d, r): n for s, d, r, n in summary.itertuples(index=False) if s == "annotations"}
    assert counts[("rejected", "malformed XML")] == 1 and counts[("matched", "")] == 1
    split = sorted((tmp_path / "results/splits/train.txt").read_text().split()
                   + (tmp_path / "results/splits/test.txt").read_text().split())
    assert split == ["WF-0002", "WF-0003"]
    assert not (tmp_path / "results/nifti/WF-0006/hu.nii.gz").exists()
    assert (tmp_path / "results/nifti/WF-0002/hu.nii.gz").exists()

    # The rest of the DAG only asks for the converted items.
    proc = snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(config))
    assert "preprocess" in planned_rules(proc)
    assert not {"discover", "convert", "cohort"} & planned_rules(proc)
    assert "WF-0006" not in " ".join(line for line in proc.stdout.splitlines() if "preprocessed/" in line)
    assert "preprocessed/WF-0002" in proc.stdout


def test_run_stops_with_a_clear_message_when_no_scan_is_usable(tmp_path):
    root = tree(tmp_path / "dicom", good=[], faulty=[2, 3])
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(root=root))
    proc = snakemake(tmp_path, "--cores", "2", "--configfile", str(config), check=False)
    assert proc.returncode != 0
    assert "no usable scan left" in proc.stdout + proc.stderr
    assert (tmp_path / "results/qc/summary.tsv").exists()  # written anyway, to show why


def test_run_stops_with_a_clear_message_when_no_series_is_usable(tmp_path):
    """Nothing but a localizer: discovery chooses nothing, and the inventory survives to say why."""
    root = tmp_path / "dicom"
    write_patient(root, "WF-0004", np.random.default_rng(0), matrix=32)  # 4: with a localizer
    folders = {f.parent for f in (root / "WF-0004").glob("*/*/*.dcm")}
    for f in max(folders, key=lambda d: len(list(d.iterdir()))).glob("*.dcm"):
        f.unlink()
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(root=root))
    proc = snakemake(tmp_path, "--cores", "2", "--configfile", str(config), check=False)
    assert proc.returncode != 0
    assert "no usable scan left" in proc.stdout + proc.stderr
    inventory = pd.read_csv(tmp_path / "results/qc/inventory.tsv", sep="\t", keep_default_na=False)
    assert list(inventory.reason) == ["localizer"]


def test_logs_memory_and_recovered_stacks(tmp_path):
    """One patient whose stack has a stray slice 38 mm beyond its top, with an LIDC annotation file and a
    note beside its slices: discover's log counts the files it skipped; convert and preprocess declare the
    memory of the series' size; data.recover_stacks reaches convert, which then drops the stray slice."""
    root = tmp_path / "dicom"
    write_patient(root, "WF-0002", np.random.default_rng([3, 2]), matrix=32, nodules=False)
    folder = max({f.parent for f in root.glob("WF-0002/*/*/*.dcm")}, key=lambda d: len(list(d.iterdir())))
    files = sorted(folder.glob("*.dcm"), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))
    (folder / "069.xml").write_text("<LidcReadMessage/>")
    (folder / "notes.txt").write_text("reader notes\n")
    ds = pydicom.dcmread(files[-1])
    ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + 38.0]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(folder / "stray.dcm", enforce_file_format=True)
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(root=root))
    qc, pre = "results/qc/convert/WF-0002.tsv", "results/preprocessed/WF-0002.nii.gz"

    snakemake(tmp_path, qc, "--cores", "1", "--configfile", str(config))
    log = (tmp_path / "results/logs/discover.log").read_text()
    assert f"read {len(files) + 3} files under {root}: {len(files) + 1} DICOM files in 1 series" in log
    assert "skipped 2 files: not DICOM (.txt) 1, not DICOM (.xml) 1" in log
    row = pd.read_csv(tmp_path / qc, sep="\t", keep_default_na=False).iloc[0]
    assert (row.decision, row.reason.split(":")[0]) == ("rejected", "stray slice(s)")

    series = tmp_path / "results/discover/series.json"
    assert json.loads(series.read_text())["WF-0002"]["rows"] == 32
    mem = {"convert": ingest_mem_mb("convert", series, "WF-0002"),
           "preprocess": ingest_mem_mb("preprocess", series, "WF-0002", 8)}  # CONFIG's preprocess.size
    recover = tmp_path / "recover.yaml"
    recover.write_text("data: {recover_stacks: true}\n")
    limit = ["--resources", f"mem_mb={max(mem.values())}"]
    proc = snakemake(tmp_path, pre, "-n", "--cores", "1", *limit, "--configfile", str(config), str(recover))
    assert planned_rules(proc) == {"convert", "preprocess"}  # the new parameter reruns convert
    jobs = dict(re.findall(r"^rule (\w+):\n((?:    .*\n)+)", proc.stdout, flags=re.M))
    for stage in ("convert", "preprocess"):
        assert re.search(rf"resources: .*\bmem_mb={mem[stage]}\b", jobs[stage]), jobs[stage]

    snakemake(tmp_path, pre, "--cores", "1", *limit, "--configfile", str(config), str(recover))
    row = pd.read_csv(tmp_path / qc, sep="\t", keep_default_na=False).iloc[0]
    assert (row.decision, row.n_slices) == ("converted", len(files))
    assert row.reason.startswith("recovered: dropped 1 stray slice 38.0 mm beyond the last slice")
    assert "WF-0002: converted recovered: dropped 1 stray slice" in (
        tmp_path / "results/logs/convert/WF-0002.log").read_text()
