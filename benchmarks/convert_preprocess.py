"""Time discover + convert + preprocess on one LIDC-sized scan (512 x 512 x 300) and report peak memory.

    python benchmarks/convert_preprocess.py [--workdir DIR] [--slices 300] [--size 128] [--spacing 3.0]

The scan is the phantom's patient written with ``np.random.default_rng(0)`` and ``n_slices`` fixed. Writing
it is not timed. The three stages run in a fresh child process, so its peak resident memory
(``ru_maxrss``) belongs to them alone. Printed: wall and CPU seconds per stage, peak memory, and the ratio
of CPU seconds to the target of 10 s per scan per core (< 1 meets it).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_CPU_S_PER_SCAN = 10.0
PATIENT = "BENCH-0002"  # numbers 2, 3, 6, ... get no distractor series


def _stages(root: str, out: str, size: int, spacing: float, queue) -> None:
    """Child process: run and time the three stages; put ``{stage: (wall_s, cpu_s)}`` on ``queue``."""
    from ctdiff.data.convert import VOLUME_NAME, convert_or_reject
    from ctdiff.data.discover import discover
    from ctdiff.data.preprocess import preprocess

    root_p, out_p, times = Path(root), Path(out), {}

    def timed(name, fn):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        times[name] = (time.perf_counter() - wall, time.process_time() - cpu)
        return result

    series = out_p / "series.json"
    items = timed("discover", lambda: discover(root_p, out_p / "inventory.tsv", series))
    row = timed("convert", lambda: convert_or_reject(root_p, series, items[0], out_p / "nifti", out_p / "qc.tsv"))
    if row["decision"] != "converted":
        raise RuntimeError(f"benchmark scan was rejected: {row['reason']}")
    timed("preprocess", lambda: preprocess(out_p / "nifti" / VOLUME_NAME, out_p / "pre.nii.gz",
                                           size=size, spacing_mm=spacing))
    times["shape"] = row["shape"]
    queue.put(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="keeps the DICOM series between runs")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--spacing", type=float, default=3.0)
    args = parser.parse_args()

    from ctdiff.data.phantom import write_patient

    work = args.workdir or Path(tempfile.mkdtemp(prefix="ctdiff-bench-"))
    root = work / f"dicom-{args.matrix}x{args.slices}"
    if not root.is_dir():
        start = time.perf_counter()
        write_patient(root, PATIENT, np.random.default_rng(0), matrix=args.matrix, n_slices=args.slices)
        print(f"wrote {args.slices} slices of {args.matrix}x{args.matrix} in {time.perf_counter() - start:.1f} s")
    out = work / "out"
    out.mkdir(parents=True, exist_ok=True)

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_stages, args=(str(root), str(out), args.size, args.spacing, queue))
    child.start()
    times = queue.get()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"benchmark child failed with exit code {child.exitcode}")
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux

    shape = times.pop("shape")
    wall = sum(w for w, _ in times.values())
    cpu = sum(c for _, c in times.values())
    for stage, (w, c) in times.items():
        print(f"{stage:<11} wall {w:6.2f} s   cpu {c:6.2f} s")
    print(f"{'total':<11} wall {wall:6.2f} s   cpu {cpu:6.2f} s")
    print(f"volume {shape} -> {args.size}^3 at {args.spacing} mm; peak memory {peak_mib:.0f} MiB")
    print(f"CPU seconds / target ({TARGET_CPU_S_PER_SCAN:.0f} s per scan per core): {cpu / TARGET_CPU_S_PER_SCAN:.2f}")
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores", "wall_s": round(wall, 2),
                      "cpu_s": round(cpu, 2), "peak_mib": round(peak_mib),
                      "ratio_to_target": round(cpu / TARGET_CPU_S_PER_SCAN, 2)}))


if __name__ == "__main__":
    main()
