"""Training state for exact resume: adapter parameters, optimizer and scheduler state, the step
reached, and a fingerprint of the settings that must match. One safetensors file (tensors) with
the rest as JSON in its metadata — never a pickle. Its extension is `.trainstate`, so ComfyUI's
LoRA lists do not offer it as a LoRA.

Data order, noise and timesteps need no saved RNG: the loop derives them from (seed, step).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .lora_file import unreadable_reason, write_atomic

SUFFIX = ".trainstate"
_FORMAT = "loralab-trainstate-1"


def _split(value, prefix: str, tensors: dict):
    """Tensors go to `tensors` under a path key; everything else stays as JSON-able data."""
    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(value, dict):
        return {"__dict__": [[_split(k, f"{prefix}.k{i}", tensors), _split(v, f"{prefix}.{i}", tensors)]
                             for i, (k, v) in enumerate(value.items())]}
    if isinstance(value, (list, tuple)):
        items = [_split(v, f"{prefix}.{i}", tensors) for i, v in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a training state ({prefix})")


def _join(data, tensors: dict):
    if isinstance(data, dict):
        if "__tensor__" in data:
            return tensors[data["__tensor__"]]
        if "__dict__" in data:
            return {_join(k, tensors): _join(v, tensors) for k, v in data["__dict__"]}
        if "__tuple__" in data:
            return tuple(_join(v, tensors) for v in data["__tuple__"])
    if isinstance(data, list):
        return [_join(v, tensors) for v in data]
    return data


def save_state(path: Path, network: torch.nn.Module, optimizer, scheduler, step: int, fingerprint: dict,
               overwrite: bool = False) -> Path:
    """Writes the state atomically; an existing file is replaced only with `overwrite`."""
    tensors: dict[str, torch.Tensor] = {}
    payload = {
        "format": _FORMAT,
        "step": step,
        "fingerprint": fingerprint,
        # buffers too: lycoris keeps the max-norm rescale factor (scale_weight_norms) in one
        "network": _split({**dict(network.named_parameters()), **dict(network.named_buffers())}, "net", tensors),
        "optimizer": _split(optimizer.state_dict(), "opt", tensors),
        "scheduler": _split(scheduler.state_dict(), "sched", tensors),
    }
    return write_atomic(Path(path), tensors, {"loralab_state": json.dumps(payload)}, overwrite=overwrite)


def load_state(path: Path, network: torch.nn.Module, optimizer, scheduler, fingerprint: dict) -> int:
    """Restores everything in place; returns the step to continue from."""
    path = Path(path)
    if path.suffix != SUFFIX:
        raise ValueError(f"{path.name}: a training state file ends in {SUFFIX}")
    try:
        with safe_open(str(path), "pt") as f:
            raw = (f.metadata() or {}).get("loralab_state")
    except (OSError, SafetensorError) as error:
        raise ValueError(f"{path.name} cannot be read ({unreadable_reason(error)})") from None
    if raw is None:
        raise ValueError(f"{path.name} is not a LoRA Lab training state")
    payload = json.loads(raw)
    if payload.get("format") != _FORMAT:
        raise ValueError(f"{path.name}: unknown training state format {payload.get('format')!r}")
    different = {k: (payload["fingerprint"].get(k), v) for k, v in fingerprint.items() if payload["fingerprint"].get(k) != v}
    if different:
        details = ", ".join(f"{k}: saved {old!r}, now {new!r}" for k, (old, new) in different.items())
        raise ValueError(f"{path.name} was saved by a run with other settings ({details}); resume needs the same ones")
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise ValueError(f"{path.name} cannot be read ({unreadable_reason(error)})") from None
    saved = _join(payload["network"], tensors)
    with torch.no_grad():
        for name, value in [*network.named_parameters(), *network.named_buffers()]:
            value.copy_(saved[name].to(value.device, value.dtype))
    optimizer.load_state_dict(_join(payload["optimizer"], tensors))
    scheduler.load_state_dict(_join(payload["scheduler"], tensors))
    return int(payload["step"])
