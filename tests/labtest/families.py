"""Model families in the ComfyUI tier. A family exists only in the ComfyUI versions that have its
model class: on the others its cases are "not applicable on this ComfyUI" — left out of the run and
named in the tier's summary (tests/conftest.py), never counted as skipped.

    @pytest.mark.parametrize("family", families.params(["Chroma", "Z-Image"]))
"""

from __future__ import annotations

import pytest

from . import find_comfyui

_available: list[str] | None = None


def available() -> list[str]:
    """The Demo Model families of the ComfyUI under test (its own feature detection)."""
    global _available
    if _available is None:
        comfy = find_comfyui()
        if comfy is None:
            _available = []
        else:
            from .inprocess import import_comfyui

            import_comfyui(comfy)
            from comfyui_lora_lab.nodes import host

            _available = host.demo_families()
    return _available


def params(families: list[str]) -> list:
    """pytest params: each family, marked not applicable where this ComfyUI lacks it (no ComfyUI at
    all: the whole tier is skipped anyway)."""
    have = available()
    return [pytest.param(f, marks=pytest.mark.not_applicable(f)) if have and f not in have else f for f in families]
