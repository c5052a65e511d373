#!/usr/bin/env bash
# Every GPU measurement ctdiff has, in one run on one GPU, written to one results file: the training step
# (benchmarks/train_step.py: seconds per step and peak memory per variant, and the 8 GiB setting run under the
# memory an 8 GB card leaves), the wavelet representation's training step at 128³ and 256³, the samplers
# (benchmarks/sample.py, Euler and Heun included, and the wavelet rows) and the evaluate stage at 128³
# (benchmarks/evaluate.py). Made for a GPU machine without a package index: it installs nothing from the
# network and builds nothing.
#
#   bash benchmarks/gpu.sh                        # on the GPU machine, in a copy of the repository
#   bash benchmarks/gpu.sh --smoke                # the same commands at tiny size on the CPU (4-15 min, 2 cores)
#   bash benchmarks/gpu.sh --smoke --parts step-reference,sample --budget sample=2
#   PYTHON=/opt/venv/bin/python bash benchmarks/gpu.sh --out /tmp/gpu
#
# Options: --smoke; --out DIR; --parts A,B,... (run only these, in the usual order); --budget PART=SECONDS
# (repeatable); --deadline SECONDS (the whole run, counted from the start; default 480 on the GPU, none with
# --smoke: a part that would end after it gets only what is left, and is skipped when under 10 s are left).
#
# Python: $PYTHON (default python3) as it is, with this checkout first on PYTHONPATH (no install of ctdiff,
# no build step, no venv). If .whl/ (or $WHEELS) holds wheels, those of distributions $PYTHON lacks are
# installed with `pip install --no-index --no-deps --target` into a temporary folder put on PYTHONPATH, before
# any part starts (benchmarks/gpu_wheels.sh downloads them on a machine with a package index). Then every
# module the parts import is imported once; if one is missing the run stops there and names it.
#
# Each part runs in its own process group under `timeout -k` with its budget; a part that runs over is
# stopped and recorded as cut (exit 124 or 137) and the next one starts. After every part the results file is
# rewritten (atomically), so a run stopped from outside keeps every part that finished.
#
# Output, in --out DIR (default results/gpu/<UTC time>): gpu-results.json holds the setup (wheels installed,
# import check), the machine (GPU, driver, torch, CUDA, cuDNN, CPU, commit) and, per part, its command,
# budget, status (ok, cut, out of memory, failed, skipped), exit status, wall seconds, the device memory
# nvidia-smi saw in use while it ran and what it printed (the training-step parts as JSON rows); gpu.log holds
# everything printed, ending with a summary table.
set -uo pipefail

smoke=${SMOKE:-0}
out=""
only=""
deadline=""
declare -A budget_override=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --out) out=${2:?--out needs a folder}; shift ;;
    --parts) only=${2:?--parts needs a comma-separated list}; shift ;;
    --budget)
      [[ ${2:-} =~ ^([a-z0-9-]+)=([0-9]+)$ ]] || { echo "gpu.sh: --budget takes PART=SECONDS" >&2; exit 2; }
      budget_override[${BASH_REMATCH[1]}]=${BASH_REMATCH[2]}; shift ;;
    --deadline)
      [[ ${2:-} =~ ^[0-9]+$ ]] || { echo "gpu.sh: --deadline takes seconds (0: none)" >&2; exit 2; }
      deadline=$2; shift ;;
    -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ "$smoke" = 1 ] || [ "$smoke" = 0 ] || { echo "gpu.sh: SMOKE must be 0 or 1" >&2; exit 2; }

t_start=$(date +%s)
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1
stamp=$(date -u +%Y%m%dT%H%M%SZ)
if [ -z "$out" ]; then
  if [ "$smoke" = 1 ]; then out="results/gpu-smoke/$stamp"; else out="results/gpu/$stamp"; fi
fi
mkdir -p "$out" || exit 1
out=$(cd "$out" && pwd)
work=$(mktemp -d) || exit 1
trap 'rm -rf "$work"' EXIT
log="$out/gpu.log"
results="$out/gpu-results.json"
: >"$log"
: >"$work/parts.tsv"
say() { echo "$*" | tee -a "$log"; }
die() { say "gpu.sh: $*"; exit 1; }

