"""The reader study folder: blinding proven by reading every file of it, the display orientation, the payload
format the page decodes, determinism, and refusals that name the config key or the file."""
import base64
import json
import re
import shutil
import subprocess
import zipfile
import zlib
from importlib import resources

import numpy as np
import pytest

from ctdiff.config import ReaderStudyConfig
from ctdiff.files import save_volume
from ctdiff.report.plots import view
from ctdiff.reader.study import (
    FIXED_MTIME,
    PAGE_FILES,
    WINDOWS,
    display_order,
    keystream,
    padded,
    unpadded,
    window_bytes,
    write_study,
)

HU = (-1000.0, 400.0)
N = 12
SETTINGS = ReaderStudyConfig(n_cases=6, synthetic_fraction=0.5)


def _cohort(root, rng):
    """Real and synthetic volumes that differ in everything a careless study would leak: file names, dtype
    on disk, voxel size, value range (the synthetic ones leave [0, 1]), noise and compressibility."""
    ids = [f"LIDC-IDRI-{k:04d}" for k in range(5)]
    x = np.linspace(-1, 1, N)
    smooth = np.clip(0.6 - 0.5 * (x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2), 0, 1)
    for item in ids:  # smooth, in [0, 1], 3 mm voxels
        save_volume(root / "preprocessed" / f"{item}.nii.gz", smooth.astype(np.float32), np.diag([3.0, 3.0, 3.0, 1]))
    samples = []
    for k in range(4):  # noisy, outside [0, 1], float64 on disk, 2.5 mm voxels
        path = root / "samples" / f"{k:04d}.nii.gz"
        save_volume(path, smooth + rng.normal(0, 0.3, smooth.shape), np.diag([2.5, 2.5, 2.5, 1]))
        samples.append(path)
    (root / "splits").mkdir(parents=True)
    (root / "splits" / "test.txt").write_text("\n".join(ids) + "\n")
    return ids, samples


def _write(root, samples, settings=SETTINGS, out="reader"):
    return write_study(root / "splits" / "test.txt", root / "preprocessed", samples, settings, HU,
                       root / out / "study", root / out / "study.zip", root / out / "key.json")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    ids, samples = _cohort(root, np.random.default_rng(0))
    return root, ids, samples, _write(root, samples)


def _payload(text):
    m = re.fullmatch(r'ctdiffCase\("([0-9a-f]{8})", "([A-Za-z0-9+/=]+)"\);\n', text)
    assert m, text[:80]
    return m.group(1), base64.b64decode(m.group(2))


def test_every_file_of_the_study_folder_is_blind(study):
    root, ids, samples, key = study
    folder = root / "reader" / "study"
    truth = {c["case"]: c["truth"] for c in key["cases"]}
    assert sorted(truth.values()) == ["real"] * 3 + ["synthetic"] * 3
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    names = sorted(p.relative_to(folder).as_posix() for p in files)
    assert names == sorted([*PAGE_FILES, "study.js", *(f"cases/{c}.js" for c in truth)])
    # nothing in the folder names a volume, its source, its truth or the key
    leaks = [*ids, *(p.name for p in samples), "preprocessed", "samples", "key.json", "sha256"]
    for path in files:
        text = path.read_text()
        for word in leaks:
            assert word not in text, (path, word)
    # study.js: the study, the shape, the windows and the case ids in reading order, nothing per case
    manifest = json.loads(re.fullmatch(r"window\.CTDIFF_STUDY = (.*);\n", (folder / "study.js").read_text(),
                                       flags=re.S).group(1))
    assert set(manifest) == {"study", "shape", "windows", "cases"}
    assert manifest["cases"] == [c["case"] for c in key["cases"]] and manifest["shape"] == [N, N, N]
    # case files: one template, one size, one time stamp, one mode; ids are hashes of the reading position
    cases = {p.stem: p for p in (folder / "cases").iterdir()}
    assert len({p.stat().st_size for p in cases.values()}) == 1
    assert {p.stat().st_mtime for p in folder.rglob("*")} | {folder.stat().st_mtime} == {FIXED_MTIME}
    assert len({p.stat().st_mode for p in files}) == 1
    payloads = {}
    for case, path in cases.items():
        case_id, payloads[case] = _payload(path.read_text())
        assert case_id == case
    assert len({len(p) for p in payloads.values()}) == 1
    # the compressed lengths differ (noisy synthetic volumes compress worse): only the padding hides them
    lengths = {truth[c]: int.from_bytes(p[:4], "little") for c, p in payloads.items()}
    assert lengths["synthetic"] > lengths["real"]
    # decoded: the same grey levels per window for every case; values outside [0, 1] are clipped first, so a
    # synthetic case shows no HU below -1000 or above 400 (the lung window maps -1000 HU to grey 60)
    floor = {name: window_bytes(np.zeros(1), HU, *getattr(SETTINGS, k))[0] for name, _, k in WINDOWS}
    for case, payload in payloads.items():
        raw = np.frombuffer(zlib.decompress(unpadded(payload)), np.uint8).reshape(len(WINDOWS), N, N, N)
        for w, (name, _, _) in enumerate(WINDOWS):
            assert raw[w].min() >= floor[name], (truth[case], name)
    # the key stays outside the folder, with a copy per study id
    assert (root / "reader" / "key.json").exists() and not list(folder.rglob("*key*"))
    assert json.loads((root / "reader" / "keys" / f"{key['study']}.json").read_text()) == key


