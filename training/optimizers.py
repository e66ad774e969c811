"""Optimizers by name, with extra arguments written the way kohya sd-scripts guides write them."""

from __future__ import annotations

import ast
import importlib
import inspect
import math
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
    # kohya's Adafactor (scale_parameter, relative_step, warmup_init); ComfyUI installs transformers.
    "Adafactor": _OptimizerSource("transformers", "optimization.Adafactor", "pip install transformers"),
}

OPTIMIZERS: tuple[str, ...] = tuple(_REGISTRY)

# Adafactor without these arguments follows the learning-rate input and the scheduler, as the other
# optimizers do (kohya's own default, relative_step=True, ignores both: write it to get it).
ADAFACTOR_DEFAULTS = {"scale_parameter": False, "relative_step": False, "warmup_init": False}

_QUOTES = ("'", '"')
_SPECIAL = {"true": True, "false": False, "none": None, "inf": math.inf, "+inf": math.inf, "-inf": -math.inf}


def _parse_value(key: str, raw: str):
    """One value the way kohya reads it (ast.literal_eval), also taking true/false/none in any case
    and inf; anything else (`decouple=yes`) is an error naming the argument."""
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in _QUOTES:
        return raw[1:-1]  # quoted: the user meant a string, even "True" or "1"
    if raw.lower() in _SPECIAL:
        return _SPECIAL[raw.lower()]
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = None
    if isinstance(value, (bool, int, float)):
        return value
    raise ValueError(f"Optimizer argument {key}={raw}: {raw!r} is not a value (write True or False, a number, "
                     f"numbers separated by commas, or a quoted string)")


def _parse_raw(key: str, raw: str):
    raw = raw.strip(",")
    if raw[:1] in "([" and raw[-1:] in ")]":  # betas=(0.9,0.99), as Python writes a tuple
        raw = raw[1:-1]
    pieces = [p for p in raw.split(",") if p]
    if not pieces:
        raise ValueError(f"Optimizer argument {key + '=' + raw!r} has no value (e.g. weight_decay=0.1)")
    values = tuple(_parse_value(key, p) for p in pieces)
    return values[0] if len(values) == 1 and "," not in raw else values


def parse_optimizer_args(text: str) -> dict:
    """Parses kohya's optimizer_args as pasted from a guide or config into Python values:
    `decouple=True weight_decay=0.1 betas=0.9,0.99` (the GUI field), the same line in quotes,
    `optimizer_args = [ "decouple=True", "betas=0.9,0.99",]` (a TOML config) or
    `--optimizer_args "decouple=True" ...` (a command line). Values are read as kohya reads them
    (ast.literal_eval: True/False, numbers, `0.9,0.99` a tuple); an unreadable one is an error.
    """
    text = text.strip()
    text = re.sub(r"^(--)?optimizer_args\b\s*=?\s*", "", text)  # the TOML key or the command-line flag
    if text.startswith("[") and text.endswith("]"):  # a TOML list of "key=value" strings
        text = text[1:-1]
    # Quotes around whole key=value groups (the guide's quoted line, each TOML item) are not part of
    # them; quotes after '=' are (a string value).
    text = re.sub(r"""(^|[\s,])(["'])([^"']*=[^"']*)\2""", r"\1 \3 ", text)
    # Glue "key = value" and "0.9, 0.99" so that whitespace separates tokens only.
    text = re.sub(r"\s*([=,])\s*", r"\1", text.strip())
    args: dict = {}
    for token in text.split():
        starts = list(re.finditer(r"(?:^|,)([A-Za-z_]\w*)=", token))
        head = token[:starts[0].start()] if starts else token
        if head.strip(","):
            raise ValueError(f"Optimizer argument {head.strip(',')!r} is not written as key=value "
                             f"(e.g. weight_decay=0.1)")
        for match, following in zip(starts, starts[1:] + [None]):
            key = match.group(1)
            raw = token[match.end():following.start() if following else len(token)]
            if not raw.strip(","):
                raise ValueError(f"Optimizer argument {key + '=' + raw!r} is not written as key=value "
                                 f"(e.g. weight_decay=0.1)")
            if key in args:
                raise ValueError(f"Optimizer argument {key!r} is given twice")
            args[key] = _parse_raw(key, raw)
    return args


