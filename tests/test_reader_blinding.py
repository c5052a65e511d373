"""The reader study against an adversary who holds the study folder and the code (Kerckhoffs): replaying every
seed from 0 to 100,000 through the generators the study used to draw from, does the folder give the key away?

The attack, in two stages:

1. Padding. Until the key held a secret, each case's payload was padded from
   ``numpy.random.default_rng([seed, int(study id, 16)])``, with the study id in ``study.js``. The first 16
   padding bytes of a case (the payload's first four bytes give where the padding starts) are compared with
   what every seed's generator gives there: PCG64 words as raw bytes, after the words the cases before it used.
   A match names the seed; this stage needs no hypothesis about the counts.
2. Order. With ``default_rng(seed)`` the old draw was ``choice(pool_real, n_real)``,
   ``choice(pool_synthetic, n_synthetic)``, then ``permutation(n_cases)``, so position ``k`` is real when
   ``permutation[k] < n_real``. The adversary is given the true counts and pool sizes: an adversary who
   enumerates hypotheses can do no better than one told the right one.

A control builds a study the old way, with a seed that is not the default, and the attack recovers its key.
Against studies written now no seed reproduces the padding, and the labelling of every seed scores like a
random guess: its mean accuracy is the hypergeometric mean, and the best of 100,001 is no better than the best
of as many random guesses (tail probability from the hypergeometric distribution).
"""
import base64
import hashlib
import json
import re
import struct

import numpy as np
import pytest
from numpy.random import PCG64, SeedSequence
from scipy.stats import hypergeom

from ctdiff.config import ReaderStudyConfig, to_dict
from ctdiff.files import file_sha256, save_volume
from ctdiff.reader.study import case_payload, case_script, study_manifest, write_study

HU = (-1000.0, 400.0)
N = 6  # voxels per side: payloads of a few hundred bytes
SEEDS = 100_001  # 0 … 100,000
PAD_BYTES = 16


def _cohort(root, n_test, n_samples):
    """``n_test`` held-out volumes (smooth, each a little different) and ``n_samples`` noisy samples: payloads
    of different lengths, so every case but the largest is padded."""
    rng = np.random.default_rng(12345)
    x = np.linspace(-1, 1, N)
    r2 = x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2
    ids = [f"LIDC-IDRI-{k:04d}" for k in range(n_test)]
    for k, item in enumerate(ids):
        save_volume(root / "preprocessed" / f"{item}.nii.gz",
                    np.clip(0.6 - 0.5 * r2 + 0.01 * k, 0, 1).astype(np.float32), np.eye(4))
    samples = []
    for k in range(n_samples):
        path = root / "samples" / f"{k:04d}.nii.gz"
        save_volume(path, np.clip(0.6 - 0.5 * r2 + rng.normal(0, 0.2, r2.shape), 0, 1).astype(np.float32),
                    np.eye(4))
        samples.append(path)
    (root / "splits").mkdir(parents=True)
    (root / "splits" / "test.txt").write_text("\n".join(ids) + "\n")
    return ids, samples


def _legacy_study(root, ids, samples, settings, seed):
    """A study folder written the way it was before the secret (``study.js`` and ``cases/``: all the attack
    reads); returns the truth, True = real, in reading order."""
    n_real, n_synthetic = settings.counts()
    rng = np.random.default_rng(seed)
    real = [sorted(ids)[i] for i in sorted(rng.choice(len(ids), n_real, replace=False))]
    fake = [sorted(samples)[i] for i in sorted(rng.choice(len(samples), n_synthetic, replace=False))]
    chosen = [("real", root / "preprocessed" / f"{i}.nii.gz") for i in real] + [("synthetic", p) for p in fake]
    chosen = [chosen[i] for i in rng.permutation(len(chosen))]
    digest = hashlib.sha256(json.dumps({**to_dict(settings), "seed": seed}, sort_keys=True).encode())
    for truth, path in chosen:
        digest.update(f"{truth}:{file_sha256(path)}\n".encode())
    study = digest.hexdigest()[:12]
    case_ids = [hashlib.sha256(f"{study}:{k}".encode()).hexdigest()[:8] for k in range(len(chosen))]
    compressed = [case_payload(path, settings, HU)[1] for _, path in chosen]
    length = max(map(len, compressed))
    pad = np.random.default_rng([seed, int(study, 16)])
    folder = root / "legacy" / "study"
    (folder / "cases").mkdir(parents=True)
    (folder / "study.js").write_text(study_manifest(study, (N, N, N), settings, case_ids))
    for case_id, data in zip(case_ids, compressed):
        fill = pad.integers(0, 256, size=length - len(data), dtype=np.uint8).tobytes()
        (folder / "cases" / f"{case_id}.js").write_text(
            case_script(case_id, struct.pack("<I", len(data)) + data + fill))
    return folder, np.array([truth == "real" for truth, _ in chosen])


def _read_folder(folder):
    """(study id, payloads in reading order): what a reader holds."""
    manifest = json.loads(re.fullmatch(r"window\.CTDIFF_STUDY = (.*);\n", (folder / "study.js").read_text(),
                                       flags=re.S).group(1))
    payloads = []
    for case_id in manifest["cases"]:
        text = (folder / "cases" / f"{case_id}.js").read_text()
        payloads.append(base64.b64decode(re.fullmatch(r'ctdiffCase\("\w+", "(.*)"\);\n', text).group(1)))
    return manifest["study"], payloads


