"""The GPU memory benchmark (benchmarks/gpu_memory.py) in its --tiny CPU form: the same parent,
child processes, model build and both implementations as the device run, at demo widths."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_memory.py"


def test_tiny_benchmark_prints_one_json_line_per_run(comfy_dir, tmp_path):
    env = dict(os.environ, COMFYUI_PATH=str(comfy_dir))
    jsonl, table = tmp_path / "bench.jsonl", tmp_path / "bench.md"
    result = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--steps", "2", "--runs", "ours:offload,native:offload",
                             "--jsonl", str(jsonl), "--markdown", str(table)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [json.loads(line) for line in jsonl.read_text().splitlines()] == rows
    assert [(r["impl"], r["memory_mode"]) for r in rows] == [("ours", "offload"), ("native", "offload")]
    ours, native = rows
    assert "error" not in ours, ours
    assert ours["arch"] == "flux-tiny" and ours["weights"] == "fp8_e4m3fn" and ours["rank"] == 16
    assert ours["device"] == "cpu" and ours["memory"] == "full" and ours["steps"] == 2
    assert math.isfinite(ours["loss"]) and ours["step_s"] > 0
    if "unsupported" not in native:  # ComfyUI 0.33's TrainLoraNode (0.3.64's has no offloading input)
        assert "error" not in native, native
        assert native["memory"] == "full" and native["steps"] == 2 and math.isfinite(native["loss"])
    assert table.read_text().count("\n| fp8_e4m3fn | 64 |") == 2
