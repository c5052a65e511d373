"""The reader study's analysis: answers joined with the key, per reader, pooled and per case, bad answer files
reported by name with the rest analysed, and the report's section with and without answers."""
import csv
import json

import pytest

from ctdiff.reader.analysis import analyse, write_analysis
from ctdiff.report.reader import reader_section
from ctdiff.reader.stats import proportion

STUDY = "0123456789ab"
TRUTH = {"c1": "synthetic", "c2": "real", "c3": "synthetic", "c4": "real", "c5": "real", "c6": "synthetic"}


@pytest.fixture()
def key(tmp_path):
    key = {"format": "ctdiff-reader-key", "study": STUDY,
           "cases": [{"case": c, "position": k + 1, "truth": t, "source": f"src/{c}.nii.gz"}
                     for k, (c, t) in enumerate(TRUTH.items())]}
    path = tmp_path / "key.json"
    path.write_text(json.dumps(key))
    return path


def export_json(path, reader, answers, study=STUDY, exported="2026-01-01T10:00:00Z"):
    """An answer file as the page writes it; ``answers`` = [(case, answer, confidence, comment)]."""
    rows = [{"case": c, "position": k + 1, "answer": a, "confidence": n, "comment": t, "seconds": 3.0}
            for k, (c, a, n, t) in enumerate(answers)]
    path.write_text(json.dumps({"format": "ctdiff-reader-answers", "version": 1, "study": study, "reader": reader,
                                "exported": exported, "answers": rows}))
    return path


def export_csv(path, reader, answers, study=STUDY):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["study", "reader", "case", "position", "answer", "confidence", "comment", "seconds", "exported"])
        for k, (c, a, n, t) in enumerate(answers):
            w.writerow([study, reader, c, k + 1, a, n, t, 1.5, "2026-01-01T11:00:00Z"])
    return path


ANNA = [("c1", "synthetic", 5, ""), ("c2", "real", 4, ""), ("c3", "real", 2, "looks right"),
        ("c4", "real", 5, ""), ("c5", "synthetic", 1, ""), ("c6", "synthetic", 3, "")]
BEN = [("c1", "real", 3, 'grain "too regular",\nbut vessels fine'), ("c2", "real", 2, ""), ("c3", "real", 4, ""), ("c4", "synthetic", 2, ""),
       ("c5", "real", 5, ""), ("c6", "synthetic", 4, "")]


