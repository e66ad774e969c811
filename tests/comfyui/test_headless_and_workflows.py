"""The README's main command (scripts/train_headless.py) and the example workflow it mirrors."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from labtest import PACK_ROOT
from labtest.server import execution_error
from labtest.validate_workflow import comparable
from labtest.workflows import stock_lora_load_prompt

SCRIPT = PACK_ROOT / "scripts" / "train_headless.py"
EXAMPLE = PACK_ROOT / "example_workflows" / "flux_single_image_masked_lora.json"


def load_script():
    spec = importlib.util.spec_from_file_location("loralab_train_headless", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_workflow_is_the_headless_graph_with_real_model_files(server):
    """The committed UI workflow is regenerated from the script's graph against this ComfyUI's
    node definitions: the two cannot drift apart, and every widget value sits where the frontend
    expects it."""
    script = load_script()
    args = script.parse_args(["--unet", "flux1-dev.safetensors", "--write-workflow", "x.json"])
    expected = script.to_ui_workflow(script.example_prompt(args), server.get("/object_info"), script.WORKFLOW_NOTE)
    assert comparable(json.loads(EXAMPLE.read_text())) == comparable(expected)
    types = {node["type"] for node in expected["nodes"]}
    assert {"UNETLoader", "DualCLIPLoader", "VAELoader", "LoadImage", "LoRALabTrain", "Note"} <= types


def test_headless_smoke_run_prints_the_saved_lora_last(server):
    result = subprocess.run([sys.executable, str(SCRIPT), "--url", server.url, "--steps", "6", "--save-every", "3",
                             "--name", "headless_smoke"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert Path(last).is_file() and Path(last).name == "headless_smoke.safetensors"
    assert "step 6/6" in result.stderr and "loss" in result.stderr and "ETA" in result.stderr
    assert "smoke run" in result.stderr
    # the stock LoraLoader of this ComfyUI maps every key of the printed file
    log_before = len(server.log_tail(100000).splitlines())
    entry = server.run(stock_lora_load_prompt("Flux", Path(last).relative_to(server.base / "models" / "loras").as_posix()))
    assert execution_error(entry) is None, execution_error(entry)
    new_log = "\n".join(server.log_tail(100000).splitlines()[log_before:])
    assert "lora key not loaded" not in new_log, new_log[-2000:]


def test_headless_run_fails_loudly(server):
    result = subprocess.run([sys.executable, str(SCRIPT), "--url", server.url, "--steps", "2",
                             "--name", "../outside"], capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "output name" in result.stderr
