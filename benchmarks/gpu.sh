#!/usr/bin/env bash
# Every GPU measurement ctdiff has, in one run on one GPU, written to one results file: the training step
# (benchmarks/train_step.py: seconds per step and peak memory per variant, and the 8 GiB setting run under the
# memory an 8 GB card leaves), the samplers (benchmarks/sample.py) and the evaluate stage at 128³
# (benchmarks/evaluate.py), with the wavelet representation's training step at 128³ and 256³ and its sampling
# rows. The parts' budgets add up to 457 s on one H100/H200 (under 8 minutes with start-up); a part that runs over
# its budget is stopped and recorded as cut (exit status 124), and the run goes on.
#
#   bash benchmarks/gpu.sh                        # on the GPU machine, in a copy of the repository
#   bash benchmarks/gpu.sh --smoke                # the same commands at tiny size on the CPU (a few minutes)
#   PYTHON=/opt/venv/bin/python bash benchmarks/gpu.sh --out /tmp/gpu
#
# Python: $PYTHON (default python3) with this checkout on PYTHONPATH. Where ctdiff or its dependencies do not
# import with it, the script makes .venv-gpu with the system's packages visible (so an installed CUDA build of
# torch is kept) and runs `pip install -e .` there: the only install, which needs the package index, or pip's
# own PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR on a machine without one, DIR holding the wheels.
#
# Output, in --out DIR (default results/gpu/<UTC time>): gpu-results.json holds the machine (GPU, driver,
# torch, CUDA, cuDNN, CPU, commit) and, per part, its command, budget, exit status, wall seconds, the device
# memory nvidia-smi saw in use while it ran (context and the allocator's reserve included) and what it printed
# (the training-step parts as JSON rows: s/step, max_memory_allocated, max_memory_reserved); gpu.log holds
# everything printed.
set -euo pipefail

