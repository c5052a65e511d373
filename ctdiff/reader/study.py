"""The blinded reader study (visual Turing test): a folder a reader opens from disk, and its key, kept apart.

:func:`write_study` draws ``n_real`` held-out real volumes and ``n_synthetic`` synthetic ones, shuffles them and
writes:

- the study folder: ``index.html``, ``reader.js``, ``reader.css`` (the page, :mod:`ctdiff.reader` package
  data, the same for every study), ``study.js`` (the study id, volume shape, windows and the case ids in
  reading order) and ``cases/<case id>.js``, one file per case;
- ``study.zip``, the same folder as one file to send;
- the key (``key.json``: which case is which volume, and the study's secret), outside the folder, and a copy
  under ``keys/<study id>.json`` that no rerun removes, so that answers to a study sent earlier can still be
  told apart from answers to the current one.

The secret: 32 bytes from :mod:`secrets`, drawn when a study is first written and kept only in its key. The
choice of volumes, their order, the study id and the payload padding all derive from it, so nothing a reader
holds (the folder, the code, the config, any seed) determines which case is which (a public seed could be
replayed: Kerckhoffs). A rerun whose key is still there (``key.json`` or ``keys/``) and whose volumes and
settings are unchanged rebuilds the same study byte for byte; without the key, or with other volumes or
settings, a new secret gives a new study.

Blinding: every case goes through :func:`case_payload` alone. A volume is clipped to the preprocessing window
(values a sampler left outside [0, 1] would otherwise show HU no real volume has), reoriented to the display
order, mapped through each window to 8 bits and deflated; the compressed bytes are padded with random-looking
bytes (a SHAKE-256 stream keyed by the secret) to the length of the largest case, so every case file has the
same size (a compressed size would tell noisy volumes from smooth ones), and the padding can neither be told
from data in a text editor nor replayed. File names are case ids, every file gets the same modification
time, and the zip stores no compression and one date. Nothing records the source, the truth, the HU range
or the size of a volume inside the folder.

Display order of a case: ``V[k, r, c]`` with ``k`` the axial slice from superior (0) to inferior, ``r`` the
row from anterior (0) to posterior and ``c`` the column from the patient's right (0) to left, so an axial
slice is radiological convention as :func:`ctdiff.report.plots.view` draws it; the page takes coronal slices as
``V[:, r, :]`` and sagittal ones as ``V[:, :, c]``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import shutil
import struct
import zipfile
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np

from ctdiff import __version__
from ctdiff.config import ReaderStudyConfig, to_dict
from ctdiff.ingest.split import read_ids
from ctdiff.files import atomic_path, file_sha256, write_json

#: The page: identical for every study (package data under ``ctdiff/reader/page``).
PAGE_FILES = ("index.html", "reader.js", "reader.css")
#: The modification time of every file of the study folder and zip (2000-01-01 00:00 UTC): nothing in the
#: folder tells in which order the cases were written.
FIXED_MTIME = 946684800
#: Windows in the order the page offers them: (name, label, config key).
WINDOWS = (("lung", "Lung", "lung_window"), ("mediastinal", "Mediastinal", "mediastinal_window"))
#: Bytes of a study's secret.
SECRET_BYTES = 32


@dataclass(frozen=True)
class Case:
    """One case of the study: its random id, the truth, and the volume it shows (a path; ``source`` names it
    in the key, e.g. ``preprocessed/LIDC-IDRI-0001.nii.gz``)."""

    id: str
    truth: str  # "real" or "synthetic"
    path: Path
    source: str


def display_order(volume: np.ndarray) -> np.ndarray:
    """A RAS+ volume ``[R, A, S]`` as the page's ``V[k, r, c]`` (superior→inferior, anterior→posterior,
    patient's right→left): all three axes reversed, then transposed."""
    return np.ascontiguousarray(volume[::-1, ::-1, ::-1].transpose(2, 1, 0))


