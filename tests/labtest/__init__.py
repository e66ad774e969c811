"""Helpers for the test suite (not part of the node pack)."""

import importlib.util
import os
import sys
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "comfyui_lora_lab"


def register_pack():
    """Imports the repo root as the package `comfyui_lora_lab` (idempotent)."""
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    spec = importlib.util.spec_from_file_location(
        PACKAGE, PACK_ROOT / "__init__.py", submodule_search_locations=[str(PACK_ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    return module


def find_comfyui() -> Path | None:
    """The ComfyUI source tree for the ComfyUI tier, looked up like scripts/find-comfyui.sh."""
    candidates = [os.environ.get("COMFYUI_PATH"), PACK_ROOT.parent.parent, Path.home() / "comfy" / "ComfyUI"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "comfy" / "model_patcher.py").is_file() \
                and (Path(candidate) / "main.py").is_file():
            return Path(candidate).resolve()
    return None
