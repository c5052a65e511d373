"""Reading the answer files readers send back (the study page's JSON or CSV export) and checking them against the
key. Every problem is reported by file and reader and the rest goes on: :func:`collect` returns the usable
answers per reader and a list of problems, and raises nothing for bad input."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from ctdiff.reader.stats import ANSWERS

#: Columns the CSV export writes; the first five are needed.
CSV_COLUMNS = ("study", "reader", "case", "answer", "confidence", "position", "comment", "seconds", "exported")


@dataclass
class AnswerFile:
    """One reader's export: ``rows`` are dicts with case, answer, confidence, comment, seconds (raw values)."""

    path: Path
    study: str
    reader: str
    exported: str
    rows: list[dict] = field(default_factory=list)


@dataclass
class Reading:
    """The usable answers of one reader: ``answers[case] = (answer, confidence, comment)``."""

    reader: str
    file: str
    answers: dict[str, tuple[str, int, str]]


def read_answer_file(path: Path) -> AnswerFile:
    """A JSON or CSV export of the study page; ``ValueError`` saying what is wrong with the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot be read ({err})") from None
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"is not JSON ({err})") from None
        if not isinstance(doc, dict) or doc.get("format") != "ctdiff-reader-answers":
            raise ValueError("is not an answer file of the study page (format is not ctdiff-reader-answers)")
        if not isinstance(doc.get("answers"), list):
            raise ValueError("holds no list of answers")
        return AnswerFile(path, str(doc.get("study", "")), str(doc.get("reader", "")).strip(),
                          str(doc.get("exported", "")), [r for r in doc["answers"] if isinstance(r, dict)])
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(text, newline="")))  # comments may hold line breaks
        missing = [c for c in CSV_COLUMNS[:5] if rows and c not in rows[0]] if rows else ["every row"]
        if missing:
            raise ValueError(f"lacks the CSV columns {', '.join(missing)}")
        for key in ("study", "reader"):
            values = {r[key].strip() for r in rows}
            if len(values) > 1:
                raise ValueError(f"names several values of {key} ({', '.join(sorted(values))})")
        return AnswerFile(path, rows[0]["study"].strip(), rows[0]["reader"].strip(),
                          max(r.get("exported") or "" for r in rows), rows)
    raise ValueError("is neither .json nor .csv")


def _answer(row: dict) -> tuple[str, int, str] | None | str:
    """(answer, confidence, comment) of a row; None when left blank; a reason string when invalid."""
    answer = str(row.get("answer") or "").strip().lower()
    confidence = row.get("confidence")
    confidence = "" if confidence is None else str(confidence).strip()
    if not answer and not confidence:
        return None
    if answer not in ANSWERS:
        return f"answer {answer or '(none)'!r} is not real or synthetic"
    if confidence not in ("1", "2", "3", "4", "5"):
        return f"confidence {confidence or '(none)'!r} is not 1-5"
    return answer, int(confidence), str(row.get("comment") or "")


def check_file(f: AnswerFile, key: dict, problems: list[dict]) -> Reading | None:
    """The usable answers of one file checked against ``key``; problems appended (file, reader, problem).
    A file for another study gives None; unknown case ids, a case answered twice with different answers,
    invalid values and unanswered cases are reported and left out."""
    name = f.path.name

    def report(text: str) -> None:
        problems.append({"file": name, "reader": f.reader, "problem": text})

    truth = {c["case"]: c["truth"] for c in key["cases"]}
    if not f.reader:
        report("names no reader; left out")
        return None
    ids = [str(r.get("case", "")).strip() for r in f.rows]
    if f.study != key["study"]:
        known = sum(i in truth for i in ids)
        report(f"answers study {f.study or '(none)'}, not study {key['study']} of the key "
               f"({known} of {len(ids)} case ids are in the key); left out")
        return None
    unknown = sorted({i for i in ids if i not in truth})
    if unknown:
        report(f"case ids not in the key, left out: {', '.join(unknown)}")
    answers: dict[str, tuple[str, int, str]] = {}
    conflicting: set[str] = set()
    repeated: set[str] = set()
    invalid = []
    for case, row in zip(ids, f.rows):
        if case not in truth:
            continue
        value = _answer(row)
        if isinstance(value, str):
            invalid.append(f"{case} ({value})")
            conflicting.add(case)
        elif value is not None and case in answers:
            repeated.add(case)
            if answers[case][:2] != value[:2]:
                conflicting.add(case)
        elif value is not None:
            answers[case] = value
    if invalid:
        report(f"invalid answers, left out: {'; '.join(invalid)}")
    same = sorted(repeated - conflicting)
    if same:
        report(f"cases answered twice with the same answer, counted once: {', '.join(same)}")
    twice = sorted(repeated & conflicting)
    if twice:
        report(f"cases answered twice with different answers, left out: {', '.join(twice)}")
    for case in conflicting:
        answers.pop(case, None)
    unanswered = [c for c in truth if c not in answers and c not in conflicting]
    if unanswered:
        report(f"{len(unanswered)} of {len(truth)} cases not answered: {', '.join(unanswered)}")
    return Reading(f.reader, name, answers)


def collect(key: dict, paths: list[Path]) -> tuple[list[Reading], list[dict]]:
    """(one :class:`Reading` per reader, problems) from the answer files ``paths``. A reader named in several
    files (names compared without case and surrounding space) is reported; identical answers count once,
    different ones count from the file exported last (then the last file name)."""
    problems: list[dict] = []
    by_reader: dict[str, list[tuple[AnswerFile, Reading]]] = {}
    for path in sorted(Path(p) for p in paths):
        try:
            f = read_answer_file(path)
        except ValueError as err:
            problems.append({"file": path.name, "reader": "", "problem": f"{path.name} {err}; left out"})
            continue
        reading = check_file(f, key, problems)
        if reading is not None:
            by_reader.setdefault(" ".join(f.reader.split()).casefold(), []).append((f, reading))
    readings = []
    for files in by_reader.values():
        if len(files) > 1:
            names = ", ".join(f.path.name for f, _ in files)
            same = all(r.answers == files[0][1].answers for _, r in files)
            f, reading = max(files, key=lambda fr: (fr[0].exported, fr[0].path.name))
            problems.append({"file": names, "reader": f.reader, "problem":
                             f"reader {f.reader} appears in {len(files)} files ({names}): "
                             + ("the same answers, counted once" if same else
                                f"different answers; only {f.path.name} (exported last) is counted")})
        readings.append(files[0][1] if len(files) == 1 else reading)
    return sorted(readings, key=lambda r: r.reader.casefold()), problems
