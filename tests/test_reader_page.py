"""The reader study page in a real browser (Debian's headless Chromium through the DevTools protocol), used as a
reader would: opened from disk, stacks scrolled with the wheel and the keys, both windows, every case answered,
the page reloaded midway with the answers still there, the answers downloaded as JSON and CSV; then the analysis
runs on the downloads. The pixels the page draws are compared with the slices ctdiff.report.plots draws in
radiological convention, on a volume whose three sides differ so that no two axes can be confused."""
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from chromium import CHROMIUM, Chromium
from ctdiff.config import ReaderStudyConfig
from ctdiff.files import save_volume
from ctdiff.report.plots import canonical, view
from ctdiff.reader.analysis import write_analysis
from ctdiff.reader.study import window_bytes, write_study

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")]

SHAPE = (20, 16, 12)  # R, A, S voxels
HU = (-1000.0, 400.0)
SETTINGS = ReaderStudyConfig(n_cases=6, synthetic_fraction=0.34)
COMMENT = 'soft tissue, "painted"\nedges too sharp'  # a comma, quotes and a line break survive the CSV
PLAN = [("synthetic", 4), ("real", 2), ("real", 5), ("synthetic", 1), ("real", 3), ("synthetic", 5)]


def _volume(seed: int) -> np.ndarray:
    """A volume whose every voxel differs from its neighbours along each axis: body-like ellipse plus a
    position code, so a transposed or flipped slice cannot match."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    code = ((x * 7 + y * 13 + z * 29 + seed * 5) % 61) / 60.0
    body = ((x - 10) / 9.0) ** 2 + ((y - 8) / 7.0) ** 2 < 1
    return np.where(body, 0.55 + 0.4 * code, 0.4 * code).astype(np.float32)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("reader")
    ids = [f"LIDC-{k}" for k in range(4)]
    for k, item in enumerate(ids):
        save_volume(root / "preprocessed" / f"{item}.nii.gz", _volume(k), np.diag([16.0, 16.0, 16.0, 1.0]))
    samples = [root / "samples" / f"{k:04d}.nii.gz" for k in range(3)]
    for k, path in enumerate(samples):
        save_volume(path, _volume(10 + k), np.diag([16.0, 16.0, 16.0, 1.0]))
    (root / "splits").mkdir()
    (root / "splits" / "test.txt").write_text("\n".join(ids) + "\n")
    key = write_study(root / "splits" / "test.txt", root / "preprocessed", samples, SETTINGS, HU,
                      root / "reader" / "study", root / "reader" / "study.zip", root / "reader" / "key.json")
    return root, key


def expected(path: Path, plane: str, index: int, window: tuple[float, float]) -> np.ndarray:
    """The slice at the page's ``index`` (axial from superior, coronal from anterior, sagittal from the right),
    as ctdiff.report.plots.view draws it, through ``window``."""
    volume, zooms = canonical(path)
    axis = {"axial": 2, "coronal": 1, "sagittal": 0}[plane]
    image, _ = view(volume, zooms, plane, volume.shape[axis] - 1 - index)
    return window_bytes(image, HU, *window)


def canvas(b: Chromium, plane: str) -> np.ndarray:
    data = b.evaluate(f"""(() => {{ const c = document.querySelector('.view[data-plane="{plane}"] canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height);
        return [c.width, c.height, Array.from(d.data.filter((v, i) => i % 4 === 0))]; }})()""")
    w, h, grey = data
    return np.array(grey, dtype=np.uint8).reshape(h, w)


def slice_text(b: Chromium, plane: str) -> str:
    return b.evaluate(f"""document.querySelector('.view[data-plane="{plane}"] .slice').textContent""")


def wait_drawn(b: Chromium, position: int) -> None:
    b.wait_for(f"document.querySelector('#loading').hidden && "
               f"document.querySelector('#case-title').textContent === 'Case {position + 1} of 6' && "
               "document.querySelector('.view .slice').textContent !== ''")


def answer(b: Chromium, truth: str, confidence: int) -> None:
    b.press("r" if truth == "real" else "s")
    b.press(str(confidence))
    b.press("n")


def test_a_reader_reads_answers_reloads_and_exports(study, tmp_path):
    root, key = study
    cases = key["cases"]
    source = {c["position"] - 1: root / c["source"] for c in cases}
    lung, mediastinal = SETTINGS.lung_window, SETTINGS.mediastinal_window
    downloads = tmp_path / "downloads"
    b = Chromium(tmp_path / "profile", downloads, (1920, 1080))
    try:
        b.open((root / "reader" / "study" / "index.html").as_uri())
        assert b.evaluate("document.querySelector('#warning').hidden")
        assert not b.evaluate("document.querySelector('#start').hidden")
        b.click("#reader-name")
        b.type_text("Dr. Ada Reader")
        b.press("Enter")
        wait_drawn(b, 0)
        # every plane starts in the middle and shows the slice ctdiff.report.plots draws, lung window first
        assert [slice_text(b, p) for p in ("axial", "coronal", "sagittal")] == ["7 / 12", "9 / 16", "11 / 20"]
        for plane, index in (("axial", 6), ("coronal", 8), ("sagittal", 10)):
            np.testing.assert_array_equal(canvas(b, plane), expected(source[0], plane, index, lung), plane)
        # wheel and keys scroll the stack under the mouse / the active one; the window switches
        for _ in range(3):
            b.wheel('.view[data-plane="axial"] canvas', 100)
        assert slice_text(b, "axial") == "10 / 12"
        b.press("ArrowUp")
        assert slice_text(b, "axial") == "9 / 12"
        np.testing.assert_array_equal(canvas(b, "axial"), expected(source[0], "axial", 8, lung))
        b.press("PageDown")
        assert slice_text(b, "axial") == "12 / 12"  # clamped at the last slice
        b.press("PageUp")
        b.press("v")  # the coronal stack is now the active one
        b.press("ArrowDown")
        b.press("ArrowDown")
        assert slice_text(b, "coronal") == "11 / 16" and slice_text(b, "axial") == "2 / 12"
        b.press("w")
        np.testing.assert_array_equal(canvas(b, "coronal"), expected(source[0], "coronal", 10, mediastinal))
        np.testing.assert_array_equal(canvas(b, "axial"), expected(source[0], "axial", 1, mediastinal))
        b.wheel('.view[data-plane="sagittal"] canvas', -100)
        assert slice_text(b, "sagittal") == "10 / 20"
        # a comment (the keys typed into it answer nothing), then the first three answers
        b.click("#comment")
        b.type_text(COMMENT[:-1])
        b.press(COMMENT[-1])  # "p" types into the comment; it does not go to the previous case
        b.press("Escape")
        for position in range(3):
            wait_drawn(b, position)
            answer(b, *PLAN[position])
        wait_drawn(b, 3)
        assert b.evaluate("document.querySelector('#progress-text').textContent") == "3 of 6 answered"
        shots = Path(os.environ.get("CTDIFF_SHOTS", tmp_path))
        shots.mkdir(parents=True, exist_ok=True)
        b.screenshot(shots / "reader-1920x1080.png")
        b.resize(1366, 768)
        b.evaluate("window.dispatchEvent(new Event('resize'))")
        b.screenshot(shots / "reader-1366x768.png")

        b.reload()  # the tab is closed and opened again: name, answers and position are kept
        wait_drawn(b, 3)
        assert b.evaluate("document.querySelector('#progress-text').textContent") == "3 of 6 answered"
        assert b.evaluate("document.querySelector('#reader-label').textContent") == "Reader: Dr. Ada Reader"
        assert b.evaluate("document.querySelectorAll('#case-list button.answered').length") == 3
        b.click("#case-list button:first-child")
        wait_drawn(b, 0)
        assert b.evaluate("document.querySelector('#comment').value") == COMMENT
        assert b.evaluate("document.querySelector('#answer button.selected').dataset.answer") == PLAN[0][0]
        b.click("#case-list button:nth-child(4)")
        for position in range(3, 6):
            wait_drawn(b, position)
            answer(b, *PLAN[position])
        assert "All cases answered" in b.wait_for("document.querySelector('#status').textContent")
        b.click("#export-json")
        b.click("#export-csv")
        deadline = time.time() + 30
        while len([p for p in downloads.glob("answers-*") if not p.name.endswith(".crdownload")]) < 2:
            assert time.time() < deadline, list(downloads.iterdir())
            time.sleep(0.1)
    finally:
        b.close()

    files = sorted(downloads.glob("answers-*"))
    assert [p.name for p in files] == [f"answers-{key['study']}-Dr-Ada-Reader.{ext}" for ext in ("csv", "json")]
    exported = json.loads(files[1].read_text())
    assert exported["reader"] == "Dr. Ada Reader" and exported["study"] == key["study"]
    assert [(a["answer"], a["confidence"]) for a in exported["answers"]] == PLAN
    assert exported["answers"][0]["seconds"] > 0

    answers = tmp_path / "answers"
    answers.mkdir()
    for p in files:
        shutil.copy(p, answers / p.name)
    result = write_analysis(root / "reader" / "key.json", answers, sorted(answers.iterdir()), tmp_path / "a.json",
                            tmp_path / "cases.tsv", tmp_path / "readers.tsv")
    truth = [c["truth"] for c in cases]
    right = sum(t == a for t, (a, _) in zip(truth, PLAN))
    (reader,) = result["readers"]
    assert reader["accuracy"]["k"] == right and reader["accuracy"]["n"] == 6
    assert [p["problem"] for p in result["problems"]] == [
        "reader Dr. Ada Reader appears in 2 files (" + ", ".join(p.name for p in files) + "): the same answers, "
        "counted once"]
    assert result["comments"][0]["comment"] == COMMENT
