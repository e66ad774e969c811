"""Optimizers by name, with extra arguments written the way kohya sd-scripts guides write them."""

from __future__ import annotations

import importlib
import inspect
import operator
import re
import warnings
from dataclasses import dataclass

import torch

from .optional_deps import import_optional


@dataclass(frozen=True)
class _OptimizerSource:
    module: str
    attr: str  # dotted path inside module
    pip_hint: str | None = None  # None: ships with torch, never missing

    def load(self, name: str) -> type[torch.optim.Optimizer]:
        if self.pip_hint is None:
            module = importlib.import_module(self.module)
        else:
            module = import_optional(self.module, f"The {name} optimizer", self.pip_hint)
        return operator.attrgetter(self.attr)(module)


# bitsandbytes is imported at its top level: a stale sys.modules entry for bitsandbytes.optim must
# not hide that the package itself cannot be imported.
_REGISTRY: dict[str, _OptimizerSource] = {
    "AdamW": _OptimizerSource("torch.optim", "AdamW"),
    "AdamW8bit": _OptimizerSource("bitsandbytes", "optim.AdamW8bit", "pip install bitsandbytes"),
    "Lion": _OptimizerSource("bitsandbytes", "optim.Lion", "pip install bitsandbytes"),  # torch has no Lion
    "Lion8bit": _OptimizerSource("bitsandbytes", "optim.Lion8bit", "pip install bitsandbytes"),
    "Prodigy": _OptimizerSource("prodigyopt", "Prodigy", "pip install prodigyopt"),
    "Adafactor": _OptimizerSource("torch.optim", "Adafactor"),
}

OPTIMIZERS: tuple[str, ...] = tuple(_REGISTRY)

_QUOTES = ("'", '"')


def _parse_value(raw: str):
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in _QUOTES:
        return raw[1:-1]  # quoted: the user meant a string, even "True" or "1"
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def parse_optimizer_args(text: str) -> dict:
    """Parses `decouple=True betas=0.9,0.99 d_coef=2` into {"decouple": True, "betas": (0.9, 0.99), ...}.

    Tokens are separated by spaces, newlines or commas; a comma-separated piece without '=' continues
    the previous value as a tuple.
    """
    # Glue "key = value" and "0.9, 0.99" so that whitespace separates tokens only.
    text = re.sub(r"\s*([=,])\s*", r"\1", text.strip())
    entries: list[tuple[str, list[str]]] = []
    for token in text.split():
        for index, piece in enumerate(p for p in token.split(",") if p):
            key, has_equals, value = piece.partition("=")
            if has_equals and key.isidentifier() and value and "=" not in value:
                entries.append((key, [value]))
            elif not has_equals and index > 0:
                entries[-1][1].append(piece)
            else:
                raise ValueError(f"Optimizer argument {piece!r} is not written as key=value (e.g. weight_decay=0.1)")
    return {key: _parse_value(values[0]) if len(values) == 1 else tuple(map(_parse_value, values))
            for key, values in entries}


def _check_args(name: str, cls: type, args: dict) -> None:
    if "lr" in args:
        raise ValueError(f"Set the learning rate of {name} with the learning-rate input, not in its optimizer args")
    accepted = [p for p in inspect.signature(cls).parameters if p not in ("params", "lr")]
    for key in args:
        if key not in accepted:
            raise ValueError(f"{name} has no argument {key!r}; it accepts: {', '.join(accepted)}")


def build_optimizer(name: str, param_groups, lr: float, args: dict | str = "") -> torch.optim.Optimizer:
    """Builds optimizer `name` over `param_groups` (dicts that may carry their own "lr", or plain
    parameters) with default learning rate `lr` and extra keyword `args` (a dict or kohya-style text)."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    if isinstance(args, str):
        args = parse_optimizer_args(args)
    cls = _REGISTRY[name].load(name)
    _check_args(name, cls, args)
    param_groups = list(param_groups)
    if name == "Prodigy":
        lrs = sorted({group.get("lr", lr) if isinstance(group, dict) else lr for group in param_groups})
        if lrs and lrs[0] < 0.1:
            # Prodigy estimates the step size itself and lr multiplies that estimate: 1e-4 barely trains.
            warnings.warn("Prodigy expects lr≈1.0 (it finds the step size itself); "
                          f"got lr {', '.join(map(str, lrs))}", stacklevel=2)
    return cls(param_groups, lr=lr, **args)