def test_per_reader_pooled_and_per_case(tmp_path, key):
    folder = tmp_path / "answers"
    folder.mkdir()
    files = [export_json(folder / "anna.json", "Anna", ANNA), export_csv(folder / "ben.csv", "Ben", BEN)]
    result = write_analysis(key, folder, files, tmp_path / "a.json", tmp_path / "cases.tsv", tmp_path / "r.tsv")
    assert result["problems"] == []
    anna, ben = result["readers"]
    # Anna: right on c1, c2, c4, c6 (4/6); synthetic c1, c6 of c1, c3, c6 (2/3); real c2, c4 of 3 (2/3)
    assert anna["reader"] == "Anna" and anna["accuracy"] == proportion(4, 6, 0.95)
    assert anna["sensitivity"]["k"] == 2 and anna["specificity"]["k"] == 2
    # her ratings: synthetic 10, 4, 8 against real 2, 1, 6: pairs won 3 + 2 + 3 = 8 of 9
    assert anna["auc"]["auc"] == pytest.approx(8 / 9)
    assert ben["accuracy"]["k"] == 3  # c2, c5, c6
    pooled = result["pooled"]
    assert pooled["readings"] == 12 and pooled["accuracy"] == proportion(7, 12, 0.95)
    assert result["agreement"]["cases"] == 6 and result["agreement"]["readers"] == 2
    cases = {c["case"]: c for c in result["cases"]}
    assert cases["c3"]["fooled"] == 2 and cases["c1"]["fooled"] == 1 and cases["c5"]["fooled"] == 1
    assert [c["case"] for c in result["cases"]][:3] == ["c3", "c1", "c6"]  # synthetic, most convincing first
    assert result["comments"] == [
        {"reader": "Anna", "case": "c3", "truth": "synthetic", "answer": "real", "comment": "looks right"},
        {"reader": "Ben", "case": "c1", "truth": "synthetic", "answer": "real",
         "comment": 'grain "too regular",\nbut vessels fine'}]
    rows = (tmp_path / "r.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in rows] == ["reader", "Anna", "Ben", "pooled"]
    section = reader_section(result, "results/reader/study")
    text, tables = section.text, section.tables
    assert section.title == "Reader study"
    assert "2 reader(s), 12 readings" in text and "Fleiss' κ" in text
    assert [t.id for t in tables] == ["reader-study", "reader-cases", "reader-comments"]
    assert '"too regular"' in (tmp_path / "a.json").read_text().replace('\\"', '"')


def test_bad_answer_files_are_reported_by_name_and_the_rest_analysed(tmp_path, key):
    folder = tmp_path / "answers"
    folder.mkdir()
    files = [
        export_json(folder / "anna.json", "Anna", ANNA),
        # the same reader again, different answers, exported later: counted instead
        export_json(folder / "anna-again.json", " anna ", [(c, "synthetic", 5, "") for c in TRUTH],
                    exported="2026-02-01T10:00:00Z"),
        # another study
        export_json(folder / "carl.json", "Carl", ANNA, study="ffffffffffff"),
        # an unknown case id, c2 twice with different answers, c3 twice with the same, c6 missing, c5 invalid
        export_csv(folder / "dora.csv", "Dora", [
            ("c1", "real", 3, ""), ("c2", "real", 2, ""), ("c2", "synthetic", 2, ""), ("c3", "real", 4, ""),
            ("c3", "real", 4, ""), ("c4", "real", 1, ""), ("c5", "maybe", 3, ""), ("zz99", "real", 1, "")]),
        folder / "notes.json",
    ]
    files[-1].write_text("{not json")
    result = analyse(key, files, str(folder))
    problems = [(p["file"], p["reader"], p["problem"]) for p in result["problems"]]
    assert ("notes.json", "", "notes.json is not JSON (Expecting property name enclosed in double quotes: line 1 "
            "column 2 (char 1)); left out") in problems
    text = "\n".join(" | ".join(p) for p in problems)
    assert "carl.json | Carl | answers study ffffffffffff, not study 0123456789ab of the key (6 of 6 case ids" in text
    assert "dora.csv | Dora | case ids not in the key, left out: zz99" in text
    assert "dora.csv | Dora | invalid answers, left out: c5 (answer 'maybe' is not real or synthetic)" in text
    assert "dora.csv | Dora | cases answered twice with the same answer, counted once: c3" in text
    assert "dora.csv | Dora | cases answered twice with different answers, left out: c2" in text
    assert "dora.csv | Dora | 1 of 6 cases not answered: c6" in text
    assert ("reader anna appears in 2 files (anna-again.json, anna.json): different answers; only "
            "anna-again.json (exported last) is counted") in text
    readers = {r["reader"]: r for r in result["readers"]}
    assert set(readers) == {"anna", "Dora"}
    assert readers["anna"]["accuracy"]["k"] == 3  # all called synthetic: the three synthetic cases
    assert readers["Dora"]["readings"] == 3 and readers["Dora"]["accuracy"]["k"] == 1  # c1 x, c3 x, c4 ok


def test_no_answers_yet(tmp_path, key):
    result = write_analysis(key, tmp_path / "answers", [], tmp_path / "a.json", tmp_path / "c.tsv", tmp_path / "r.tsv")
    assert result["readers"] == [] and result["pooled"] is None and result["agreement"] is None
    assert all(c["readings"] == 0 and c["fooled_share"] is None for c in result["cases"])
    section = reader_section(result, "results/reader/study")
    text, tables = section.text, section.tables
    assert "No answers yet: put the readers' exported answer files (JSON or CSV) in" in text and tables == ()
    assert (tmp_path / "r.tsv").read_text().splitlines() == [(tmp_path / "r.tsv").read_text().splitlines()[0]]


@pytest.mark.parametrize("answered", [True, False])
def test_report_section_in_both_renderings(tmp_path, key, answered):
    """The report shows the study waiting for answers, then the readers' results, in Markdown and HTML."""
    from test_report import figures, metrics, write_inputs

    from ctdiff.report.document import write_report

    files = [export_json(tmp_path / "anna.json", "Anna", ANNA)] if answered else []
    write_analysis(key, tmp_path / "answers", files, tmp_path / "reader" / "analysis.json", tmp_path / "c.tsv",
                   tmp_path / "r.tsv")
    m = metrics(pretrained=False, rank_deficient=False, extended=False)
    write_inputs(tmp_path, m)
    write_report(tmp_path / "metrics.json", tmp_path / "inv.tsv", {}, tmp_path / "report.md", tmp_path / "report.html",
                 reader_json=tmp_path / "reader" / "analysis.json", **figures(tmp_path, m))
    md, page = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    assert "## Reader study" in md and "<h2>Reader study</h2>" in page
    assert md.index("## Figure 1") < md.index("## Reader study") < md.index("## Learning curve")
    if answered:
        assert "| Anna | 6 | 66.7 % [22.3, 95.7] (4/6) |" in md and 'id="reader-study"' in page
        assert "| 3 | c3 | synthetic | src/c3.nii.gz | 1 | 1 | 100 % | 4.0 |" in md
    else:
        assert "No answers yet" in md and "No answers yet" in page and 'id="reader-study"' not in page
