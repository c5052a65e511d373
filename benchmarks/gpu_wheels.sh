#!/usr/bin/env bash
# Download into .whl/ the wheels benchmarks/gpu.sh installs on a GPU machine without a package index: the
# packages its parts import that the machine's python3 lacks (benchmarks/gpu_machine_packages.txt lists what
# it has). Run it on a machine with a package index, in the repository; .whl/ is git-ignored, so it must be
# copied to the GPU machine with the checkout by name; gpu.sh installs it there with
# `pip install --no-index --no-deps --target`.
#
#   bash benchmarks/gpu_wheels.sh                  # wheels for the GPU machine: CPython 3.12, manylinux x86_64
#   PY_VERSION=3.11 bash benchmarks/gpu_wheels.sh  # for another Python (gpu_rehearsal.sh's stand-in)
#   WHEELS=/tmp/w bash benchmarks/gpu_wheels.sh    # into another folder
#
# The list is the import closure of gpu.sh's parts (train_step.py's variants, sample.py, evaluate.py) less the
# machine's packages, found by running the parts in an environment holding only the machine's packages and
# adding wheels until gpu.sh's import check and `gpu.sh --smoke` passed (benchmarks/gpu_rehearsal.sh repeats
# that). Each package is pinned to the version ctdiff is tested with; --no-deps fetches none of their needs,
# so the script then checks every requirement a wheel declares against the wheels and the machine's list.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest=${WHEELS:-$root/.whl}
py_version=${PY_VERSION:-3.12}
pip_python=${PIP_PYTHON:-python3}

packages=(
  nibabel==5.4.2     # ctdiff.files reads and writes .nii.gz (every part imports it)
  isal==1.9.1        # ctdiff.files's gzip (ISA-L); compiled, one wheel per Python version
  pydicom==3.0.2     # ctdiff.phantom (evaluate.py's phantom chests) imports it
  defusedxml==0.7.1  # ctdiff.ingest.annotations (imported by ctdiff.sampling.generate and ctdiff.metrics.evaluate)
)

mkdir -p "$dest"
# One version of each package: an older wheel left in the folder would stop the whole install.
rm -f "$dest"/*.whl
"$pip_python" -m pip download -q --no-deps --only-binary=:all: --python-version "$py_version" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dest" "${packages[@]}"

# Every requirement the wheels declare (extras aside, markers evaluated for the target Python) must be a
# carried wheel or one of the machine's packages; gpu.sh's import check is the final judge.
"$pip_python" - "$dest" "$py_version" "$root/benchmarks/gpu_machine_packages.txt" <<'EOF'
import re, sys, zipfile
from pathlib import Path
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement

dest, version, listing = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
machine = {norm(line.strip()) for line in listing.read_text().splitlines() if line.strip() and not line.startswith("#")}
wheels = {norm(w.name.split("-")[0]): w for w in dest.glob("*.whl")}
env = {"python_version": version, "python_full_version": f"{version}.0", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
unmet = []
for name, whl in sorted(wheels.items()):
    with zipfile.ZipFile(whl) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    for line in meta.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        dep = norm(req.name)
        where = "carried" if dep in wheels else "on the GPU machine" if dep in machine else None
        print(f"  {name} needs {req}: {where or 'MISSING'}")
        if where is None:
            unmet.append(f"{name} -> {req}")
total = sum(w.stat().st_size for w in wheels.values())
print(f"{len(wheels)} wheels in {dest}, {total / 2**20:.1f} MiB:")
for w in sorted(wheels.values()):
    print(f"  {w.name} ({w.stat().st_size / 2**20:.2f} MiB)")
if unmet:
    print("requirements neither carried nor on the GPU machine (gpu.sh's import check decides whether they "
          "matter):\n  " + "\n  ".join(unmet))
EOF