# --- the parts and their budgets ---------------------------------------------------------------------------
if [ "$smoke" = 1 ]; then
  # The smallest U-Net the benchmarks take (16³, 8-16-32 channels, one res block); budgets are only a guard.
  unet=(--size 16 --channels 8 16 32 --res-blocks 1 --groups 4)
  steps=(--steps 1 --warmup 1)
  big=32  # stands for 256³: the wavelet U-Net at 16³
  sample_args=(--batch 2 --precision fp32 --modes eager --ddpm-steps 2 --wavelet-sizes 16 "$big"
               --wavelet-samplers dpmpp)
  evaluate_args=(--n 4 --size 32 --depth 10 --rounds 1 --n-boot 20 --reference-reps 1)
  declare -A budget=([step-reference]=300 [step-ctdiff-eager]=300 [step-ctdiff-eager-rnorm]=300
    [step-ctdiff-eager-ckpt-rnorm-b1]=300 [step-8gb-capped]=300 [step-wavelet]=300 [step-wavelet-$big-b1]=300
    [sample]=300 [evaluate]=300 [step-ctdiff-compile]=600)
  deadline=${deadline:-0}
else
  # The paper's U-Net (159 M parameters) at 128³; 2 warm-up steps pay for cuDNN's algorithm search.
  unet=(--size 128 --channels 64 128 256 512 --res-blocks 2 --groups 32)
  steps=(--steps 5 --warmup 2)
  big=256
  # Batch 2, not production's 8. Voxel rows: the warm-up (2 calls), DDPM-1000 scaled from 10 calls, DDIM-50,
  # DPM-Solver++-25, Euler-30 and Heun-15 (29 calls): 146 network calls at 128³. Then the wavelet
  # representation with DPM-Solver++-25: 2 + 25 calls at 128³ (the U-Net at 64³, ~1/8 of a voxel call) and at
  # 256³ (the U-Net at 128³ with 8 channels in, about a voxel call).
  sample_args=(--batch 2 --precision bf16 --modes eager --ddpm-steps 10 --wavelet-sizes 128 "$big"
               --wavelet-samplers dpmpp)
  # 16 vs 16 (+ 16 training) volumes at 128³ with the paper's Med3D depth, one round after the warm-up; the
  # brute-force pairing is skipped.
  evaluate_args=(--n 16 --size 128 --depth 50 --rounds 1 --n-boot 200 --reference-reps 1)
  # Budgets, seconds, for what each part runs (benchmarks/README.md has the sums; not yet measured on a GPU: a
  # part that hits its budget is recorded as cut). Every part is a fresh process: ~10 s for Python, torch, the
  # CUDA context and a 159 M-parameter model. The ctdiff step variants then pay cuDNN's algorithm search in
  # their warm-up (~15 s at 128³, a guess), and 7 steps of 0.3-0.8 s (H100: eager bf16 batch 2 0.535 s;
  # torch.compile adds its compilation, ~60-90 s). sample: 146 voxel calls of ~0.36 s (bf16 forward, 0.18 s
  # per volume), 27 wavelet calls at 64³ and 27 at 128³, three warm-ups: ~100 s. evaluate: 48 phantom chests
  # at 128³ built on the CPU (~1 s each) and their anatomy, one round: ~70 s.
  declare -A budget=([step-reference]=25 [step-ctdiff-eager]=40 [step-ctdiff-compile]=110 [step-8gb-capped]=40
    [step-wavelet-$big-b1]=35 [sample]=120 [evaluate]=90 [step-ctdiff-eager-rnorm]=40
    [step-ctdiff-eager-ckpt-rnorm-b1]=35 [step-wavelet]=25)
  deadline=${deadline:-480}
fi
# Most wanted first: where the deadline leaves too little for the last parts, those are the ones cut.
order=(step-reference step-ctdiff-eager step-ctdiff-compile step-8gb-capped "step-wavelet-$big-b1" sample evaluate
       step-ctdiff-eager-rnorm step-ctdiff-eager-ckpt-rnorm-b1 step-wavelet)
for name in "${!budget_override[@]}"; do
  [ -n "${budget[$name]:-}" ] || { echo "gpu.sh: --budget: no part $name (parts: ${order[*]})" >&2; exit 2; }
  budget[$name]=${budget_override[$name]}
done
planned=()
if [ -n "$only" ]; then
  IFS=, read -r -a wanted <<<"$only"
  for name in "${wanted[@]}"; do
    [ -n "${budget[$name]:-}" ] || { echo "gpu.sh: --parts: no part $name (parts: ${order[*]})" >&2; exit 2; }
  done
  for name in "${order[@]}"; do
    [[ ",$only," == *",$name,"* ]] && planned+=("$name")
  done
