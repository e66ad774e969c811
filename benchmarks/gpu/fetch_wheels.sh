#!/usr/bin/env bash
# Prepares what the GPU benchmark carries to the device machine (which reaches no registry), run
# here from anywhere: writes the git-ignored folders .gpu-carry-kitchen/ (comfy-kitchen's whole
# wheel, carried alone by an optional first call) and .gpu-carry/ at the repo root, the latter with
#   wheels/          the Python 3.12 manylinux x86_64 wheels that an in-process import of
#                    ComfyUI 0.33 (`import nodes`), its TrainLoraNode and LoRA Lab need and the
#                    device's image lacks (see docs/benchmarks.md for how they were chosen);
#   ComfyUI.tar.gz   the ComfyUI 0.33.0 source tree without its tests, blueprints and API nodes.
# Then prints the sizes: everything that travels must stay under 64 MiB.
#
#   benchmarks/gpu/fetch_wheels.sh                 # COMFYUI_TARBALL=... to use another tarball
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CARRY="$REPO/.gpu-carry"
KITCHEN="$REPO/.gpu-carry-kitchen"
TARBALL=${COMFYUI_TARBALL:-$REPO/../shared/comfyui/comfyui-0.33.0.tar.gz}
PY=${PYTHON:-python3}

# Pinned: comfy-kitchen and comfy-aimdo as ComfyUI 0.33's requirements.txt pins them; av because
# comfy_api.latest imports it unconditionally (no torchaudio needed: the device has 2.11); torchsde
# (+ trampoline) for comfy.k_diffusion; lycoris-lora (+ toml) for the adapters. bitsandbytes is
# left out: lycoris imports it inside a try, and nothing benchmarked uses an 8-bit optimizer.
WHEELS=(av==18.1.0 comfy-kitchen==0.2.31 comfy-aimdo==0.4.13 torchsde==0.2.6 trampoline==0.1.2
        lycoris-lora==4.1.3 toml==0.10.2)
PLATFORMS=()
for p in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux_2_12 manylinux2010 manylinux1; do
  PLATFORMS+=(--platform "${p}_x86_64")
done

rm -rf "$CARRY"
mkdir -p "$CARRY/wheels"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$CARRY/wheels" "${WHEELS[@]}"

# comfy-kitchen's compiled CUDA and HIP backends are 225 MB (58 MB zipped): with the rest they are
# more than one call may carry. ComfyUI 0.33 uses them only for quantized layers (scaled fp8, nvfp4,
# int8); plain fp8 weights go through manual cast. The whole wheel goes to .gpu-carry-kitchen/ for
# a first call of its own (run_on_device.sh kitchen); the copy in .gpu-carry/ loses its .so files
# and then reports comfy-kitchen's eager backend only.
rm -rf "$KITCHEN" && mkdir -p "$KITCHEN"
cp "$CARRY"/wheels/comfy_kitchen-*.whl "$KITCHEN"/
"$PY" - "$CARRY"/wheels/comfy_kitchen-*.whl <<'PY'
import base64, hashlib, sys, zipfile
from pathlib import Path
path = Path(sys.argv[1])
dropped = ("comfy_kitchen/backends/cuda/_C.", "comfy_kitchen/backends/hip/_C.")
tmp = path.with_suffix(".tmp")
with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
    record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
    for info in src.infolist():
        if info.filename.startswith(dropped) or info.filename == record_name:
            continue
        dst.writestr(info, src.read(info.filename))
    lines = [l for l in src.read(record_name).decode().splitlines() if l and not l.startswith(dropped)]
    dst.writestr(record_name, "\n".join(lines) + "\n")
tmp.replace(path)
print(f"{path.name}: compiled backends removed")
PY

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xzf "$TARBALL" -C "$work"
rm -rf "$work"/ComfyUI/{tests,tests-unit,blueprints,comfy_api_nodes,openapi.yaml,.github,.ci}
tar -czf "$CARRY/ComfyUI.tar.gz" -C "$work" ComfyUI

carry=$(du -cb "$CARRY"/wheels/*.whl "$CARRY/ComfyUI.tar.gz" | tail -1 | cut -f1)
cd "$REPO"
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 du -cb 2>/dev/null | grep total$ | awk '{s+=$1} END {print s+0}')
limit=$((64 * 1024 * 1024))
ls -l "$CARRY"/wheels "$CARRY"/ComfyUI.tar.gz
echo "carry (.gpu-carry): $carry bytes; working tree (tracked + untracked, not ignored): $tree bytes;"\
     "together $((carry + tree)) of $limit bytes"
if (( carry + tree > limit )); then echo "OVER THE 64 MiB LIMIT" >&2; exit 1; fi
kitchen=$(du -cb "$KITCHEN"/*.whl | tail -1 | cut -f1)
echo "kitchen carry (.gpu-carry-kitchen, its own call): $kitchen bytes; with the working tree $((kitchen + tree)) of $limit bytes"
if (( kitchen + tree > limit )); then echo "KITCHEN CARRY OVER THE 64 MiB LIMIT" >&2; exit 1; fi