def test_the_zip_holds_the_same_files_stored_with_one_date(study):
    root, _, _, key = study
    folder = root / "reader" / "study"
    with zipfile.ZipFile(root / "reader" / "study.zip") as zf:
        infos = zf.infolist()
        assert [i.filename for i in infos] == sorted(i.filename for i in infos)
        assert {i.date_time for i in infos} == {(2000, 1, 1, 0, 0, 0)}
        assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}
        assert len({i.compress_size for i in infos if "/cases/" in i.filename}) == 1
        for i in infos:
            assert zf.read(i) == (folder.parent / i.filename).read_bytes()


def _bytes(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_study_is_rebuilt_byte_for_byte_while_its_key_exists(study):
    """A rerun finds the secret in key.json, or in keys/ when key.json is gone (Snakemake deletes a rule's
    declared outputs before rerunning it): the same study, byte for byte. Without the key a new secret gives a
    new study: other case ids, another order."""
    root, _, samples, key = study
    reader = root / "reader"
    folder, zipped = _bytes(reader / "study"), (reader / "study.zip").read_bytes()
    secret = bytes.fromhex(key["secret"])
    assert len(secret) == 32 and secret not in zipped and key["secret"].encode() not in zipped
    assert _write(root, samples) == key  # key.json present
    shutil.rmtree(reader / "study")
    for name in ("study.zip", "key.json"):
        (reader / name).unlink()
    assert _write(root, samples) == key  # only keys/<study>.json left
    assert _bytes(reader / "study") == folder and (reader / "study.zip").read_bytes() == zipped
    other = _write(root, samples, out="other")  # no key: another secret
    assert other["study"] != key["study"] and other["secret"] != key["secret"]
    assert not {c["case"] for c in other["cases"]} & {c["case"] for c in key["cases"]}
    # other settings (or volumes) never reuse a secret: a reader told one study's key must not learn another's
    copy = shutil.copytree(reader / "keys", root / "third" / "keys")
    third = _write(root, samples, ReaderStudyConfig(n_cases=4, synthetic_fraction=0.5), out="third")
    assert third["secret"] != key["secret"] and len(list(copy.iterdir())) == 2


def test_display_order_is_the_radiological_view_of_ctdiff_plots():
    volume = np.random.default_rng(1).random((5, 4, 3))  # R, A, S
    zooms = np.ones(3)
    v = display_order(volume)
    assert v.shape == (3, 4, 5)
    for k in range(3):
        np.testing.assert_array_equal(v[k], view(volume, zooms, "axial", 2 - k)[0])
    for r in range(4):
        np.testing.assert_array_equal(v[:, r, :], view(volume, zooms, "coronal", 3 - r)[0])
    for c in range(5):
        np.testing.assert_array_equal(v[:, :, c], view(volume, zooms, "sagittal", 4 - c)[0])


def test_window_bytes_and_padding():
    hu = np.array([-1000.0, -600.0, 150.0, 400.0])
    grey = window_bytes((hu + 1000) / 1400, HU, -600.0, 1500.0)
    np.testing.assert_array_equal(grey, [60, 128, 255, 255])  # 255 (hu + 1350) / 1500, rounded, clipped
    assert window_bytes(np.array([-0.5, 1.5]), HU, 40.0, 400.0).tolist() == [0, 255]
    secret = bytes(32)
    payload = padded(b"abc", 10, secret, "pad:x")
    assert unpadded(payload) == b"abc" and len(payload) == 14 and payload == padded(b"abc", 10, secret, "pad:x")
    assert payload[7:] == keystream(secret, "pad:x", 7) != padded(b"abc", 10, secret, "pad:y")[7:]
    assert payload[7:] != padded(b"abc", 10, bytes(31) + b"\1", "pad:x")[7:]
    with pytest.raises(ValueError, match="exceeds"):
        padded(b"abcdef", 3, secret, "pad:x")


def test_too_many_real_cases_are_refused_naming_the_key(study, tmp_path):
    root, _, samples, _ = study
    with pytest.raises(ValueError, match=r"reader_study\.n_cases=12 .* asks for 6 real cases but the held-out "
                                         r"set holds 5"):
        _write(root, samples, ReaderStudyConfig(n_cases=12, synthetic_fraction=0.5), out="big")
    with pytest.raises(ValueError, match="asks for 5 synthetic cases but there are 4"):
        _write(root, samples, ReaderStudyConfig(n_cases=6, synthetic_fraction=0.8), out="big")
    assert not (root / "big").exists()


def test_a_volume_of_another_size_is_refused_naming_it(tmp_path):
    ids, samples = _cohort(tmp_path, np.random.default_rng(0))
    save_volume(samples[0], np.zeros((N, N, N + 2), np.float32), np.eye(4))
    settings = ReaderStudyConfig(n_cases=8, synthetic_fraction=0.5)  # every sample is drawn
    with pytest.raises(ValueError, match=r"0000\.nii\.gz.* every case must have the same size"):
        _write(tmp_path, samples, settings)
    assert not (tmp_path / "reader").exists()


def test_a_volume_holding_nan_is_refused_naming_it(tmp_path):
    ids, samples = _cohort(tmp_path, np.random.default_rng(0))
    volume = np.full((N, N, N), 0.5, np.float32)
    volume[3, 4, 5] = np.nan
    save_volume(samples[2], volume, np.eye(4))
    settings = ReaderStudyConfig(n_cases=8, synthetic_fraction=0.5)  # every sample is drawn
    with pytest.raises(ValueError, match=r"0002\.nii\.gz: 1 of 1728 voxels are NaN or infinite"):
        _write(tmp_path, samples, settings)
    assert not (tmp_path / "reader").exists()


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_page_asks_for_a_download_every_ten_answers():
    """reader.js's exportReminder, run by node: due after 10 answers since the last download, never once every
    case is answered (the page then asks for the final download anyway)."""
    source = resources.files("ctdiff.reader").joinpath("page", "reader.js").read_text()
    every = re.search(r"^const EXPORT_EVERY = (\d+);", source, flags=re.M)
    function = re.search(r"^function exportReminder\(.*?^}\n", source, flags=re.M | re.S)
    assert every and function
    cases = [(9, 50, None), (10, 50, None), (19, 50, 10), (20, 50, 10), (50, 50, 0), (35, 50, 30)]
    script = (f"const EXPORT_EVERY = {every.group(1)};\n{function.group(0)}\n"
              f"console.log(JSON.stringify({json.dumps(cases)}.map((c) => exportReminder(...c))));\n")
    out = json.loads(subprocess.run(["node", "-e", script], capture_output=True, text=True, check=True).stdout)
    assert [bool(text) for text in out] == [False, True, False, True, False, False]
    assert out[1].startswith("10 answers since your last download")