def window_bytes(volume01: np.ndarray, hu_window: tuple[float, float], level: float, width: float) -> np.ndarray:
    """uint8 grey levels of a [0, 1] volume (``hu_window`` scaled) in the window ``level``/``width`` (HU):
    ``round(255 * clip((HU - (level - width/2)) / width, 0, 1))``, HU = low + v (high - low), v clipped to
    [0, 1]."""
    lo, hi = hu_window
    hu = lo + np.clip(volume01.astype(np.float64), 0.0, 1.0) * (hi - lo)
    grey = np.clip((hu - (level - width / 2)) / width, 0.0, 1.0)
    return np.rint(grey * 255.0).astype(np.uint8)


def load_display(path: Path) -> np.ndarray:
    """A volume in RAS+ canonical orientation (nibabel), float32, in display order. A volume holding NaN or
    infinite voxels is refused, naming the file (they would be drawn as some grey level)."""
    img = nib.as_closest_canonical(nib.load(str(path)))
    volume = np.asarray(img.dataobj, dtype=np.float32)
    bad = volume.size - int(np.count_nonzero(np.isfinite(volume)))
    if bad:
        raise ValueError(f"{path}: {bad} of {volume.size} voxels are NaN or infinite; a reader study case must "
                         f"hold finite values only")
    return display_order(volume)


def case_payload(path: Path, settings: ReaderStudyConfig, hu_window: tuple[float, float]) -> tuple[tuple[int, ...],
                                                                                                   bytes]:
    """(display shape, deflated bytes) of one case: its windows' grey levels one after the other, each a
    C-ordered ``V[k, r, c]`` uint8 array, compressed with zlib (level 9)."""
    volume = load_display(path)
    raw = b"".join(window_bytes(volume, hu_window, *getattr(settings, key)).tobytes() for _, _, key in WINDOWS)
    return volume.shape, zlib.compress(raw, 9)


def keystream(secret: bytes, label: str, n: int) -> bytes:
    """``n`` bytes of SHAKE-256 over ``label`` and ``secret``: the same with the secret, unpredictable without
    it (unlike a seeded NumPy generator, whose output a reader can replay seed by seed)."""
    return hashlib.shake_256(f"ctdiff-reader:{label}:".encode() + secret).digest(n)


def padded(compressed: bytes, length: int, secret: bytes, label: str) -> bytes:
    """``compressed`` as a payload of exactly ``4 + length`` bytes: its length (uint32, little-endian), the
    bytes, then padding the page ignores, :func:`keystream` of ``secret`` and ``label``."""
    if len(compressed) > length:
        raise ValueError(f"payload of {len(compressed)} bytes exceeds the padded length {length}")
    fill = keystream(secret, label, length - len(compressed))
    return struct.pack("<I", len(compressed)) + compressed + fill


def unpadded(payload: bytes) -> bytes:
    """The compressed bytes of a :func:`padded` payload (the page does the same in JavaScript)."""
    (n,) = struct.unpack("<I", payload[:4])
    return payload[4:4 + n]


def draw(test_ids: list[str], volumes: Path, synthetic: list[Path], settings: ReaderStudyConfig,
         secret: bytes) -> list[tuple[str, Path]]:
    """(truth, path) of every case in reading order: ``n_real`` of the held-out ``test_ids``
    (``volumes/<id>.nii.gz``) and ``n_synthetic`` of ``synthetic``, drawn without replacement and shuffled by a
    generator seeded from ``secret`` alone.

    Raises ``ValueError`` naming ``reader_study.n_cases`` / ``synthetic_fraction`` when the held-out set or
    the sample set holds too few volumes."""
    n_real, n_synthetic = settings.counts()
    if n_real > len(test_ids):
        raise ValueError(f"reader_study.n_cases={settings.n_cases} with reader_study.synthetic_fraction="
                         f"{settings.synthetic_fraction} asks for {n_real} real cases but the held-out set holds "
                         f"{len(test_ids)} volumes; lower reader_study.n_cases or raise synthetic_fraction")
    if n_synthetic > len(synthetic):
        raise ValueError(f"reader_study.n_cases={settings.n_cases} with reader_study.synthetic_fraction="
                         f"{settings.synthetic_fraction} asks for {n_synthetic} synthetic cases but there are "
                         f"{len(synthetic)} synthetic volumes")
    rng = np.random.default_rng(int.from_bytes(keystream(secret, "draw", 32), "big"))
    real = [sorted(test_ids)[i] for i in sorted(rng.choice(len(test_ids), n_real, replace=False))]
    fake = [sorted(synthetic)[i] for i in sorted(rng.choice(len(synthetic), n_synthetic, replace=False))]
    chosen = [("real", Path(volumes) / f"{i}.nii.gz") for i in real] + [("synthetic", Path(p)) for p in fake]
    return [chosen[i] for i in rng.permutation(len(chosen))]


