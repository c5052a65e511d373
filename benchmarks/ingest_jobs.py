"""What one convert or preprocess job costs beyond its work: start-up, measured through Snakemake.

    python benchmarks/ingest_jobs.py [--patients 2 10] [--repeats 3] [--workdir DIR] [--scheduler greedy]

Two cohorts of tiny phantom patients (32 x 32 pixels, 16 slices: the work of a job is a few milliseconds)
are written as DICOM trees, not timed. For each, Snakemake runs discover and every patient's convert and
preprocess job (``--cores 1``, the preprocessed files as targets) in a fresh working directory, and the CPU
time of the whole run (Snakemake and every job it starts: user + system, from ``RUSAGE_CHILDREN``) is taken.
The difference between the two cohorts divided by the difference in jobs is the CPU cost of one job: start-up
of the job's interpreter, Snakemake's script preamble, the script's imports, Snakemake's bookkeeping in the
main process (printed apart, polled with psutil), and the few milliseconds of work.

Then what each job imports before it works (Snakemake's preamble, the script's top-level ``import``
statements and, for convert, dicom2nifti, which ``ctdiff.ingest.convert`` imports where it calls it) is run in
a fresh interpreter, ``--repeats`` times, and the median CPU time printed beside a bare interpreter's.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
#: What Snakemake's preamble imports before the script's own code (snakemake/script/__init__.py).
PREAMBLE = "import sys, pickle; from snakemake.logging import logger; from snakemake.iocontainers import Snakemake"


def patient_ids(n: int) -> list[str]:
    """``n`` patient ids whose numbers get no distractor series from the phantom (see ``write_patient``)."""
    numbers = [k for k in range(2, 10 * n) if (k - 1) % 3 and (k - 1) % 4][:n]
    return [f"JOBS-{k:04d}" for k in numbers]


def write_tree(root: Path, ids: list[str]) -> None:
    from ctdiff.phantom import write_patient

    for pid in ids:
        if not (root / pid).is_dir():
            write_patient(root, pid, np.random.default_rng(int(pid[-4:])), matrix=32, n_slices=16)


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_cohort(work: Path, root: Path, ids: list[str], scheduler: str | None) -> tuple[float, float, float]:
    """Snakemake's discover + convert + preprocess of ``ids`` in a fresh folder: (CPU s of everything, CPU s
    of Snakemake's main process alone, wall s)."""
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    config = run_dir / "config.yaml"
    config.write_text(f"data: {{source: dicom, root: {root}}}\npreprocess: {{size: 8, spacing_mm: 48.0}}\n")
    cmd = [str(Path(sys.executable).parent / "snakemake"), *[f"results/preprocessed/{pid}.nii.gz" for pid in ids],
           "--snakefile", str(REPO / "Snakefile"), "--directory", str(run_dir), "--configfile", str(config),
           "--cores", "1", *(["--scheduler", scheduler] if scheduler else []), "--quiet", "all"]
    cpu, wall = children_cpu(), time.perf_counter()
    with open(run_dir / "snakemake.out", "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=run_dir,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        main = psutil.Process(proc.pid)
        main_cpu = 0.0
        while proc.poll() is None:
            try:
                times = main.cpu_times()
                main_cpu = times.user + times.system
            except psutil.Error:
                break
            time.sleep(0.05)
    if proc.wait():
        raise SystemExit(f"snakemake failed:\n{(run_dir / 'snakemake.out').read_text()[-4000:]}")
    return children_cpu() - cpu, main_cpu, time.perf_counter() - wall


def import_lines(script: Path) -> str:
    """The script's top-level import statements, as one line of code."""
    tree = ast.parse(script.read_text())
    return "; ".join(ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)))


def fresh_cpu(code: str) -> float:
    """CPU seconds of a fresh interpreter running ``code``."""
    cpu = children_cpu()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    return children_cpu() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, nargs=2, default=[2, 10])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="keeps the DICOM trees between runs")
    parser.add_argument("--scheduler", choices=["ilp", "greedy"], default=None,
                        help="Snakemake's job scheduler (default: Snakemake's own default)")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="ctdiff-jobs-"))
    small, large = sorted(args.patients)
    ids = patient_ids(large)
    root = work / "dicom"
    write_tree(root, ids)
    # Two trees, the small one a subset of the large one: discover walks only its own.
    small_root = work / f"dicom-{small}"
    if not small_root.is_dir():
        for pid in ids[:small]:
            shutil.copytree(root / pid, small_root / pid)

    load = os.getloadavg()[0]
    cpu_small, main_small, wall_small = run_cohort(work, small_root, ids[:small], args.scheduler)
    cpu_large, main_large, wall_large = run_cohort(work, root, ids, args.scheduler)
    n_jobs = 2 * (large - small)
    per_job, main_per_job = (cpu_large - cpu_small) / n_jobs, (main_large - main_small) / n_jobs
    for n, cpu, main, wall in ((small, cpu_small, main_small, wall_small), (large, cpu_large, main_large, wall_large)):
        print(f"snakemake, {n} patients ({2 * n + 1} jobs): CPU {cpu:.2f} s (main process {main:.2f} s), "
              f"wall {wall:.2f} s")
    print(f"CPU per convert/preprocess job: {per_job:.3f} s, of which Snakemake's main process {main_per_job:.3f} s")

    imports = {"bare interpreter": "pass", "snakemake preamble": PREAMBLE}
    for stage, later in (("convert", "import dicom2nifti.convert_dicom"), ("preprocess", "")):
        code = "; ".join(filter(None, [PREAMBLE, import_lines(REPO / "workflow" / "scripts" / f"{stage}.py"), later]))
        imports[f"{stage} job's imports"] = code
    fresh_cpu("pass")  # warm the file cache
    import_cpu = {}
    for name, code in imports.items():
        runs = sorted(fresh_cpu(code) for _ in range(args.repeats))
        import_cpu[name] = runs[len(runs) // 2]
        print(f"{name:<38} CPU {import_cpu[name]:.3f} s (median of {args.repeats})")
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores", "load_1min": round(load, 2),
                      "scheduler": args.scheduler or "default",
                      "cpu_per_job_s": round(per_job, 3), "main_process_cpu_per_job_s": round(main_per_job, 3),
                      "import_cpu_s": {k: round(v, 3) for k, v in import_cpu.items()}}))


if __name__ == "__main__":
    main()
