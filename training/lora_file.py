"""LoRA files: kohya-compatible metadata and atomic safetensors writes.

A file is written to a temporary name in the target folder and renamed into place, so a crash or
a full disk never leaves a half-written LoRA, and an existing file is never replaced unless the
caller asks for it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

SAVE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_NAME = re.compile(r"^[\w .()\[\]+-]+\Z")  # \Z: "$" would let a trailing newline through


def check_output_name(name: str) -> str:
    """An output name is a file name, not a path: no separators, no '..', no odd characters, and
    not hidden (a leading '.')."""
    name = name.strip()
    if name.endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    if not name or name in (".", "..") or ".." in name or "/" in name or "\\" in name or not _NAME.match(name):
        raise ValueError(f"output name {name!r} must be a plain file name (letters, digits, spaces, "
                         f"'_', '-', '.', brackets), without folders or '..'")
    if name.startswith("."):
        raise ValueError(f"output name {name!r} must not start with '.' (that would make a hidden file)")
    return name


def check_subfolder(subfolder: str) -> str:
    """A subfolder of the loras folder: relative, forward slashes, no '..', no hidden or '.' parts,
    each part a valid file name (at most NAME_MAX bytes)."""
    parts = [p for p in subfolder.replace("\\", "/").split("/") if p]
    if subfolder.startswith(("/", "\\")) or any(p == ".." or not _NAME.match(p) for p in parts):
        raise ValueError(f"subfolder {subfolder!r} must be a relative folder inside the loras folder, without '..'")
    if any(p.startswith(".") for p in parts):
        raise ValueError(f"subfolder {subfolder!r}: a folder name must not start with '.' ('.' itself, or a "
                         f"hidden folder)")
    long = [p for p in parts if len(os.fsencode(p)) > NAME_MAX]
    if long:
        raise ValueError(f"subfolder: the folder name {long[0][:40]!r}... is {len(os.fsencode(long[0]))} bytes "
                         f"long; a folder name may have at most {NAME_MAX}")
    return "/".join(parts)


NAME_MAX = 255  # bytes in one file name on every file system ComfyUI runs on (ext4, APFS, NTFS)
_TMP_PID_DIGITS = 7  # Linux pids are below 2**22 (7 digits)


def temporary_name_length(stem: str) -> int:
    """Bytes in the longest temporary name write_atomic may use for a file of this stem:
    `.<stem>.<pid>.<8 random>.tmp`."""
    return len(os.fsencode(stem)) + 1 + 1 + _TMP_PID_DIGITS + 1 + 8 + 4


_TEMPORARY = re.compile(r"^\..+\.(\d+)\.[A-Za-z0-9_]{8}\.tmp\Z")


def remove_stale_temporaries(folder: Path) -> list[str]:
    """Removes the temporary files of writes cut short by a killed process (`kill -9`, power loss)
    in `folder`: names of write_atomic's form whose process is gone. A write in progress (its
    process alive, this one included) is left alone. Returns the names removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False) or _alive(int(match[1])):
            continue
        try:
            os.remove(entry.path)
            removed.append(entry.name)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


@dataclass(frozen=True)
class TrainingFacts:
    """What the metadata records about a run (kohya's ss_* keys)."""

    base_model_version: str  # kohya's ss_base_model_version ("flux1", "sdxl_base_v1-0", "sd_v1", ...)
    architecture: str  # modelspec.architecture, which A1111/Forge read ("flux-1-dev/lora", ...)
    implementation: str  # modelspec.implementation
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
    meta = {
        "ss_network_module": facts.network_module,
        "ss_network_dim": str(facts.rank),
        "ss_network_alpha": str(facts.alpha),
        "ss_network_args": json.dumps(facts.network_args),
        "ss_base_model_version": facts.base_model_version,
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
        "modelspec.architecture": facts.architecture,
        "modelspec.implementation": facts.implementation,
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
    """Writes a safetensors file next to `path` under a temporary name, then moves it into place.

    Without `overwrite` the move is a hard link, which fails when the name exists: a file that
    appeared meanwhile (another run) is never replaced. A write that fails (a full disk) leaves no
    temporary file and raises an OSError naming the file; one cut short by a killed process leaves
    `.<stem>.<pid>.<random>.tmp`, which remove_stale_temporaries clears later."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path.name} already exists: choose another output name or allow overwriting")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        except (OSError, SafetensorError) as error:
            reason = getattr(error, "strerror", None) or str(error).split(":")[-1].strip() or type(error).__name__
            raise OSError(getattr(error, "errno", None) or errno.EIO, f"cannot write {path.name}: {reason}") from None
        os.chmod(tmp, 0o644)  # the library writes 0600; a LoRA is an ordinary, shareable file
        if overwrite:
            os.replace(tmp, path)
        else:
            _move_without_replacing(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _move_without_replacing(tmp: str, path: Path) -> None:
    try:
        os.link(tmp, path)  # atomic, and fails if the name exists
    except FileExistsError:
        raise FileExistsError(f"{path.name} already exists: choose another output name or allow overwriting") from None
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if path.exists():  # a file system without hard links: check, then rename
            raise FileExistsError(f"{path.name} already exists: choose another output name or allow "
                                  f"overwriting") from None
        os.replace(tmp, path)


def read_lora(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA file (safetensors only: never a pickle). A truncated or otherwise
    unreadable file is a ValueError naming it."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path.name}: only .safetensors LoRA files can be read")
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise ValueError(f"{path.name} cannot be read as a safetensors file ({unreadable_reason(error)})") from None


def unreadable_reason(error: BaseException) -> str:
    """A short reason for a safetensors read failure, without the server's paths."""
    text = getattr(error, "strerror", None) or str(error)
    if "not fully covered" in text or "incomplete" in text.lower() or "header" in text.lower():
        return "it is truncated or damaged: a save that was cut short"
    return text.split(": ")[-1][:200]