else
  planned=("${order[@]}")
fi
# What an 8 GB card leaves PyTorch's allocator: an RTX 2060 SUPER reports 7974 MiB in all to CUDA
# (torch.cuda.get_device_properties), less ~0.5 GiB of CUDA context: 7.29 GiB.
cap_gib=${CAP_GIB:-7.29}

# --- the results file, rewritten after every step of the run -----------------------------------------------
cat >"$work/record.py" <<'EOF'
"""Write gpu-results.json from the work folder (atomically); with --summary also print the closing table."""
import json, os, sys
from pathlib import Path

work, dest, summary = Path(sys.argv[1]), Path(sys.argv[2]), "--summary" in sys.argv


def read_json(path, default=None):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def digits(text):
    return int(text) if text.strip().isdigit() else None


meta = read_json(work / "meta.json", {})
parts = []
for line in (work / "parts.tsv").read_text().splitlines():
    name, budget, rc, t0, t1, base, note = (line.split("\t") + [""] * 7)[:7]
    out = work / f"{name}.out"
    text = out.read_text(errors="replace") if out.exists() else ""
    smi = work / f"{name}.smi"
    used = [int(v) for v in smi.read_text(errors="replace").split() if v.isdigit()] if smi.exists() else []
    rows = []
    for row in text.splitlines():
        if row.startswith("{"):
            try:
                rows.append(json.loads(row))
            except ValueError:
                pass
    rc = int(rc) if rc.lstrip("-").isdigit() else None
    oom = "OutOfMemoryError" in text or "CUDA out of memory" in text
    if note == "skipped":
        status = "skipped"
    elif rc in (124, 137):
        status = "cut"
    elif oom:
        status = "out of memory"
    else:
        status = "ok" if rc == 0 else "failed"
    cmd = work / f"{name}.cmd"
    parts.append({
        "part": name, "status": status, "note": note or None,
        "command": cmd.read_text().rstrip("\0").split("\0") if cmd.exists() else None,
        "budget_s": int(budget), "exit": rc, "cut_at_budget": status == "cut", "out_of_memory": oom,
        "seconds": round(float(t1) - float(t0), 1) if t0 and t1 else None,
        "gpu_used_mib_before": digits(base), "gpu_used_mib_max": max(used) if used else None,
        "rows": rows, "output": text.splitlines()[-60:],
    })
done = [p["part"] for p in parts]
doc = {
    "complete": summary, "smoke": meta.get("smoke"), "deadline_s": meta.get("deadline_s"),
    "planned": meta.get("planned", []), "pending": [n for n in meta.get("planned", []) if n not in done],
    "setup": read_json(work / "setup.json", {}), "machine": read_json(work / "machine.json"), "parts": parts,
    "train_step_variant.py": (work / "train_step_variant.py").read_text(),
}
tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
tmp.write_text(json.dumps(doc, indent=1) + "\n")
os.replace(tmp, dest)
if not summary:
    sys.exit(0)
# GPU MiB: the most nvidia-smi saw in use during the part, less what was in use before it; beside the reserved
# peak it shows the CUDA context (GPU MiB - reserved MiB).
ref = next((r for p in parts for r in p["rows"] if r.get("variant") == "reference" and "s_per_step" in r), None)
print(f"{'part':<34}{'status':>14}{'s':>7}{'budget':>7}{'GPU MiB':>8}  result")
for p in parts:
    gpu = "" if p["gpu_used_mib_max"] is None or p["gpu_used_mib_before"] is None else \
        p["gpu_used_mib_max"] - p["gpu_used_mib_before"]
    row = next((r for r in p["rows"] if "s_per_step" in r), None)
    reserved = next((r["max_reserved_gib"] for r in p["rows"] if r.get("max_reserved_gib") is not None), None)
    if row:
        result = f"batch {row['batch']}: {row['s_per_step']:.4f} s/step"
        if ref and row["batch"] == ref["batch"]:
            result += f" ({row['s_per_step'] / ref['s_per_step']:.2f}x reference)"
        elif ref:  # another batch size: per volume
            per_volume = (row["s_per_step"] / row["batch"]) / (ref["s_per_step"] / ref["batch"])
            result += f" ({per_volume:.2f}x reference per volume)"
        if row.get("representation") == "wavelet":
            result += f", wavelet {row['size']}³"
        result += f", peak {row['peak_gib']:.2f} GiB" + (
            f" allocated, {reserved:.2f} GiB reserved" if reserved is not None else " (CPU: process RSS)")
    elif p["status"] == "skipped":
        result = p["note"] or "skipped"
    elif p["status"] != "ok":
        result = f"{p['status']}, see gpu.log"
    else:
        result = "see gpu.log"
    seconds = "" if p["seconds"] is None else f"{p['seconds']:.1f}"
    print(f"{p['part']:<34}{p['status']:>14}{seconds:>7}{p['budget_s']:>7}{gpu!s:>8}  {result}")
