"""Loads rembg for background removal without letting it take the host process down.

rembg imports onnxruntime (which we never install ourselves, so a user's onnxruntime-gpu is not
replaced), and some rembg releases call sys.exit when it is missing. Its first import also
compiles numba kernels (~60 s), cached in a writable folder so later imports are fast.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..training.optional_deps import MissingDependency, import_optional

ONNXRUNTIME_HINT = "pip install onnxruntime   (or: pip install onnxruntime-gpu, for NVIDIA GPUs)"


def default_numba_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "comfyui-lora-lab" / "numba"


def load_rembg(numba_cache: Path | None = None):
    """Returns the rembg module, or raises MissingDependency saying which pip command fixes it."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise MissingDependency("Background removal needs onnxruntime, which is not installed. "
                                f"Install one into the Python that runs ComfyUI: {ONNXRUNTIME_HINT}")
    cache = Path(numba_cache or os.environ.get("NUMBA_CACHE_DIR") or default_numba_cache())
    cache.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NUMBA_CACHE_DIR", str(cache))
    import_optional("onnxruntime", "Background removal", ONNXRUNTIME_HINT)
    return import_optional("rembg", "Background removal", "pip install rembg")
