#!/usr/bin/env bash
# Prints the ComfyUI source tree the ComfyUI tier tests against, or fails when there is none.
# Order: $COMFYUI_PATH, ../.. (the pack cloned into ComfyUI/custom_nodes/), ~/comfy/ComfyUI.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
for d in "${COMFYUI_PATH:-}" "$root/../.." "$HOME/comfy/ComfyUI"; do
  if [ -n "$d" ] && [ -f "$d/comfy/model_patcher.py" ] && [ -f "$d/main.py" ]; then
    (cd "$d" && pwd)
    exit 0
  fi
done
exit 1
