"""The cohort's table of annotation XML files (qc/annotations.tsv): every file with its final decision.

Discovery reads a file only up to its SeriesInstanceUid; conversion parses it whole. A file refused at
conversion must be ``rejected`` in the cohort table and counted in the summary, not left ``matched``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from ctdiff.ingest.annotations.ingest import (FILE_REJECTIONS, NOT_THIS_SERIES, NOT_USED, SERIES_NOT_CONVERTED,
                                              SKIPPED)
from ctdiff.ingest.annotations.lidc_xml import (MALFORMED, NAMESPACE, NO_SERIES_UID, NOT_CT, UNREADABLE, Mark,
                                                Roi, lidc_xml)
from ctdiff.ingest.cohort import reason_category, summarise
from ctdiff.ingest.convert import convert_or_reject
from ctdiff.ingest.discover import discover
from test_annotations import sorted_slices, square
from test_convert import write_series

ITEM = "LIDC-IDRI-0001"


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def ingest(root: Path, out: Path, between=None) -> tuple[dict[str, dict], dict[str, dict], dict[tuple, int]]:
    """discover -> (``between(root)``) -> convert every item -> summarise, as the workflow's data rules do.
    Returns (discovery's XML rows, the cohort's XML rows, both by file; the summary counts)."""
    found = out / "discover" / "annotations.tsv"
    items = discover(root, out / "qc" / "inventory.tsv", out / "discover" / "series.json", annotations_tsv=found)
    if between is not None:
        between(root)
    for item in items:
        convert_or_reject(root, out / "discover" / "series.json", item, out / "nifti" / item,
                          out / "qc" / "convert" / f"{item}.tsv")
    summarise(out / "qc" / "inventory.tsv", [out / "qc" / "convert" / f"{item}.tsv" for item in items],
              out / "qc" / "cohort.tsv", out / "qc" / "summary.tsv", found_xml_tsv=found,
              nifti_dirs=[out / "nifti" / item for item in items], root=root, xml_tsv=out / "qc" / "annotations.tsv")
    summary = {(r["stage"], r["decision"], r["reason"]): int(r["count"]) for r in rows_of(out / "qc" / "summary.tsv")}
    by_file = [{r["file"]: r for r in rows_of(path)} for path in (found, out / "qc" / "annotations.tsv")]
    return *by_file, summary


def reading(folder: Path, uid: str, n_marks: int = 1) -> bytes:
    """An LIDC file of one reader outlining ``n_marks`` 3x3-pixel squares, 7 pixels apart, on slice 4."""
    sop = sorted_slices(folder)[4].SOPInstanceUID
    marks = [Mark(1, f"N{n}", (Roi(None, sop, True, square(5 + 7 * (n % 16), 8 + 7 * (n % 16),
                                                         5 + 7 * (n // 16), 8 + 7 * (n // 16))),))
             for n in range(n_marks)]
    return lidc_xml(uid, "1", [(marks, [])])


def truncated(data: bytes) -> bytes:
    """``data`` cut off mid-file, the way an interrupted download leaves it: the header is intact."""
    cut = data[: len(data) * 2 // 3]
    assert b"</ResponseHeader>" in cut and not cut.rstrip().endswith(b"</LidcReadMessage>")
    return cut


def series(root: Path) -> tuple[Path, str]:
    folder = root / "ct"
    uid, _ = write_series(folder, [2.5 * k for k in range(12)])
    return folder, uid


def test_truncated_file_is_rejected_in_the_cohort_table_and_counted(tmp_path):
    root = tmp_path / "tree"
    folder, uid = series(root)
    (folder / "069.xml").write_bytes(truncated(reading(folder, uid)))
    found, final, summary = ingest(root, tmp_path / "out")
    assert found["ct/069.xml"]["decision"] == "matched"          # its header names the series
    row = final["ct/069.xml"]
    assert (row["decision"], row["item"], row["series_uid"]) == ("rejected", ITEM, uid)
    assert row["reason"].startswith(f"{MALFORMED}: ")
    assert summary["annotations", "rejected", MALFORMED] == 1
    assert ("annotations", "matched", "") not in summary
    assert rows_of(tmp_path / "out" / "qc" / "cohort.tsv")[0]["decision"] == "converted"  # the volume stays


def _not_ct(root: Path) -> None:
    (root / "ct" / "069.xml").write_text(f'<IdriReadMessage xmlns="{NAMESPACE}"><ResponseHeader/></IdriReadMessage>')


# One case per reason conversion refuses a whole file: what lies beside the series, and what changes between
# discovery and conversion (a file replaced or removed in between), if anything.
CASES = {
    MALFORMED: (lambda folder, uid: truncated(reading(folder, uid)), None),
    UNREADABLE: (reading, lambda root: (root / "ct" / "069.xml").unlink()),
    NOT_CT: (reading, _not_ct),
    NO_SERIES_UID: (lambda folder, uid: (f'<LidcReadMessage xmlns="{NAMESPACE}"><SeriesInstanceUid>{uid}'
                                         "</SeriesInstanceUid><readingSession/></LidcReadMessage>").encode(), None),
    NOT_THIS_SERIES: (lambda folder, uid: (f'<LidcReadMessage xmlns="{NAMESPACE}"><SeriesInstanceUid>{uid}'
                                           "</SeriesInstanceUid><ResponseHeader><SeriesInstanceUid>1.2.3"
                                           "</SeriesInstanceUid></ResponseHeader></LidcReadMessage>").encode(), None),
    NOT_USED: (lambda folder, uid: reading(folder, uid, n_marks=256), None),  # 256 nodules overflow a uint8 mask
}


def test_every_rejection_has_a_case():
    assert set(CASES) == set(FILE_REJECTIONS)


@pytest.mark.parametrize("kind", FILE_REJECTIONS)
def test_every_rejection_at_conversion_reaches_the_cohort_table(tmp_path, kind):
    root = tmp_path / "tree"
    folder, uid = series(root)
    write, between = CASES[kind]
    (folder / "069.xml").write_bytes(write(folder, uid))
    found, final, summary = ingest(root, tmp_path / "out", between)
    assert found["ct/069.xml"]["decision"] == "matched"
    row = final["ct/069.xml"]
    assert (row["decision"], row["item"], reason_category(row["reason"])) == ("rejected", ITEM, kind), row
    assert summary["annotations", "rejected", kind] == 1
    item_rows = rows_of(tmp_path / "out" / "nifti" / ITEM / "annotations.tsv")
    assert any(r["decision"] == "rejected" and r["reason"] == row["reason"] for r in item_rows)


def test_every_file_keeps_or_gets_its_decision(tmp_path):
    """A good reading (one roi skipped), a radiograph reading, a file of no series found, one broken in
    its header, and the reading of a series that conversion rejects: one row each, counted."""
    root = tmp_path / "tree"
    folder, uid = series(root)
    data = reading(folder, uid, n_marks=2).replace(b"<inclusion>TRUE</inclusion>", b"<inclusion>MAYBE</inclusion>", 1)
    (folder / "069.xml").write_bytes(data)
    (folder / "other.xml").write_bytes(lidc_xml("1.2.3.4", "1", []))
    (folder / "broken.xml").write_text("<LidcReadMessage")
    (root / "cxr").mkdir()
    (root / "cxr" / "cxr.xml").write_text(f'<IdriReadMessage xmlns="{NAMESPACE}"><ResponseHeader/></IdriReadMessage>')
    gapped, gapped_uid = root / "gapped", write_series(root / "gapped", [2.5 * k for k in range(13) if k != 6],
                                                       patient="LIDC-IDRI-0002")[0]
    (gapped / "070.xml").write_bytes(lidc_xml(gapped_uid, "1", []))
    found, final, summary = ingest(root, tmp_path / "out")
    assert list(final) == list(found)
    decided = {f: (r["decision"], reason_category(r["reason"])) for f, r in final.items()}
    assert decided == {"ct/069.xml": ("matched", SKIPPED), "ct/other.xml": ("unmatched", found["ct/other.xml"]["reason"]),
                       "ct/broken.xml": ("rejected", MALFORMED), "cxr/cxr.xml": ("ignored", found["cxr/cxr.xml"]["reason"]),
                       "gapped/070.xml": ("unmatched", SERIES_NOT_CONVERTED)}
    assert final["ct/069.xml"]["reason"].startswith(f"{SKIPPED}: 2,")
    assert final["gapped/070.xml"]["reason"].startswith(f"{SERIES_NOT_CONVERTED}: missing slice(s): ")
    counts = {key[1:]: n for key, n in summary.items() if key[0] == "annotations"}
    assert counts == {("matched", SKIPPED): 1, ("unmatched", reason_category(found["ct/other.xml"]["reason"])): 1,
                      ("rejected", MALFORMED): 1, ("ignored", reason_category(found["cxr/cxr.xml"]["reason"])): 1,
                      ("unmatched", SERIES_NOT_CONVERTED): 1}
