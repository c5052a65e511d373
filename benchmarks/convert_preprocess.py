"""Time discover + convert + preprocess on one LIDC-sized scan (512 x 512 x 300) and report peak memory.

    python benchmarks/convert_preprocess.py [--workdir DIR] [--slices 300] [--size 128] [--spacing 3.0]

The scan is the phantom's patient written with ``np.random.default_rng(0)`` and ``n_slices`` fixed. Writing
it is not timed. Each stage runs in its own fresh child process, as a workflow job does, so its peak
resident memory (``VmHWM``: interpreter, imports and work) is the job's. (Not ``ru_maxrss``: on Linux a
child's starts at its parent's peak, which exec does not reset.) Printed: wall and CPU seconds
(the stage's call, imports excluded) and peak memory per stage, and the ratio of CPU seconds to the target
of 10 s per scan per core (< 1 meets it). The memory that ``ctdiff.plan.ingest_mem_mb`` declares for the
scan's convert and preprocess jobs is printed beside their peaks.
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


def _stage(stage: str, root: str, out: str, size: int, spacing: float, queue) -> None:
    """Child process: import, run and time one stage; put ``(wall_s, cpu_s, peak_mib, result)`` on ``queue``."""
    root_p, out_p = Path(root), Path(out)
    series = out_p / "series.json"
    if stage == "discover":
        from ctdiff.ingest.discover import discover

        def run():
            return discover(root_p, out_p / "inventory.tsv", series)
    elif stage == "convert":
        from ctdiff.ingest.convert import convert_or_reject

        def run():
            return convert_or_reject(root_p, series, PATIENT, out_p / "nifti", out_p / "qc.tsv")
    else:
        from ctdiff.ingest.convert import VOLUME_NAME
        from ctdiff.ingest.preprocess import preprocess

        def run():
            return preprocess(out_p / "nifti" / VOLUME_NAME, out_p / "pre.nii.gz", size=size, spacing_mm=spacing)

    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    queue.put((wall, cpu, _peak_mib(), result))


def _peak_mib() -> float:
    """This process's peak resident memory (MiB): ``VmHWM``, which starts afresh at exec, unlike
    ``ru_maxrss``, which a child inherits from its parent; ``ru_maxrss`` where there is no /proc."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024  # kB
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="keeps the DICOM series between runs")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--spacing", type=float, default=3.0)
    args = parser.parse_args()

    from ctdiff.phantom import write_patient

    work = args.workdir or Path(tempfile.mkdtemp(prefix="ctdiff-bench-"))
    root = work / f"dicom-{args.matrix}x{args.slices}"
    if not root.is_dir():
        start = time.perf_counter()
        write_patient(root, PATIENT, np.random.default_rng(0), matrix=args.matrix, n_slices=args.slices)
        print(f"wrote {args.slices} slices of {args.matrix}x{args.matrix} in {time.perf_counter() - start:.1f} s")
    out = work / "out"
    out.mkdir(parents=True, exist_ok=True)

    from ctdiff.plan import ingest_mem_mb

    ctx = multiprocessing.get_context("spawn")
    stages, load = {}, os.getloadavg()[0]
    for stage in ("discover", "convert", "preprocess"):
        queue = ctx.Queue()
        child = ctx.Process(target=_stage, args=(stage, str(root), str(out), args.size, args.spacing, queue))
        child.start()
        stages[stage] = queue.get()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"benchmark child ({stage}) failed with exit code {child.exitcode}")
    row = stages["convert"][3]
    if row["decision"] != "converted":
        raise SystemExit(f"benchmark scan was rejected: {row['reason']}")

    declared = {"convert": ingest_mem_mb("convert", out / "series.json", PATIENT),
                "preprocess": ingest_mem_mb("preprocess", out / "series.json", PATIENT, args.size)}
    wall = sum(w for w, *_ in stages.values())
    cpu = sum(c for _, c, *_ in stages.values())
    for stage, (w, c, peak, _) in stages.items():
        mem = f"   declared {declared[stage]} MB" if stage in declared else ""
        print(f"{stage:<11} wall {w:6.2f} s   cpu {c:6.2f} s   peak {peak:6.0f} MiB ({peak * 1.048576:.0f} MB){mem}")
    print(f"{'total':<11} wall {wall:6.2f} s   cpu {cpu:6.2f} s")
    print(f"volume {row['shape']} -> {args.size}^3 at {args.spacing} mm")
    print(f"CPU seconds / target ({TARGET_CPU_S_PER_SCAN:.0f} s per scan per core): {cpu / TARGET_CPU_S_PER_SCAN:.2f}")
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores", "load_1min": round(load, 2),
                      "slices": args.slices, "matrix": args.matrix,
                      "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                      "stages": {k: {"cpu_s": round(c, 2), "peak_mib": round(p)} for k, (_, c, p, _) in stages.items()},
                      "declared_mb": declared, "ratio_to_target": round(cpu / TARGET_CPU_S_PER_SCAN, 2)}))


if __name__ == "__main__":
    main()
