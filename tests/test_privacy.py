"""No identifying DICOM attribute leaks into any output file or log of the data stages.

A phantom patient is given distinctive values in the attributes that identify a person or a site; after
discover, convert, the cohort summary and preprocess, every file written (gzip members decompressed, so
NIfTI headers and extensions are searched too) and everything logged or printed is searched for them.
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import pydicom

from conftest import run_ingestion

from ctdiff.ingest.convert import VOLUME_NAME
from ctdiff.phantom import write_patient

PATIENT = "PRIV-0002"
SECRETS = {
    "PatientName": "Zyxwquist^Ottoline",
    "PatientBirthDate": "19230417",
    "PatientAddress": "77 Quillfeather Lane, Marrowby",
    "OtherPatientIDs": "MRN-55821934",
    "InstitutionName": "Saint Vexford Infirmary",
    "InstitutionAddress": "1 Glimmerholt Road",
    "ReferringPhysicianName": "Pemberwick^Ignatius",
    "OperatorsName": "Traskmore^Hildegund",
    "AccessionNumber": "ACC98127364",
    "PatientComments": "allergic to quorbine",
    "PatientTelephoneNumbers": "0044-555-918273",
}


def identify(root: Path) -> None:
    """Set every attribute of :data:`SECRETS` in every file under ``root``."""
    for f in root.rglob("*.dcm"):
        ds = pydicom.dcmread(f)
        for keyword, value in SECRETS.items():
            setattr(ds, keyword, value)
        ds.save_as(f)


def test_no_identifying_attribute_reaches_outputs_or_logs(tmp_path, capfd):
    root, out = tmp_path / "dicom", tmp_path / "results"
    write_patient(root, PATIENT, np.random.default_rng(5), matrix=32)
    write_patient(root, "PRIV-0003", np.random.default_rng(6), matrix=32)
    faulty = max(root.glob("PRIV-0003/*/*/"), key=lambda d: len(list(d.iterdir())))
    sorted(faulty.glob("*.dcm"))[20].unlink()  # one rejected item, so the rejection path is searched too
    identify(root)
    assert pydicom.dcmread(next(root.rglob("*.dcm"))).PatientName == SECRETS["PatientName"]

    log_file = tmp_path / "logs" / "data.log"
    log_file.parent.mkdir()
    handler = logging.FileHandler(log_file)
    logging.getLogger().addHandler(handler)
    previous = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)
    try:
        _, usable = run_ingestion(root, out, size=8, spacing_mm=48.0)
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(previous)
        handler.close()
    captured = capfd.readouterr()

    assert sorted(usable) == [PATIENT]
    files = [p for p in [*out.rglob("*"), log_file] if p.is_file()]
    assert {p.name for p in files} >= {"inventory.tsv", "series.json", VOLUME_NAME, f"{PATIENT}.nii.gz",
                                       "cohort.tsv", "summary.tsv", "data.log"}
    texts = {"stdout/stderr": (captured.out + captured.err).encode()}
    for p in files:
        data = p.read_bytes()
        texts[str(p.relative_to(tmp_path))] = gzip.decompress(data) if p.suffix == ".gz" else data
    assert PATIENT.encode() in texts[str((out / "qc" / "cohort.tsv").relative_to(tmp_path))]  # search works
    for where, data in texts.items():
        lowered = data.lower()
        for keyword, value in SECRETS.items():
            for part in value.replace("^", " ").split():
                if len(part) >= 6:
                    assert part.lower().encode() not in lowered, f"{keyword} ({part}) found in {where}"
