"""Learning-rate schedules by name, with the semantics of diffusers' get_scheduler.

Each schedule is a factor of the optimizer's learning rates (every param group keeps its own lr).
The factors are pure functions of the step, so a scheduler rebuilt from the same settings plus
load_state_dict() resumes exactly.
"""

from __future__ import annotations

import functools
import math
import warnings

import torch
from torch.optim.lr_scheduler import LambdaLR


def _warmup(step: int, warmup: int) -> float:
    return step / max(1, warmup)


def _progress(step: int, warmup: int, total: int) -> float:
    """Fraction of the post-warmup steps done."""
    return (step - warmup) / max(1, total - warmup)


def _constant(step: int, warmup: int, total: int, cycles: int) -> float:
    return 1.0


def _constant_with_warmup(step: int, warmup: int, total: int, cycles: int) -> float:
    return _warmup(step, warmup) if step < warmup else 1.0


def _linear(step: int, warmup: int, total: int, cycles: int) -> float:
    if step < warmup:
        return _warmup(step, warmup)
    return max(0.0, 1.0 - _progress(step, warmup, total))


def _cosine(step: int, warmup: int, total: int, cycles: int) -> float:
    if step < warmup:
        return _warmup(step, warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * _progress(step, warmup, total))))


def _cosine_with_restarts(step: int, warmup: int, total: int, cycles: int) -> float:
    if step < warmup:
        return _warmup(step, warmup)
    progress = _progress(step, warmup, total)
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((cycles * progress) % 1.0))))


_REGISTRY = {
    "constant": _constant,
    "constant_with_warmup": _constant_with_warmup,
    "linear": _linear,
    "cosine": _cosine,
    "cosine_with_restarts": _cosine_with_restarts,
}

SCHEDULERS: tuple[str, ...] = tuple(_REGISTRY)


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                    num_cycles: int = 1) -> LambdaLR:
    """Builds schedule `name` over `total_steps` optimizer steps, ramping linearly from 0 over
    `warmup_steps` first; `num_cycles` is the number of hard restarts of cosine_with_restarts."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps must be at least 0 and less than total_steps ({total_steps}), "
                         f"got {warmup_steps}")
    if num_cycles < 1:
        raise ValueError(f"num_cycles must be at least 1, got {num_cycles}")
    if name == "constant" and warmup_steps > 0:
        # diffusers' "constant" has no warmup; keep that, but say so rather than drop it silently.
        warnings.warn(f"The constant scheduler ignores warmup_steps={warmup_steps}; "
                      "pick constant_with_warmup to warm up", stacklevel=2)
    # A partial, not a closure: picklable, and LambdaLR's state_dict stores its (empty) __dict__ harmlessly.
    factor = functools.partial(_REGISTRY[name], warmup=warmup_steps, total=total_steps, cycles=num_cycles)
    return LambdaLR(optimizer, factor)
