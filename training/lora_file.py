"""LoRA files: kohya-compatible metadata and atomic safetensors writes.

A file is written to a temporary name in the target folder and renamed into place, so a crash or
a full disk never leaves a half-written LoRA, and an existing file is never replaced unless the
caller asks for it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

# Per base family: kohya's ss_base_model_version and the modelspec architecture A1111/Forge read.
BASE_MODELS = {
    "flux": ("flux1", "flux-1-dev/lora"),
    "sdxl": ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora"),
    "sd15": ("sd_v1", "stable-diffusion-v1/lora"),
}
SAVE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_NAME = re.compile(r"^[\w .()\[\]+-]+\Z")  # \Z: "$" would let a trailing newline through


def check_output_name(name: str) -> str:
    """An output name is a file name, not a path: no separators, no '..', no odd characters."""
    name = name.strip()
    if name.endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    if not name or name in (".", "..") or ".." in name or "/" in name or "\\" in name or not _NAME.match(name):
        raise ValueError(f"output name {name!r} must be a plain file name (letters, digits, spaces, "
                         f"'_', '-', '.', brackets), without folders or '..'")
    return name


def check_subfolder(subfolder: str) -> str:
    """A subfolder of the loras folder: relative, forward slashes, no '..'."""
    parts = [p for p in subfolder.replace("\\", "/").split("/") if p]
    if subfolder.startswith(("/", "\\")) or any(p == ".." or not _NAME.match(p) for p in parts):
        raise ValueError(f"subfolder {subfolder!r} must be a relative folder inside the loras folder, without '..'")
    return "/".join(parts)


@dataclass(frozen=True)
class TrainingFacts:
    """What the metadata records about a run (kohya's ss_* keys)."""

    base: str  # "flux" | "sdxl" | "sd15"
    output_name: str
    network_module: str
    rank: int
    alpha: float
    network_args: dict
    steps: int
    epoch: int
    learning_rate: float
    optimizer: str
    resolution: str
    seed: int
    clip_skip: int | None = None
    tag_frequency: dict | None = None
    text_encoder_lr: float = 0.0  # 0: text encoder not trained
    settings: dict[str, str] = field(default_factory=dict)  # run_metadata.settings_metadata: over the keys above


def build_metadata(facts: TrainingFacts) -> dict[str, str]:
    if facts.base not in BASE_MODELS:
        raise ValueError(f"unknown base model family {facts.base!r}")
    version, architecture = BASE_MODELS[facts.base]
    meta = {
        "ss_network_module": facts.network_module,
        "ss_network_dim": str(facts.rank),
        "ss_network_alpha": str(facts.alpha),
        "ss_network_args": json.dumps(facts.network_args),
        "ss_base_model_version": version,
        "ss_output_name": facts.output_name,
        "ss_steps": str(facts.steps),
        "ss_epoch": str(facts.epoch),
        "ss_learning_rate": str(facts.learning_rate),
        "ss_optimizer": facts.optimizer,
        "ss_resolution": facts.resolution,
        "ss_seed": str(facts.seed),
        "ss_training_finished_at": str(int(time.time())),
        "ss_tag_frequency": json.dumps(facts.tag_frequency or {}),
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": architecture,
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models" if facts.base != "flux"
        else "https://github.com/black-forest-labs/flux",
        "modelspec.title": facts.output_name,
        "training_tool": "LoRA Lab (ComfyUI)",
    }
    if facts.clip_skip is not None:
        meta["ss_clip_skip"] = str(facts.clip_skip)
    meta["ss_unet_lr"] = str(facts.learning_rate)
    meta["ss_text_encoder_lr"] = str(facts.text_encoder_lr)
    meta["ss_network_train_unet_only"] = str(facts.text_encoder_lr == 0)
    meta.update(facts.settings)
    return meta


def write_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                 overwrite: bool = False) -> Path:
    """Writes a safetensors file next to `path` under a temporary name, then renames it."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists: choose another output name or allow overwriting")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        if not overwrite and path.exists():  # someone else wrote it meanwhile
            raise FileExistsError(f"{path} already exists: choose another output name or allow overwriting")
        os.replace(tmp, path)
        os.chmod(path, 0o644)  # the library writes 0600; a LoRA is an ordinary, shareable file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_lora(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA file (safetensors only: never a pickle)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path.name}: only .safetensors LoRA files can be read")
    return load_file(str(path))
