#!/usr/bin/env bash
# The GPU benchmark's one device command (issue 12), run from the repo root on the device machine
# with .gpu-carry/ carried (made here by benchmarks/gpu/fetch_wheels.sh). Results go to $OUT:
#   env.txt            GPU, driver, torch, versions
#   dynamic_check.txt  PASS/FAIL: a MODEL from ComfyUI 0.33's loader is dynamic and LoRA Lab trains it
#   gpu_bench.jsonl    one JSON line per run (benchmarks/gpu_memory.py)
#   gpu_bench.md       the same as a Markdown table
#   *.log              each part's output
# Every part has a hard timeout; the whole takes at most about 8 minutes (ask for timeout_s 540).
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
T0=$(date +%s)
log() { echo "[$(date +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*"; }
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

# GPU_BENCH_SMOKE=1 (on a CPU machine, to try this script): no install, the benchmark's --tiny
# mode and the check's --allow-cpu (which then says FAIL: CPUs never get a dynamic patcher).
SMOKE=()
CHECK=()
if [ "${GPU_BENCH_SMOKE:-}" = 1 ]; then SMOKE=(--tiny); CHECK=(--allow-cpu); else
  log "installing the carried wheels"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu-carry/wheels/*.whl \
    || { log "pip install failed"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
rm -rf /tmp/comfy && mkdir -p /tmp/comfy && tar -xzf .gpu-carry/ComfyUI.tar.gz -C /tmp/comfy || { log "no ComfyUI tarball"; exit 1; }
export COMFYUI_PATH=/tmp/comfy/ComfyUI

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import sys, torch, numpy, transformers; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', numpy.__version__, 'transformers', transformers.__version__)"
  git log -1 --format='pack commit %h %s' 2>/dev/null; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

log "dynamic check (90 s at most)"
timeout -k 5 90 "$PY" benchmarks/gpu/dynamic_check.py "${CHECK[@]}" --out "$OUT/dynamic_check.txt" > "$OUT/dynamic_check.log" 2>&1
rc=$?
[ -s "$OUT/dynamic_check.txt" ] || echo "FAIL (exit $rc: timed out or crashed; see dynamic_check.log)" > "$OUT/dynamic_check.txt"
cat "$OUT/dynamic_check.txt"

log "benchmark: Flux.1-dev fp8, 512 and 1024 px, 16 GiB usable (380 s at most)"
timeout -k 5 380 "$PY" benchmarks/gpu_memory.py --weights fp8_e4m3fn --sizes 512,1024 \
  --runs ours:auto,ours:offload,native:offload,native:default --steps 5 --usable-vram-gb 16 "${SMOKE[@]}" \
  --run-timeout 110 --budget-s 320 --jsonl "$OUT/gpu_bench.jsonl" --markdown "$OUT/gpu_bench.md" \
  > "$OUT/gpu_bench.log" 2>&1
log "benchmark exit $?"
grep -E '^\[|^\{' "$OUT/gpu_bench.log" | cut -c1-400
cat "$OUT/gpu_bench.md" 2>/dev/null
log "done"
