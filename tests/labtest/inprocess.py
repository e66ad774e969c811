"""ComfyUI imported into the test process (CPU), for direct calls on real ComfyUI objects."""

from __future__ import annotations

import sys
from pathlib import Path


def import_comfyui(comfy_dir: Path, cpu: bool = True):
    """`cpu=False` (the GPU benchmarks) leaves ComfyUI's device choice to ComfyUI."""
    if str(comfy_dir) not in sys.path:
        sys.path.insert(0, str(comfy_dir))
    from comfy.cli_args import args

    args.cpu = cpu
    import utils.install_util  # noqa: F401  before `nodes`: comfy/utils.py shadows ComfyUI's utils package
    import comfy.model_management  # noqa: F401
    import nodes

    return nodes