smoke=${SMOKE:-0}
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --out) out=$2; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown argument $1 (use --smoke, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
[ "$smoke" = 1 ] || [ "$smoke" = 0 ] || { echo "gpu.sh: SMOKE must be 0 or 1" >&2; exit 2; }
if [ -z "$out" ]; then
  if [ "$smoke" = 1 ]; then out="results/gpu-smoke/$stamp"; else out="results/gpu/$stamp"; fi
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log="$out/gpu.log"
: >"$log"
say() { echo "$*" | tee -a "$log"; }

# --- Python with ctdiff ------------------------------------------------------------------------------------
py=${PYTHON:-python3}
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
need="import torch, ctdiff.train, ctdiff.generate, ctdiff.metrics.evaluate"
if ! "$py" -c "$need" 2>/dev/null; then
  say "ctdiff does not import with $py: installing it into .venv-gpu (pip install -e .)"
  [ -x .venv-gpu/bin/python ] || "$py" -m venv --system-site-packages .venv-gpu
  if ! .venv-gpu/bin/python -m pip install -q -e . 2>&1 | tee -a "$log"; then
    say "gpu.sh: pip install -e . failed (above); where there is no package index, bring the wheels and set" \
      "PIP_NO_INDEX=1 PIP_FIND_LINKS=<their folder>, or give PYTHON=<a python with ctdiff's dependencies>"
    exit 1
  fi
  py=.venv-gpu/bin/python
  "$py" -c "$need"
fi

if [ "$smoke" = 1 ]; then
  export CUDA_VISIBLE_DEVICES=""  # the CPU, even on a GPU machine
  # The smallest U-Net the benchmarks take (16³, 8-16-32 channels, one res block); budgets are only a guard.
  unet=(--size 16 --channels 8 16 32 --res-blocks 1 --groups 4)
  steps=(--steps 1 --warmup 1)
  big=32  # stands for 256³: the wavelet U-Net at 16³
  sample_args=(--batch 2 --precision fp32 --modes eager --ddpm-steps 2 --wavelet-sizes 16 "$big"
               --wavelet-samplers dpmpp)
  evaluate_args=(--n 4 --size 32 --depth 10 --rounds 1 --n-boot 20 --reference-reps 1)
  b_step=300 b_compile=300 b_sample=120 b_evaluate=120 b_wavelet=300 b_wavelet_big=300
else
  "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "gpu.sh: torch sees no GPU with $py (bash benchmarks/gpu.sh --smoke runs on the CPU)" >&2; exit 1; }
  # The paper's U-Net (159 M parameters) at 128³; 2 warm-up steps pay for cuDNN's algorithm search.
  unet=(--size 128 --channels 64 128 256 512 --res-blocks 2 --groups 32)
  steps=(--steps 5 --warmup 2)
  big=256
  # Batch 2, not production's 8, to fit the budget: 2 + 10 + 50 + 25 network calls; DDPM-1000 is scaled from 10.
  # Then the wavelet representation at 128³ and 256³, 2 + 25 calls each (DPM-Solver++-25: a call costs the same
  # in every sampler); the 256³ wavelet U-Net runs at 128³ with 8 channels in, about a voxel 128³ call.
  sample_args=(--batch 2 --precision bf16 --modes eager --ddpm-steps 10 --wavelet-sizes 128 "$big"
               --wavelet-samplers dpmpp)
  # 16 vs 16 (+ 16 training) volumes at 128³ with the paper's Med3D depth; the brute-force pairing is skipped.
  evaluate_args=(--n 16 --size 128 --depth 50 --rounds 2 --n-boot 200 --reference-reps 1)
  # Budgets, seconds: 4 eager steps × 28 + the capped 8 GiB step 40 + compiled 110 + wavelet steps 20 (128³, the
  # U-Net at 64³) and 30 (256³, batch 1) + sample 90 + evaluate 55 = 457, with 23 s left for start-up and the
  # machine record inside 8 minutes. Not yet tuned on a GPU: a part that hits its budget is recorded as cut.
  b_step=28 b_capped=40 b_compile=110 b_sample=90 b_evaluate=55 b_wavelet=20 b_wavelet_big=30
fi
b_capped=${b_capped:-$b_step}
# What an 8 GB card leaves PyTorch's allocator: an RTX 2060 SUPER reports 7974 MiB in all to CUDA
# (torch.cuda.get_device_properties), less ~0.5 GiB of CUDA context: 7.29 GiB.
cap_gib=${CAP_GIB:-7.29}

# One training-step variant in this process (train_step.py's own child mode prints its JSON row), optionally
# with PyTorch's allocator capped at CAP_GIB, then the allocator's reserved peak as a second JSON row.
cat >"$work/train_step_variant.py" <<'EOF'
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

gpu_used_mib() {  # memory in use on the GPU now, MiB (empty without nvidia-smi or in smoke mode)
  [ "$smoke" = 0 ] && command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=memory.used \
    --format=csv,noheader,nounits -i 0 2>/dev/null | head -1 || true
}

# run_part NAME BUDGET_S COMMAND...: run under `timeout`, sampling nvidia-smi meanwhile; record the part.
run_part() {
  local name=$1 budget=$2; shift 2
  local base sampler="" rc=0 t0 t1
  base=$(gpu_used_mib)
  if [ -n "$base" ]; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 200 >"$work/$name.smi" 2>/dev/null &
    sampler=$!
  fi
  say "== $name (budget ${budget} s): $*"
  t0=$(date +%s.%N)
  # timeout stops the command's whole process group (train_step.py's and sample.py's children included).
  { timeout --kill-after=5 "$budget" "$@" 2>&1 || echo $? >"$work/$name.rc"; } | tee -a "$log" "$work/$name.out"
  t1=$(date +%s.%N)
  [ -z "$sampler" ] || { kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true; }
  [ ! -f "$work/$name.rc" ] || rc=$(cat "$work/$name.rc")
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$budget" "$rc" "$t0" "$t1" "${base:-}" >>"$work/parts.tsv"
  printf '%s\0' "$@" >"$work/$name.cmd"
  say "-- $name: exit $rc, $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}') s"
}

step() {  # step NAME BUDGET VARIANT: one train_step.py variant (-bN in its name sets another batch)
  local name=$1 budget=$2 variant=$3; shift 3
  run_part "$name" "$budget" "$py" "$work/train_step_variant.py" "$variant" "${unet[@]}" --batch 2 "${steps[@]}" "$@"
}

# --- the machine -------------------------------------------------------------------------------------------
"$py" - "$smoke" >"$work/machine.json" <<'EOF'
import json, os, platform, subprocess, sys
import torch
def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
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
    "python": platform.python_version(), "cpu": cpu, "cpu_count": os.cpu_count(),
    "commit": run("git", "rev-parse", "HEAD"),
}, indent=1))
EOF
say "machine: $(tr -s ' \n' ' ' <"$work/machine.json")"