def choose_cases(test_ids: list[str], volumes: Path, synthetic: list[Path], settings: ReaderStudyConfig,
                 results: Path, secret: bytes) -> tuple[str, list[Case]]:
    """(study id, cases in reading order) of :func:`draw`. The study id is an HMAC under ``secret`` of the
    settings and the chosen files' bytes, so the same secret and volumes give the same study (``answers`` is
    left out) and another secret another study; case ids hash the study id and the reading position, so they
    say nothing of the truth."""
    chosen = draw(test_ids, volumes, synthetic, settings, secret)
    study_settings = {k: v for k, v in to_dict(settings).items() if k != "answers"}  # where answers go changes nothing
    digest = hmac.new(secret, json.dumps(study_settings, sort_keys=True).encode(), hashlib.sha256)
    for truth, path in chosen:
        digest.update(f"{truth}:{file_sha256(path)}\n".encode())
    study = digest.hexdigest()[:12]
    cases, seen = [], set()
    for k, (truth, path) in enumerate(chosen):
        case_id = hashlib.sha256(f"{study}:{k}".encode()).hexdigest()[:8]
        if case_id in seen:  # 2^-32 per pair; never silently merge two cases
            raise ValueError(f"case id {case_id} drawn twice in study {study}")
        seen.add(case_id)
        cases.append(Case(case_id, truth, path, _source(path, results)))
    return study, cases


def kept_secret(test_ids: list[str], volumes: Path, synthetic: list[Path], settings: ReaderStudyConfig,
                results: Path, out_key: Path) -> bytes | None:
    """The secret of a key beside ``out_key`` (``out_key`` itself, then ``keys/*.json``) that these volumes and
    settings rebuild: its draw names the key's cases and its study id is the key's. ``None`` if there is none
    (no key, a key without a secret, or other volumes or settings: a secret is never reused for another
    study, since a reader told one study's key after it would then know the other's order)."""
    for path in [Path(out_key), *sorted((Path(out_key).parent / "keys").glob("*.json"))]:
        try:
            key = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        if not isinstance(key, dict) or not isinstance(key.get("secret"), str):
            continue
        secret = bytes.fromhex(key["secret"])
        chosen = draw(test_ids, volumes, synthetic, settings, secret)
        if [(t, _source(p, results)) for t, p in chosen] != [(c["truth"], c["source"]) for c in key["cases"]]:
            continue  # cheap test first: hashing the volumes only for a key that names the same files
        if choose_cases(test_ids, volumes, synthetic, settings, results, secret)[0] == key["study"]:
            return secret
    return None


def _source(path: Path, results: Path) -> str:
    """``path`` relative to the results folder where it lies inside it, else as given."""
    try:
        return Path(os.path.relpath(Path(path).resolve(), Path(results).resolve())).as_posix()
    except ValueError:
        return str(path)


