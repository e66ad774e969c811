"""Loading the pack the way ComfyUI does is cheap: no heavy optional library is imported."""

import json
import subprocess
import sys

from labtest import PACK_ROOT

HEAVY_OPTIONAL = ["rembg", "onnxruntime", "bitsandbytes", "lycoris", "prodigyopt", "numba"]

LOAD_LIKE_COMFYUI = """
import asyncio, json, sys, time
sys.path.insert(0, {comfy!r})
from comfy.cli_args import args
args.cpu = True
import utils.install_util
import nodes
before = set(sys.modules)
start = time.perf_counter()
ok = asyncio.run(nodes.load_custom_node({pack!r}))
seconds = time.perf_counter() - start
print(json.dumps({{"ok": ok, "seconds": seconds,
                   "heavy": sorted(m for m in {heavy!r} if m in sys.modules),
                   "ours": sorted(k for k, v in nodes.NODE_CLASS_MAPPINGS.items() if k.startswith("LoRALab"))}}))
"""


def test_pack_loads_in_comfyui_without_heavy_imports(comfy_dir):
    code = LOAD_LIKE_COMFYUI.format(comfy=str(comfy_dir), pack=str(PACK_ROOT), heavy=HEAVY_OPTIONAL)
    result = subprocess.run([sys.executable, "-c", code], cwd=comfy_dir, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["ok"] and "LoRALabDemoModel" in report["ours"]
    assert report["heavy"] == []
    print(f"pack import + node registration: {report['seconds'] * 1000:.1f} ms")