def _describe(value) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return repr(value) if isinstance(value, str) else str(value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_value(name: str, key: str, value, default) -> None:
    """`value` against the kind of value the optimizer's signature gives `key` by default."""
    given = f"{key}={_describe(value)}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name}'s {key} is True or False, not {given}")
    elif isinstance(default, tuple):
        if not (isinstance(value, tuple) and len(value) == len(default)
                and all(v is None or _is_number(v) for v in value)):
            example = ",".join(str(d) for d in default)
            raise ValueError(f"{name}'s {key} is {len(default)} numbers separated by a comma (like "
                             f"{key}={example}), not {given}")
    elif _is_number(default):
        if not _is_number(value):
            raise ValueError(f"{name}'s {key} is a number (like {key}={default}), not {given}")
        if isinstance(default, int) and key in _WHOLE and value != int(value):
            raise ValueError(f"{name}'s {key} is a whole number, not {given}")
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise ValueError(f"{name}'s {key} is a quoted string, not {given}")
    elif not (value is None or _is_number(value) or isinstance(value, bool)):  # None default: optional
        raise ValueError(f"{name}'s {key} is a number, True/False or None, not {given}")


_WHOLE = {"optim_bits", "min_8bit_size", "slice_p", "percentile_clipping"}


def check_optimizer_args(name: str, args: dict | str, cls: type | None = None) -> dict:
    """The parsed arguments, each checked against `name`'s signature (its name, and the kind of
    value its default has), so that a wrong one is refused, named, before anything trains."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    if isinstance(args, str):
        args = parse_optimizer_args(args)
    if "lr" in args:
        raise ValueError(f"Set the learning rate of {name} with the learning-rate input, not in its optimizer args")
    cls = cls or _REGISTRY[name].load(name)
    parameters = {k: p for k, p in inspect.signature(cls).parameters.items() if k not in ("params", "lr")}
    for key, value in args.items():
        if key not in parameters:
            raise ValueError(f"{name} has no argument {key!r}; it accepts: {', '.join(parameters)}")
        default = parameters[key].default
        _check_value(name, key, value, None if default is inspect.Parameter.empty else default)
    return args


def optimizer_notes(name: str, args: dict | str) -> list[str]:
    """Settings that cannot take effect with these arguments, to tell the user."""
    if isinstance(args, str):
        args = parse_optimizer_args(args)
    if name == "Adafactor" and args.get("relative_step"):
        return ["Adafactor with relative_step=True finds its own step size: the learning rate and the "
                "scheduler have no effect (write relative_step=False to use them)"]
    return []


def optimizer_description(name: str, args: dict | str = "") -> str:
    """kohya's ss_optimizer: the optimizer class's full name and the arguments it was built with
    (`prodigyopt.prodigy.Prodigy(decouple=True,weight_decay=0.1,betas=(0.9, 0.99))`)."""
    cls = _REGISTRY[name].load(name)
    args = check_optimizer_args(name, args, cls)
    if name == "Adafactor":
        args = {**ADAFACTOR_DEFAULTS, **args}
    listed = ",".join(f"{key}={value}" for key, value in args.items())
    return f"{cls.__module__}.{cls.__name__}" + (f"({listed})" if listed else "")


def build_optimizer(name: str, param_groups, lr: float, args: dict | str = "") -> torch.optim.Optimizer:
    """Builds optimizer `name` over `param_groups` (dicts that may carry their own "lr", or plain
    parameters) with default learning rate `lr` and extra keyword `args` (a dict or kohya-style text)."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    cls = _REGISTRY[name].load(name)
    args = dict(check_optimizer_args(name, args, cls))
    param_groups = list(param_groups)
    if name == "Prodigy":
        lrs = sorted({group.get("lr", lr) if isinstance(group, dict) else lr for group in param_groups})
        if lrs and lrs[0] < 0.1:
            # Prodigy estimates the step size itself and lr multiplies that estimate: 1e-4 barely trains.
            warnings.warn("Prodigy expects lr≈1.0 (it finds the step size itself); "
                          f"got lr {', '.join(map(str, lrs))}", stacklevel=2)
    if name == "Adafactor":
        args = {**ADAFACTOR_DEFAULTS, **args}
        if args["relative_step"]:
            # transformers refuses a default lr with relative_step; the groups keep theirs (unused by
            # Adafactor) so that the scheduler and the logged history still have numbers.
            groups = [g if isinstance(g, dict) else {"params": [g]} for g in param_groups]
            if groups and not isinstance(param_groups[0], dict):
                groups = [{"params": list(param_groups)}]
            return cls([{**g, "lr": g.get("lr", lr)} for g in groups], lr=None, **args)
    return cls(param_groups, lr=lr, **args)
