"""End to end through a real ComfyUI server's HTTP API: the pack loads, its nodes are listed
with tooltips, and workflows using them execute; bad input is refused and the server lives on."""

import re
import subprocess

import pytest
from PIL import Image

from labtest.blocking import blocker_dir
from labtest.server import comfy_command, execution_error, prepare_base_dir, refusal, server_env
from labtest.workflows import demo_sampling_prompt

PACK_NODE_PREFIX = "LoRALab"
OPTIONAL_PACKAGES = ["rembg", "onnxruntime", "bitsandbytes", "lycoris", "prodigyopt"]


def pack_nodes(server):
    info = server.get("/object_info")
    return {name: spec for name, spec in info.items() if name.startswith(PACK_NODE_PREFIX)}


def test_nodes_are_listed_with_category_and_tooltips(server):
    nodes = pack_nodes(server)
    assert "LoRALabDemoModel" in nodes
    for name, spec in nodes.items():
        assert spec["category"].startswith("LoRA Lab/"), name
        inputs = {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}
        missing = [key for key, (_, options) in ((k, (v[0], v[1] if len(v) > 1 else {})) for k, v in inputs.items())
                   if not options.get("tooltip")]
        assert not missing, f"{name}: inputs without tooltip: {missing}"
        tooltips = spec.get("output_tooltips") or []
        assert len(tooltips) == len(spec["output"]) and all(tooltips), f"{name}: outputs without tooltip"
    assert nodes["LoRALabDemoModel"]["category"] == "LoRA Lab/testing"


@pytest.mark.parametrize("family", ["Flux", "SD1.5", "SDXL"])
def test_demo_model_workflow_executes_over_http(server, family):
    prefix = f"demo_{family.replace('.', '')}"
    entry = server.run(demo_sampling_prompt(family, prefix=prefix))
    assert execution_error(entry) is None, execution_error(entry)
    images = entry["outputs"]["7"]["images"]
    path = server.base / "output" / images[0]["subfolder"] / images[0]["filename"]
    with Image.open(path) as image:
        assert image.size == (64, 64)


def test_bad_widget_value_is_refused_and_server_keeps_running(server):
    prompt = demo_sampling_prompt("Flux")
    prompt["1"]["inputs"]["family"] = "SD9"
    error = refusal(server, prompt)  # 0.33 refuses it up front, 0.3.64 leaves it to the node
    assert "SD9" in error and ("family must be one of Flux, " in error
                               or ('"value_not_in_list"' in error and '"input_name": "family"' in error)), error
    assert server.alive()
    entry = server.run(demo_sampling_prompt("SD1.5", prefix="after_error"))
    assert execution_error(entry) is None


def test_pack_loads_when_optional_dependencies_are_missing(comfy_dir, tmp_path):
    """rembg (whose import calls sys.exit without onnxruntime), onnxruntime, bitsandbytes,
    lycoris and prodigyopt made unimportable: ComfyUI still starts and the pack still loads."""
    blocker = blocker_dir(tmp_path / "blocker", OPTIONAL_PACKAGES)
    base = prepare_base_dir(tmp_path / "base")
    result = subprocess.run(comfy_command(comfy_dir, base, "--quick-test-for-ci"), cwd=comfy_dir,
                            env=server_env({"PYTHONPATH": str(blocker)}), capture_output=True, text=True,
                            timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    log = re.sub(r"\x1b\[[0-9;]*m|\[(INFO|WARNING)\] ?", "", log)  # 0.33 prefixes lines with a coloured level
    loaded = re.search(r"^\s+[\d.]+ seconds(?P<failed> \(IMPORT FAILED\))?: .*comfyui-lora-lab$", log, re.M)
    assert loaded, log[-3000:]
    assert not loaded.group("failed"), log[-3000:]
