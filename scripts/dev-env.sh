#!/usr/bin/env bash
# Builds the development/test virtual environment for LoRA Lab.
#   scripts/dev-env.sh [VENV_DIR]        (default: .venv in the repo root)
# - pins the CPU torch wheel (ComfyUI owns torch in a user's install; here we only test);
# - installs the pack's requirements and the test requirements;
# - when a ComfyUI source tree is found ($COMFYUI_PATH, ../.. when the pack sits in
#   custom_nodes/, or ~/comfy/ComfyUI) also installs ComfyUI's requirements, with the CPU-torch
#   workarounds its torchvision/torchaudio wheels need. It never downloads ComfyUI itself; one
#   environment serves one ComfyUI tree (.ci/run builds one per supported version);
# - for the canvas tests: Debian's `chromium` (the browser test drives it through the Python
#   `playwright` package of requirements-dev.txt; never `playwright install`) and `nodejs`
#   (`node --test tests/js/`), installed with apt-get when missing and this runs as root
#   (LORALAB_NO_APT=1 skips that); without them those tests are skipped with the reason.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${1:-$root/.venv}
py=${PYTHON:-python3}
torch_pin=${TORCH_PIN:-torch==2.13.0}

[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
constraints="$venv/torch-constraint.txt"
echo "$torch_pin" >"$constraints"
pip() { python -m pip "$@"; }

pip install -q --upgrade pip
pip install -q "$torch_pin"
pip install -q -r "$root/requirements.txt" -c "$constraints"
pip install -q -r "$root/requirements-dev.txt" -c "$constraints"

missing=()
[ -x /usr/bin/chromium ] || command -v chromium >/dev/null || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
if [ ${#missing[@]} -gt 0 ]; then
  if [ -z "${LORALAB_NO_APT:-}" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "dev-env: installing ${missing[*]} with apt-get (canvas tests)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        "${missing[@]}"; } >/dev/null 2>&1 || echo "dev-env: apt-get could not install ${missing[*]}; those tests will be skipped" >&2
  else
    echo "dev-env: ${missing[*]} missing (apt-get install -y ${missing[*]}); those tests will be skipped" >&2
  fi
fi

comfy=$("$root/scripts/find-comfyui.sh" || true)
if [ -n "$comfy" ]; then
  echo "dev-env: ComfyUI found at $comfy; installing its requirements"
  pip install -q -r "$comfy/requirements.txt" requests -c "$constraints"
  # The registry's torchaudio is a CUDA build that cannot load beside CPU torch, and ComfyUI
  # 0.33 imports it at start-up (its audio VAE): keep the pure-Python part of the package,
  # without its compiled libraries (only ComfyUI's audio nodes would need them).
  pip uninstall -q -y torchaudio || true
  pip install -q --no-deps "torchaudio==${TORCHAUDIO_PIN:-2.11.1}"
  python - <<'PY'
import importlib.util, pathlib
lib = pathlib.Path(importlib.util.find_spec("torchaudio").origin).parent / "lib"
for so in lib.glob("*.so"):
    so.unlink()
PY
  python -c "import torchaudio" || { echo "dev-env: torchaudio does not import" >&2; exit 1; }
  # The registry's torchvision is a CUDA build: its fake-op registrations for nms/qnms fail
  # on CPU torch. ComfyUI uses none of its C ops, so guard those two registrations.
  python - <<'PY'
import pathlib, re, importlib.util
spec = importlib.util.find_spec("torchvision")
path = pathlib.Path(spec.origin).parent / "_meta_registrations.py"
src = path.read_text()
if "_loralab_guard" not in src:
    src = re.sub(r'^@(torch\.library\.register_fake\("torchvision::q?nms"\))',
                 r'@(\1 if __import__("torchvision.extension", fromlist=["_has_ops"])._has_ops() else (lambda f: f))',
                 src, flags=re.M)
    path.write_text(src + "\n# _loralab_guard\n")
PY
  python -c "import torchvision" || { echo "dev-env: torchvision still does not import" >&2; exit 1; }
else
  echo "dev-env: no ComfyUI source tree found; only the core tier can run"
fi
echo "dev-env: ready: $venv"
