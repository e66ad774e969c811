"""Optional libraries, imported only when a feature that needs them runs. A missing or broken one
disables that feature alone, with a message that says what to install."""

from __future__ import annotations

import importlib


class MissingDependency(RuntimeError):
    """A feature's library is not installed or cannot be imported."""


def import_optional(module: str, feature: str, pip_hint: str | None = None):
    """Imports `module` for `feature`, or raises MissingDependency naming the pip command.

    Any failure counts, not only ImportError: a library with a broken native part (CUDA libraries
    of bitsandbytes, say) raises other errors, and some call sys.exit (rembg without onnxruntime).
    """
    try:
        return importlib.import_module(module)
    except (Exception, SystemExit) as error:  # noqa: BLE001 - any failure disables the feature
        hint = pip_hint or f"pip install {module}"
        raise MissingDependency(
            f"{feature} needs the Python package '{module}', which cannot be imported "
            f"({type(error).__name__}: {error}). Install it into the Python that runs ComfyUI: {hint}"
        ) from None