def study_manifest(study: str, shape: tuple[int, ...], settings: ReaderStudyConfig, case_ids: list[str]) -> str:
    """``study.js``: what the page needs and nothing that tells cases apart."""
    manifest = {
        "study": study,
        "shape": list(shape),
        "windows": [{"name": name, "label": label, "level": getattr(settings, key)[0],
                     "width": getattr(settings, key)[1]} for name, label, key in WINDOWS],
        "cases": case_ids,
    }
    return "window.CTDIFF_STUDY = " + json.dumps(manifest, indent=1) + ";\n"


def case_script(case_id: str, payload: bytes) -> str:
    """``cases/<id>.js``: hands the base64 payload to the page (script tags load from file://, fetch does
    not)."""
    return f'ctdiffCase("{case_id}", "{base64.b64encode(payload).decode()}");\n'


def write_study(test_ids_txt: Path, volumes: Path, synthetic: list[Path], settings: ReaderStudyConfig,
                hu_window: tuple[float, float], out_dir: Path, out_zip: Path, out_key: Path) -> dict:
    """Write the study folder ``out_dir``, ``out_zip`` and the key ``out_key`` (plus ``keys/<study>.json``
    beside it); returns the key. The secret is :func:`kept_secret`'s where a key beside ``out_key`` makes
    this study, else a new one. See the module docstring for what is blinded and how. Volumes of another
    shape than the first case's, or holding NaN, are refused, naming the file."""
    results = Path(out_key).parent.parent
    test_ids, synthetic = read_ids(test_ids_txt), [Path(p) for p in synthetic]
    secret = kept_secret(test_ids, Path(volumes), synthetic, settings, results, Path(out_key))
    if secret is None:
        secret = secrets.token_bytes(SECRET_BYTES)
    study, cases = choose_cases(test_ids, Path(volumes), synthetic, settings, results, secret)
    shapes, compressed = {}, {}
    for case in cases:
        shapes[case.path], compressed[case.id] = case_payload(case.path, settings, hu_window)
    first = cases[0].path
    for path, case_shape in shapes.items():
        if case_shape != shapes[first]:
            raise ValueError(f"{path}: volume of shape {case_shape} (display order) but {first} has "
                             f"{shapes[first]}; every case must have the same size")
    shape = shapes[first]
    length = max(len(c) for c in compressed.values())
    files = {name: resources.files("ctdiff.reader").joinpath("page", name).read_bytes() for name in PAGE_FILES}
    files["study.js"] = study_manifest(study, shape, settings, [c.id for c in cases]).encode()
    for case in cases:  # reading order, which is random
        payload = padded(compressed[case.id], length, secret, f"pad:{case.id}")
        files[f"cases/{case.id}.js"] = case_script(case.id, payload).encode()
    _write_folder(Path(out_dir), files)
    with atomic_path(Path(out_zip)) as tmp:
        _write_zip(tmp, files, Path(out_dir).name)
    key = {
        "format": "ctdiff-reader-key",
        "study": study,
        "secret": secret.hex(),  # with it the study can be rebuilt; without it no reader can tell the cases apart
        "ctdiff": __version__,
        "settings": to_dict(settings),
        "hu_window": list(hu_window),
        "shape": list(shape),
        "cases": [{"case": c.id, "position": k + 1, "truth": c.truth, "source": c.source,
                   "sha256": file_sha256(c.path)} for k, c in enumerate(cases)],
    }
    write_json(Path(out_key), key)
    write_json(Path(out_key).parent / "keys" / f"{study}.json", key)
    return key


def _write_folder(out_dir: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` into a fresh sibling folder, give every file and folder :data:`FIXED_MTIME`, then
    move it in place of ``out_dir``."""
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for name, data in files.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        for path in sorted(tmp.rglob("*"), reverse=True) + [tmp]:
            os.utime(path, (FIXED_MTIME, FIXED_MTIME))
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_zip(path: Path, files: dict[str, bytes], folder: str) -> None:
    """The study folder as a zip: names sorted, stored uncompressed (deflating would give the case files
    different sizes again), one date for every entry, permissions rw-r--r--."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(f"{folder}/{name}", date_time=(2000, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, files[name])