# --- the parts ---------------------------------------------------------------------------------------------
step step-reference "$b_step" reference                     # plain eager bf16 step, batch 2
step step-ctdiff-eager "$b_step" ctdiff-eager               # ctdiff's step (EMA, clipping, fused Adam), batch 2
step step-ctdiff-eager-rnorm "$b_step" ctdiff-eager-rnorm   # train.recompute_norm alone, batch 2
step step-ctdiff-eager-ckpt-rnorm-b1 "$b_step" ctdiff-eager-ckpt-rnorm-b1   # 8 GiB setting, per GPU of two
# config/lidc_8gb.yaml on one GPU (batch 2 as two micro-batches), the allocator capped at what an 8 GB card leaves:
# an out-of-memory error here means the setting does not fit such a card.
CAP_GIB=$cap_gib step step-8gb-capped "$b_capped" ctdiff-eager-ckpt-rnorm-accum2
step step-ctdiff-compile "$b_compile" ctdiff-compile        # torch.compile, batch 2 (the 0.20 s/step target)
# model.representation: wavelet: 128³ as 8 sub-bands at 64³, batch 2; 256³ at batch 1 (the 40 GiB target).
step step-wavelet "$b_wavelet" ctdiff-eager-wavelet
step step-wavelet-$big-b1 "$b_wavelet_big" ctdiff-eager-wavelet-s$big-b1
run_part sample "$b_sample" "$py" benchmarks/sample.py "${unet[@]}" "${sample_args[@]}"
run_part evaluate "$b_evaluate" "$py" benchmarks/evaluate.py "${evaluate_args[@]}"

# --- one results file --------------------------------------------------------------------------------------
"$py" - "$work" "$out/gpu-results.json" <<'EOF' | tee -a "$log"
import json, sys
from pathlib import Path
work, dest = Path(sys.argv[1]), Path(sys.argv[2])
parts = []
for line in (work / "parts.tsv").read_text().splitlines():
    name, budget, rc, t0, t1, base = line.split("\t")
    text = (work / f"{name}.out").read_text(errors="replace")
    smi = work / f"{name}.smi"
    used = [int(v) for v in smi.read_text().split() if v.isdigit()] if smi.exists() else []
    rows = []
    for row in text.splitlines():
        if row.startswith("{"):
            try:
                rows.append(json.loads(row))
            except json.JSONDecodeError:
                pass
    parts.append({
        "part": name, "command": (work / f"{name}.cmd").read_text().rstrip("\0").split("\0"),
        "budget_s": int(budget), "exit": int(rc), "cut_at_budget": int(rc) in (124, 137),
        "out_of_memory": "OutOfMemoryError" in text or "CUDA out of memory" in text,
        "seconds": round(float(t1) - float(t0), 1),
        "gpu_used_mib_before": int(base) if base else None,
        "gpu_used_mib_max": max(used) if used else None,
        "rows": rows, "output": text.splitlines()[-60:],
    })
dest.write_text(json.dumps({"machine": json.loads((work / "machine.json").read_text()), "parts": parts,
                            "train_step_variant.py": (work / "train_step_variant.py").read_text()}, indent=1))
# GPU MiB: the most nvidia-smi saw in use during the part, less what was in use before it; beside the reserved
# peak it shows the CUDA context (GPU MiB - reserved MiB).
ref = next((r for p in parts for r in p["rows"] if r.get("variant") == "reference" and "s_per_step" in r), None)
print(f"{'part':<34}{'exit':>5}{'s':>7}{'budget':>7}{'GPU MiB':>8}  result")
for p in parts:
    gpu = (p["gpu_used_mib_max"] - p["gpu_used_mib_before"]) if p["gpu_used_mib_max"] is not None else None
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
    elif p["out_of_memory"]:
        result = "out of memory"
    elif p["cut_at_budget"]:
        result = "cut at its budget"
    else:
        result = "failed, see gpu.log" if p["exit"] else "see gpu.log"
    gpu = "" if gpu is None else gpu
    print(f"{p['part']:<34}{p['exit']:>5}{p['seconds']:>7.1f}{p['budget_s']:>7}{gpu:>8}  {result}")
print(f"wrote {dest}")
EOF
