#!/usr/bin/env bash
# The GPU benchmark's device command (issue 12), run from the repo root on the device machine with
# .gpu-carry/ carried (made here by benchmarks/gpu/fetch_wheels.sh). One part per call, each at
# most about 8 minutes (ask for timeout_s 540):
#   bash benchmarks/gpu/run_on_device.sh             # part "flux" (the first call)
#   bash benchmarks/gpu/run_on_device.sh families    # part "families" (a later call or session)
#   bash benchmarks/gpu/run_on_device.sh kitchen     # carrying .gpu-carry-kitchen/ instead: installs
#                                                    # comfy-kitchen's whole wheel into .gpu-site/
#   bash benchmarks/gpu/run_on_device.sh quantized   # part "quantized" (scaled fp8; after kitchen,
#                                                    # on the same warm machine, for its CUDA kernels)
# Results go to $OUT:
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
T0=$(date +%s)
log() { echo "[$(date +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*"; }
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

PART=${1:-flux}
if [ "$PART" = kitchen ]; then
  # Its own call: comfy-kitchen's whole wheel (with its compiled kernels) is more than fits beside
  # .gpu-carry. .gpu-site/ is git-ignored, so it stays on the machine while the machine is warm.
  log "installing comfy-kitchen's whole wheel into .gpu-site"
  rm -rf .gpu-site
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target .gpu-site .gpu-carry-kitchen/*.whl \
    || { log "pip install failed"; exit 1; }
  ls .gpu-site | tee "$OUT/kitchen.txt"
  log "done"
  exit 0
fi

# GPU_BENCH_SMOKE=1 (on a CPU machine, to try this script): no install, the benchmark's --tiny
# mode and the check's --allow-cpu (which then says FAIL: CPUs never get a dynamic patcher).
SMOKE=()
CHECK=()
if [ "${GPU_BENCH_SMOKE:-}" = 1 ]; then SMOKE=(--tiny); CHECK=(--allow-cpu); else
  log "installing the carried wheels"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu-carry/wheels/*.whl \
    || { log "pip install failed"; exit 1; }
  export PYTHONPATH=/tmp/site
  # A whole comfy-kitchen left by an earlier `kitchen` call shadows the carried one (no kernels).
  if [ -d .gpu-site/comfy_kitchen ]; then export PYTHONPATH=$PWD/.gpu-site:/tmp/site; log "comfy-kitchen from .gpu-site"; fi
fi
rm -rf /tmp/comfy && mkdir -p /tmp/comfy && tar -xzf .gpu-carry/ComfyUI.tar.gz -C /tmp/comfy || { log "no ComfyUI tarball"; exit 1; }
export COMFYUI_PATH=/tmp/comfy/ComfyUI

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import sys, torch, numpy, transformers; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', numpy.__version__, 'transformers', transformers.__version__)"
  "$PY" -c "import comfy_kitchen, pathlib; p = pathlib.Path(comfy_kitchen.__file__).parent; print('comfy-kitchen at', p, 'compiled kernels:', sorted(str(f.relative_to(p)) for f in p.rglob('_C*.so')) or 'none')"
  git log -1 --format='pack commit %h %s' 2>/dev/null; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

bench() {  # budget (s) and gpu_memory.py arguments; appends to the part's jsonl and table
  local budget=$1; shift
  timeout -k 5 $((budget + 60)) "$PY" benchmarks/gpu_memory.py "$@" --steps 5 "${SMOKE[@]}" \
    --budget-s "$budget" --jsonl "$OUT/gpu_bench.jsonl" --markdown "$OUT/gpu_bench_$((++N)).md" >> "$OUT/gpu_bench.log" 2>&1
  log "benchmark exit $?"
}
N=0
case "$PART" in
flux)
  log "dynamic check (90 s at most)"
  timeout -k 5 90 "$PY" benchmarks/gpu/dynamic_check.py "${CHECK[@]}" --out "$OUT/dynamic_check.txt" > "$OUT/dynamic_check.log" 2>&1
  rc=$?
  [ -s "$OUT/dynamic_check.txt" ] || echo "FAIL (exit $rc: timed out or crashed; see dynamic_check.log)" > "$OUT/dynamic_check.txt"
  cat "$OUT/dynamic_check.txt"
  log "benchmark: Flux.1-dev fp8, 512 and 1024 px, 16 GiB usable (380 s at most)"
  bench 320 --archs flux1-dev --weights fp8_e4m3fn --sizes 512,1024 --usable-vram-gb 16 --run-timeout 110 \
    --runs ours:auto,ours:offload,native:offload,native:default
  ;;
families)
  log "benchmark: Flux.2 Klein, Z-Image, Qwen-Image fp8 at 1024 px, 24 GiB usable (250 s at most)"
  bench 190 --archs flux2-klein,z-image,qwen-image --weights fp8_e4m3fn --sizes 1024 --usable-vram-gb 24 \
    --run-timeout 90 --runs ours:auto,native:offload+bypass+qbwd
  log "benchmark: Flux.1-dev bf16 at 1024 px, the whole card: fully loaded step time (100 s at most)"
  bench 40 --archs flux1-dev --weights bf16 --sizes 1024 --run-timeout 80 --runs ours:full,native:default
  log "benchmark: Flux.1-dev fp8 at 1024 px, 16 GiB usable, dynamic VRAM on (100 s at most)"
  bench 40 --archs flux1-dev --weights fp8_e4m3fn --sizes 1024 --usable-vram-gb 16 --dynamic-vram on \
    --run-timeout 80 --runs ours:auto,native:offload+bypass+qbwd
  ;;
quantized)
  log "benchmark: Flux.1-dev scaled fp8 (ComfyUI's quantized layers) at 1024 px, 16 GiB usable (300 s at most)"
  bench 240 --archs flux1-dev --weights fp8_scaled --sizes 1024 --usable-vram-gb 16 --run-timeout 110 \
    --runs ours:auto,native:offload+bypass,native:offload+bypass+qbwd
  ;;
*) log "unknown part $PART (flux, families, kitchen, quantized)"; exit 2 ;;
esac
grep -E '^\[|^\{' "$OUT/gpu_bench.log" | cut -c1-400
cat "$OUT"/gpu_bench_*.md 2>/dev/null
log "done"
