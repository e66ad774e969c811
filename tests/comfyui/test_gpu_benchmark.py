"""The GPU memory benchmark (benchmarks/gpu_memory.py) in its --tiny CPU form: the same parent,
child processes, model builds and implementations as the device run, at demo widths, for every
architecture it measures."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from labtest import families

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_memory.py"


def _run(comfy_dir, tmp_path, *args, timeout=240):
    env = dict(os.environ, COMFYUI_PATH=str(comfy_dir))
    jsonl, table = tmp_path / "bench.jsonl", tmp_path / "bench.md"
    result = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--steps", "2", *args,
                             "--jsonl", str(jsonl), "--markdown", str(table)],
                            env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [json.loads(line) for line in jsonl.read_text().splitlines()] == rows
    return rows, table.read_text()


def _native_inputs() -> set[str]:
    """The inputs of this ComfyUI's TrainLoraNode (none: a node without a V3 schema, 0.3.64)."""
    families.available()  # imports the ComfyUI under test in this process
    from comfy_extras.nodes_train import TrainLoraNode

    return {i.id for i in TrainLoraNode.define_schema().inputs} if hasattr(TrainLoraNode, "define_schema") else set()


def _trained(row, memory="full"):
    assert "error" not in row and "unsupported" not in row, row
    assert row["device"] == "cpu" and row["memory"] == memory and row["steps"] == 2, row
    assert math.isfinite(row["loss"]) and row["step_s"] > 0, row


def test_tiny_benchmark_prints_one_json_line_per_run(comfy_dir, tmp_path):
    rows, table = _run(comfy_dir, tmp_path, "--runs", "ours:offload,native:offload,native:offload+bypass+qbwd",
                       "--dynamic-vram", "off,on")
    assert [(r["impl"], r["memory_mode"], r["dynamic_vram"]) for r in rows] == [
        ("ours", "offload", False), ("native", "offload", False), ("native", "offload+bypass+qbwd", False),
        ("ours", "offload", True), ("native", "offload", True), ("native", "offload+bypass+qbwd", True)]
    ours = rows[0]
    _trained(ours)
    assert ours["arch"] == "flux1-dev" and ours["tiny"] and ours["weights"] == "fp8_e4m3fn" and ours["rank"] == 16
    for native in rows[1:3]:
        if {"offloading", "bypass_mode", "quantized_backward"} <= _native_inputs():  # 0.33's node
            _trained(native)
        else:  # 0.3.64's TrainLoraNode has none of them
            assert native["unsupported"].startswith("this ComfyUI's TrainLoraNode has no"), native
    for row in rows[3:]:  # a CPU never gets ComfyUI's dynamic patcher: said, not trained
        assert row["unsupported"].startswith("dynamic VRAM needs an NVIDIA GPU"), row
    assert table.count("\n| flux1-dev (tiny) |") == 6 and table.count("| fp8_e4m3fn | 64 |") == 6


def test_tiny_benchmark_builds_every_architecture(comfy_dir, tmp_path):
    rows, _ = _run(comfy_dir, tmp_path, "--archs", "flux2-klein,z-image,qwen-image", "--runs", "ours:auto")
    assert [r["arch"] for r in rows] == ["flux2-klein", "z-image", "qwen-image"]
    for row in rows:
        demo = {"flux2-klein": "Flux.2 Klein", "z-image": "Z-Image", "qwen-image": "Qwen-Image"}[row["arch"]]
        if demo not in families.available():  # Flux.2 and Z-Image: ComfyUI 0.33 only
            assert row["unsupported"].startswith("this ComfyUI has no"), row
        else:
            _trained(row)


def test_tiny_benchmark_trains_a_scaled_fp8_checkpoint(comfy_dir, tmp_path):
    """`fp8_scaled` goes through ComfyUI's own route for `*_fp8_scaled` files (0.33: its quantized
    layers, where TrainLoraNode's quantized backward acts)."""
    rows, _ = _run(comfy_dir, tmp_path, "--weights", "fp8_scaled", "--runs", "ours:auto,native:offload+bypass+qbwd")
    assert [(r["weights"], r["impl"]) for r in rows] == [("fp8_scaled", "ours"), ("fp8_scaled", "native")]
    _trained(rows[0])
    if {"offloading", "bypass_mode", "quantized_backward"} <= _native_inputs():
        _trained(rows[1])
    else:
        assert rows[1]["unsupported"].startswith("this ComfyUI's TrainLoraNode has no"), rows[1]