for p in parts:
    if p["part"] == "sample" and p["output"]:
        print("sample:")
        print("\n".join(line for line in p["output"] if not line.startswith("{")))
print(f"wrote {dest}")
EOF

# A Python only for writing the results file: any python3 will do, the one of the run is preferred below.
write_results() { "${py:-python3}" "$work/record.py" "$work" "$results" "$@"; }
printf '{"smoke": %s, "deadline_s": %s, "planned": [%s]}\n' "$([ "$smoke" = 1 ] && echo true || echo false)" \
  "${deadline:-0}" "$(printf '"%s",' "${planned[@]}" | sed 's/,$//')" >"$work/meta.json"
cat >"$work/train_step_variant.py" <<'EOF'
# One train_step.py variant in this process (its own child mode prints its JSON row), optionally with
# PyTorch's allocator capped at CAP_GIB, then the allocator's reserved peak as a second JSON row.
import json, os, runpy, sys
import torch
cap = float(os.environ.get("CAP_GIB") or 0)
variant, cuda = sys.argv[1], torch.cuda.is_available()
if cap and cuda:
    torch.cuda.set_per_process_memory_fraction(cap * 2**30 / torch.cuda.get_device_properties(0).total_memory)
sys.argv = ["benchmarks/train_step.py", "--child", *sys.argv[1:]]
runpy.run_path("benchmarks/train_step.py", run_name="__main__")
print(json.dumps({"variant": variant, "cap_gib": cap if cap and cuda else None,
                  "max_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None}))
EOF

# --- Python: the machine's own, this checkout first, carried wheels of what it lacks -------------------------
py=${PYTHON:-python3}
command -v "$py" >/dev/null 2>&1 || { py=""; die "no Python: $PYTHON${PYTHON:+ }not found (set PYTHON=...)"; }
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
wheels=${WHEELS:-$root/.whl}
t0=$(date +%s.%N)
installed=()
skipped=()
if compgen -G "$wheels/*.whl" >/dev/null; then
  # Only the wheels of distributions this Python does not have: a carried copy never shadows the machine's.
  "$py" - "$wheels" >"$work/wheels.tsv" <<'EOF' || die "could not read the wheels in $wheels"
import re, sys
from importlib import metadata
from pathlib import Path
for whl in sorted(Path(sys.argv[1]).glob("*.whl")):
    name = re.sub(r"[-_.]+", "-", whl.name.split("-")[0]).lower()
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        have = None
    print(f"{'skip' if have else 'install'}\t{whl}\t{name}\t{have or ''}")
EOF
  while IFS=$'\t' read -r what whl name have; do
    if [ "$what" = install ]; then installed+=("$whl"); else skipped+=("$(basename "$whl") ($name $have present)"); fi
  done <"$work/wheels.tsv"
  if [ ${#installed[@]} -gt 0 ]; then
    site="$work/site"
    say "installing ${#installed[@]} carried wheels into $site (no index): $(for w in "${installed[@]}"; do basename "$w"; done | tr '\n' ' ')"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "${installed[@]}" \
      2>&1 | tee -a "$log"
    [ "${PIPESTATUS[0]}" = 0 ] || die "pip install --no-index of the wheels in $wheels failed (above)"
    export PYTHONPATH="$root:$site${PYTHONPATH#"$root"}"
  fi
  [ ${#skipped[@]} -eq 0 ] || say "not installed (this Python has them): ${skipped[*]}"
else
  say "no wheels in $wheels: using what $py has"
fi
t1=$(date +%s.%N)

# Every module the parts import, the ones imported inside functions too (found by running the parts with
# their imports traced); the benchmark scripts' own top-level imports are run as well.
"$py" - "$work/imports.json" <<'EOF' 2>&1 | tee -a "$log"
import importlib, json, runpy, sys, traceback
modules = ["torch", "numpy", "scipy", "accelerate", "psutil", "tqdm", "nibabel", "isal.igzip", "skimage",
           "ctdiff.training.loop", "ctdiff.sampling.generate", "ctdiff.training.checkpoint", "ctdiff.files", "ctdiff.metrics.evaluate",
           "ctdiff.phantom.scan"]
scripts = ["benchmarks/train_step.py", "benchmarks/sample.py", "benchmarks/evaluate.py"]
missing, failed = set(), {}
for what in modules + scripts:
    try:
        if what.endswith(".py"):
            runpy.run_path(what, run_name="gpu_sh_import_check")  # its imports and definitions, not main()
        else:
            importlib.import_module(what)
    except ModuleNotFoundError as err:
        missing.add((err.name or str(err)).split(".")[0])
        failed[what] = f"{type(err).__name__}: {err}"
    except Exception as err:  # an installed package that does not import is as bad as a missing one
        failed[what] = "".join(traceback.format_exception_only(type(err), err)).strip()
torch = sys.modules.get("torch")
json.dump({"ok": not failed, "missing": sorted(missing), "failed": failed, "python": sys.executable,
           "torch": getattr(torch, "__version__", None)}, open(sys.argv[1], "w"), indent=1)
for what, why in failed.items():
    print(f"import check: {what}: {why}")
sys.exit(1 if failed else 0)
EOF
imports_ok=${PIPESTATUS[0]}
{
  printf '{"python": "%s", "wheels_dir": "%s", "install_s": %s, ' "$(command -v "$py")" "$wheels" \
    "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')"
  printf '"installed": [%s], ' "$(for w in "${installed[@]}"; do printf '"%s",' "$(basename "$w")"; done | sed 's/,$//')"
  printf '"not_installed": [%s], ' "$(for w in "${skipped[@]}"; do printf '"%s",' "$w"; done | sed 's/,$//')"
  printf '"imports": %s}\n' "$(cat "$work/imports.json" 2>/dev/null || echo null)"
} >"$work/setup.json"
if [ "$imports_ok" != 0 ]; then
  write_results
  missing=$("$py" -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))["missing"]))' \
    "$work/imports.json" 2>/dev/null)
  die "stopping before any part: ${missing:+missing module(s): $missing; }the import check above failed." \
    "Carry their wheels in .whl/ (bash benchmarks/gpu_wheels.sh on a machine with a package index) or set" \
    "PYTHON to a Python that has them. Results so far: $results"
fi

if [ "$smoke" = 1 ]; then
  export CUDA_VISIBLE_DEVICES=""  # the CPU, even on a GPU machine
else
  "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    write_results; die "torch sees no GPU with $py (bash benchmarks/gpu.sh --smoke runs on the CPU)"; }
fi

# --- nvidia-smi: whatever it says, or nothing at all, is never fatal -------------------------------------
smi_ok=0
probe=$(timeout -k 2 10 nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 2>&1 | head -n 1) || true
[[ ${probe//[[:space:]]/} =~ ^[0-9]+$ ]] && smi_ok=1
[ "$smi_ok" = 1 ] || say "nvidia-smi: missing, failing or odd (${probe:-no output}): GPU memory in use is unknown"
gpu_used_mib() {  # memory in use on the GPU now, MiB, or nothing when nvidia-smi does not tell
  [ "$smi_ok" = 1 ] || return 0
  local v
  v=$(timeout -k 2 10 nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 2>/dev/null |
      head -n 1 | tr -d ' \r') || true
  [[ $v =~ ^[0-9]+$ ]] && echo "$v"
  return 0
}

# --- the machine -------------------------------------------------------------------------------------------
"$py" - "$smoke" >"$work/machine.json" 2>>"$log" <<'EOF' || echo null >"$work/machine.json"
import json, os, platform, subprocess, sys
import torch
def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError):
        return None
cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), None) \
    if os.path.exists("/proc/cpuinfo") else None
cuda = torch.cuda.is_available()
props = torch.cuda.get_device_properties(0) if cuda else None
print(json.dumps({
    "smoke": sys.argv[1] == "1",
    "gpu": torch.cuda.get_device_name(0) if cuda else None,
    "gpu_total_mib": props.total_memory // 2**20 if cuda else None,
    "nvidia_smi": run("nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"),
    "torch": torch.__version__, "cuda": torch.version.cuda,
    "cudnn": torch.backends.cudnn.version() if cuda else None,
    "python": platform.python_version(), "executable": sys.executable, "cpu": cpu, "cpu_count": os.cpu_count(),
    "commit": run("git", "rev-parse", "HEAD"),
}, indent=1))
EOF
say "machine: $(tr -s ' \n' ' ' <"$work/machine.json")"
write_results || die "could not write $results"

# --- the parts ---------------------------------------------------------------------------------------------
reserve=20  # seconds kept at the deadline: a cut part's 10 s before KILL, then the summary
# run_part NAME COMMAND...: run under `timeout` with the part's budget (cut to what the deadline leaves),
# sampling nvidia-smi meanwhile; record the part and rewrite the results file.
run_part() {
  local name=$1; shift
  local b=${budget[$name]} note="" base sampler="" rc=0 t0 t1 left
  printf '%s\0' "$@" >"$work/$name.cmd"
  if [ "$deadline" -gt 0 ]; then
    left=$((t_start + deadline - reserve - $(date +%s)))
    if [ "$left" -lt 10 ]; then
      say "== $name: skipped, ${left} s left before the ${deadline} s deadline"
      printf '%s\t%s\t\t\t\t\t%s\n' "$name" "$b" skipped >>"$work/parts.tsv"
      write_results
      return 0
    fi
    [ "$left" -ge "$b" ] || { note="budget cut from $b to $left s by the deadline"; b=$left; }
  fi
  base=$(gpu_used_mib)
  if [ -n "$base" ]; then
    timeout -k 2 $((b + 30)) nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 200 \
      >"$work/$name.smi" 2>/dev/null &
    sampler=$!
  fi
  say "== $name (budget ${b} s${note:+; $note}): $*"
  t0=$(date +%s.%N)
  # timeout runs the command in a process group of its own and stops all of it (train_step.py's and the
  # compiler's child processes included): TERM at the budget, KILL 10 s later.
  { timeout -k 10 "$b" "$@" </dev/null 2>&1; echo $? >"$work/$name.rc"; } | tee -a "$log" "$work/$name.out"
  t1=$(date +%s.%N)
  if [ -n "$sampler" ]; then kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null; fi
  rc=$(cat "$work/$name.rc" 2>/dev/null || echo 1)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$b" "$rc" "$t0" "$t1" "${base:-}" "$note" >>"$work/parts.tsv"
  say "-- $name: exit $rc, $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}') s"
  write_results || say "gpu.sh: could not rewrite $results"
}

step() {  # step NAME VARIANT: one train_step.py variant, batch 2 (-bN in the variant sets another)
  local name=$1 variant=$2; shift 2
  run_part "$name" "$py" "$work/train_step_variant.py" "$variant" "${unet[@]}" --batch 2 "${steps[@]}" "$@"
}

for name in "${planned[@]}"; do
  case $name in
    step-reference) step "$name" reference ;;                   # plain eager bf16 step, batch 2
    step-ctdiff-eager) step "$name" ctdiff-eager ;;             # ctdiff's step (EMA, clipping, fused Adam)
    step-ctdiff-eager-rnorm) step "$name" ctdiff-eager-rnorm ;; # train.recompute_norm alone
    step-ctdiff-eager-ckpt-rnorm-b1) step "$name" ctdiff-eager-ckpt-rnorm-b1 ;;  # 8 GiB setting, per GPU of two
    # config/lidc_8gb.yaml on one GPU (batch 2 as two micro-batches), the allocator capped at what an 8 GB card
    # leaves: an out-of-memory error here means the setting does not fit such a card.
    step-8gb-capped) CAP_GIB=$cap_gib step "$name" ctdiff-eager-ckpt-rnorm-accum2 ;;
    # model.representation: wavelet: 128³ as 8 sub-bands at 64³, batch 2; 256³ at batch 1 (the 40 GiB target).
    step-wavelet) step "$name" ctdiff-eager-wavelet ;;
    "step-wavelet-$big-b1") step "$name" "ctdiff-eager-wavelet-s$big-b1" ;;
    sample) run_part sample "$py" benchmarks/sample.py "${unet[@]}" "${sample_args[@]}" ;;
    evaluate) run_part evaluate "$py" benchmarks/evaluate.py "${evaluate_args[@]}" ;;
    step-ctdiff-compile) step "$name" ctdiff-compile ;;         # torch.compile, batch 2 (the 0.20 s/step target)
  esac
done

# --- the closing table -------------------------------------------------------------------------------------
write_results --summary 2>&1 | tee -a "$log"
say "gpu.sh: $(($(date +%s) - t_start)) s in all"
