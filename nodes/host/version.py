"""What this ComfyUI offers, found by feature detection (never by parsing version strings):
the checks at start-up, the training flags some model code reads, and how Cancel is raised."""

from __future__ import annotations

import contextlib
import logging

log = logging.getLogger("LoRALab")

# The range the test suite runs against (both ends in CI); other versions are not refused.
TESTED_COMFYUI_RANGE = ("0.3.64", "0.33.0")

# Module-level flags of comfy.model_management that ComfyUI's own trainer sets while it trains:
# `in_training` makes model code take autograd-friendly paths (0.33: Flux's rope runs in plain
# torch instead of comfy-kitchen's kernel, which has no backward). Absent on older versions.
TRAINING_FLAGS = ("in_training",)


def comfyui_version() -> str:
    try:
        import comfyui_version

        return comfyui_version.__version__
    except ImportError:
        return "unknown"


def check_host() -> list[str]:
    """Feature checks for what the pack relies on. Returns problems (empty when all is there)."""
    problems = []
    try:
        from comfy.model_patcher import ModelPatcher
    except ImportError as e:
        return [f"ComfyUI's comfy.model_patcher cannot be imported ({e})"]
    for method in ("clone", "add_patches", "add_weight_wrapper", "set_model_patch", "set_injections"):
        if not hasattr(ModelPatcher, method):
            problems.append(f"ModelPatcher.{method} is missing")
    if problems:
        log.info("LoRA Lab is tested with ComfyUI %s to %s; this is %s", *TESTED_COMFYUI_RANGE, comfyui_version())
    return problems


@contextlib.contextmanager
def training_flags():
    """ComfyUI's training flag(s) set for the duration of training, restored afterwards (also on
    an error or Cancel)."""
    import comfy.model_management as mm

    present = [name for name in TRAINING_FLAGS if hasattr(mm, name)]
    saved = {name: getattr(mm, name) for name in present}
    for name in present:
        setattr(mm, name, True)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(mm, name, value)


def interrupted() -> bool:
    import comfy.model_management as mm

    return mm.processing_interrupted()


def interrupt_exception():
    import comfy.model_management as mm

    return mm.InterruptProcessingException()


def interrupt_types() -> tuple[type[BaseException], ...]:
    """The exception(s) ComfyUI raises for Cancel: from our own poll, from the progress bar's
    hook, and (0.33) from inside every cast layer's forward."""
    import comfy.model_management as mm

    return (mm.InterruptProcessingException,)
