#!/usr/bin/env bash
# Rehearse benchmarks/gpu.sh on a CPU as it will run on the offline GPU machine: a fresh environment holding
# torch and the machine's other packages that ctdiff uses (accelerate, numpy, scipy, pandas, matplotlib,
# scikit-image, and what they pull in) and nothing of ctdiff's own; the wheels from benchmarks/gpu_wheels.sh
# for that environment's Python; then `gpu.sh --smoke` with no package index and, where `unshare -n` works
# (root), no network at all. It fails unless gpu.sh installs the wheels, passes its import check and every
# part ends with status ok.
#
#   bash benchmarks/gpu_rehearsal.sh                   # python3.12 if torch installs for it, else python3
#   REHEARSAL_PYTHON=python3.11 bash benchmarks/gpu_rehearsal.sh --reuse
#   bash benchmarks/gpu_rehearsal.sh --parts step-reference,sample      # passed on to gpu.sh
#
# Options: --reuse (keep the environment of an earlier rehearsal if it still passes the package check);
# anything else is passed to gpu.sh. Environment: REHEARSAL_PYTHON, REHEARSAL_VENV (default
# /tmp/ctdiff-gpu-rehearsal), TORCH_VERSION (default 2.13.0), TORCH_PIP_ARGS (default --no-index: torch only
# from a local wheel folder, pip's find-links, as the CPU build lies on these machines; a package index would
# give the CUDA build of several GB; elsewhere e.g. TORCH_PIP_ARGS='--index-url https://download.pytorch.org/whl/cpu').
# The GPU machine's Python is 3.12; where torch does not install for 3.12 here, the rehearsal runs on the
# Python given and downloads the wheels for that version (pure-Python wheels are the same files; isal is
# built per version), and says so.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv=${REHEARSAL_VENV:-/tmp/ctdiff-gpu-rehearsal}
torch_version=${TORCH_VERSION:-2.13.0}
reuse=0
pass=()
for arg in "$@"; do
  if [ "$arg" = --reuse ]; then reuse=1; else pass+=("$arg"); fi
done
t_start=$(date +%s)
read -r -a torch_args <<<"${TORCH_PIP_ARGS:---no-index}"

make_venv() {  # make_venv PYTHON: a fresh venv with the machine's packages; fails if torch does not install
  rm -rf "$venv"
  "$1" -m venv "$venv" &&
    "$venv/bin/python" -m pip install -q --no-deps "${torch_args[@]}" torch=="$torch_version" &&
    "$venv/bin/python" -m pip install -q torch=="$torch_version" accelerate numpy scipy pandas matplotlib scikit-image
}

# --- the stand-in for the machine's python3 ----------------------------------------------------------------
if [ "$reuse" = 1 ] && [ -x "$venv/bin/python" ]; then
  echo "reusing $venv"
elif [ -n "${REHEARSAL_PYTHON:-}" ]; then
  make_venv "$REHEARSAL_PYTHON"
elif python3.12 -c '' 2>/dev/null && make_venv python3.12; then
  :
else
  echo "rehearsal: no python3.12 here, or torch==$torch_version does not install for it; using $(python3 --version)"
  make_venv python3
fi
py="$venv/bin/python"
version=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
[ "$version" = 3.12 ] || echo "rehearsal: Python $version stands in for the GPU machine's 3.12; its wheels are" \
  "downloaded for $version"

# Nothing in the stand-in that the GPU machine lacks (pip's own aside: reported, not fatal), and none of the
# carried packages: the rehearsal must install them from the wheels.
"$py" - "$root/benchmarks/gpu_machine_packages.txt" <<'EOF'
import re, sys
from importlib import metadata
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
machine = {norm(l.strip()) for l in open(sys.argv[1]) if l.strip() and not l.startswith("#")}
have = {norm(d.metadata["Name"]) for d in metadata.distributions()}
carried = {"nibabel", "isal", "pydicom", "defusedxml", "simpleitk"}
if have & carried:
    sys.exit(f"rehearsal: the stand-in already holds {sorted(have & carried)}: make it afresh (no --reuse)")
extra = sorted(have - machine - {"pip", "setuptools", "wheel"})
print(f"stand-in: {len(have)} distributions, all on the GPU machine's list" + (
    f" except {', '.join(extra)} (pulled in by the current releases of the packages above)"
    if extra else ""))
EOF

# --- the wheels, for this Python ---------------------------------------------------------------------------
wheels="$venv/.whl"
PY_VERSION=$version WHEELS=$wheels bash "$root/benchmarks/gpu_wheels.sh"

# --- gpu.sh --smoke, offline -------------------------------------------------------------------------------
out=$(mktemp -d)
offline=(env -u PYTHONPATH -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL PIP_NO_INDEX=1
         PIP_CONFIG_FILE=/dev/null PYTHON="$py" WHEELS="$wheels")
if unshare -n true 2>/dev/null; then
  echo "rehearsal: gpu.sh runs in a network namespace of its own (no network), pip with no index"
  # the loopback interface up, where `ip` exists (a new namespace has it down)
  offline=(unshare -n sh -c 'command -v ip >/dev/null && ip link set lo up; exec "$@"' sh "${offline[@]}")
else
  echo "rehearsal: unshare -n is not allowed here: gpu.sh runs with the network, pip with no index"
fi
t0=$(date +%s)
rc=0
"${offline[@]}" bash "$root/benchmarks/gpu.sh" --smoke --out "$out" "${pass[@]}" || rc=$?
echo "rehearsal: gpu.sh --smoke exit $rc after $(($(date +%s) - t0)) s (results in $out)"

"$py" - "$out/gpu-results.json" "$rc" <<'EOF'
import json, sys
doc, rc = json.load(open(sys.argv[1])), int(sys.argv[2])
bad = [f"{p['part']}: {p['status']}" for p in doc["parts"] if p["status"] != "ok"]
setup = doc["setup"]
problems = ([f"gpu.sh exit {rc}"] if rc else []) + (["not complete"] if not doc["complete"] else []) + bad + (
    [f"pending: {doc['pending']}"] if doc["pending"] else []) + (
    ["no wheel installed"] if not setup.get("installed") else []) + (
    ["import check failed"] if not (setup.get("imports") or {}).get("ok") else [])
print(f"installed from wheels: {', '.join(setup.get('installed', []))} ({setup.get('install_s')} s)")
print(f"parts: {', '.join(p['part'] + ' ' + p['status'] + ' ' + str(p['seconds']) + ' s' for p in doc['parts'])}")
sys.exit("rehearsal FAILED: " + "; ".join(problems) if problems else 0)
EOF
echo "rehearsal passed in $(($(date +%s) - t_start)) s (Python $version)"