def _padding_target(payloads):
    """(32-bit words used before it, its first 16 bytes) of the first case padded by at least 16 bytes.
    ``Generator.integers(0, 256, m, uint8)`` takes ``ceil(m / 4)`` 32-bit words, each PCG64 output giving two
    (low half first), and uses their bytes low byte first."""
    words = 0
    for payload in payloads:
        (n,) = struct.unpack("<I", payload[:4])
        fill = payload[4 + n:]
        if len(fill) >= PAD_BYTES:
            return words, fill[:PAD_BYTES]
        words += -(-len(fill) // 4)
    raise AssertionError("no case is padded by 16 bytes")


def replay_padding(folder, seeds=range(SEEDS)):
    """Stage 1: every seed whose padding generator gives the padding in the folder."""
    study, payloads = _read_folder(folder)
    offset, target = _padding_target(payloads)
    raws = (offset + PAD_BYTES // 4 + 1) // 2 + 1
    found = []
    for seed in seeds:
        words = PCG64(SeedSequence([seed, int(study, 16)])).random_raw(raws).astype("<u8").view("<u4")
        if words[offset:offset + PAD_BYTES // 4].tobytes() == target:
            found.append(seed)
    return found


def replay_order(seed, pool_real, n_real, pool_synthetic, n_synthetic):
    """Stage 2: the labelling, True = real, in reading order that ``seed`` gave the old draw."""
    rng = np.random.default_rng(seed)
    rng.choice(pool_real, n_real, replace=False)
    rng.choice(pool_synthetic, n_synthetic, replace=False)
    return rng.permutation(n_real + n_synthetic) < n_real


def test_the_replay_matches_numpy_integers():
    """The fast stage-1 replay gives the bytes ``Generator.integers`` gave, after any padding lengths."""
    for seed, lengths in [(0, [16]), (7, [3, 0, 5, 16]), (99, [1, 2, 3, 4, 5, 20])]:
        rng = np.random.default_rng([seed, 0xABCDEF])
        fills = [rng.integers(0, 256, size=m, dtype=np.uint8).tobytes() for m in lengths]
        payloads = [struct.pack("<I", 0) + fill for fill in fills]
        offset, target = _padding_target(payloads)
        words = PCG64(SeedSequence([seed, 0xABCDEF])).random_raw(32).astype("<u8").view("<u4")
        assert words[offset:offset + 4].tobytes() == target == fills[-1][:16]


def test_the_attack_recovers_the_key_of_a_study_drawn_from_a_seed(tmp_path):
    """The control: a 30-case study built the old way from seed 4,321 (not the default) gives its key away."""
    ids, samples = _cohort(tmp_path, 18, 20)
    settings = ReaderStudyConfig(n_cases=30, synthetic_fraction=0.5)
    folder, truth = _legacy_study(tmp_path, ids, samples, settings, seed=4321)
    found = replay_padding(folder, range(5000))
    assert found == [4321]
    guess = replay_order(found[0], len(ids), 15, len(samples), 15)
    assert (guess == truth).mean() == 1.0


@pytest.mark.slow  # replays 100,001 seeds: half a minute
@pytest.mark.parametrize("n_cases, n_test, n_samples", [(30, 18, 20), (200, 110, 120)])
def test_the_attack_is_at_chance_against_the_study(tmp_path, n_cases, n_test, n_samples):
    ids, samples = _cohort(tmp_path, n_test, n_samples)
    settings = ReaderStudyConfig(n_cases=n_cases, synthetic_fraction=0.5)
    key = write_study(tmp_path / "splits" / "test.txt", tmp_path / "preprocessed", samples, settings, HU,
                      tmp_path / "reader" / "study", tmp_path / "reader" / "study.zip",
                      tmp_path / "reader" / "key.json")
    truth = np.array([c["truth"] == "real" for c in key["cases"]])
    n_real, n_synthetic = settings.counts()
    assert replay_padding(tmp_path / "reader" / "study") == []  # no seed gives the padding
    # no padding to pin a seed: every seed's order, with the true counts and pools, against the truth
    correct = np.array([(replay_order(seed, n_test, n_real, n_samples, n_synthetic) == truth).sum()
                        for seed in range(SEEDS)])
    # a guess with n_real "real" labels gets K of the real cases right, K ~ hypergeometric(n, n_real, n_real),
    # and n_synthetic - n_real + K of the synthetic ones: correct = 2K + n_synthetic - n_real
    k = hypergeom(n_cases, n_real, n_real)
    mean, sd = 2 * k.mean() + n_synthetic - n_real, 2 * k.std()
    assert abs(correct.mean() - mean) < 6 * sd / np.sqrt(SEEDS), (correct.mean(), mean)
    best = correct.max()
    p_best = -np.expm1(SEEDS * np.log1p(-k.sf((best - n_synthetic + n_real) // 2 - 1)))  # P(max >= best)
    assert p_best > 1e-6, (best, p_best)
    assert best < n_cases  # no seed gives the key
