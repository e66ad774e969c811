"""Test set-up shared by both tiers.

- torch runs on one thread (two shared cores stall with two threads).
- The repo root is made importable as the package `comfyui_lora_lab` (never as bare `nodes` or
  `training`, which collide with ComfyUI's own `nodes` module).
- Tests under tests/comfyui/ form the ComfyUI tier: they run when a ComfyUI source tree is found
  and are skipped, loudly, when not.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from labtest import PACK_ROOT, find_comfyui, register_pack  # noqa: E402

torch.set_num_threads(1)
register_pack()

COMFYUI = find_comfyui()
NO_COMFYUI_REASON = ("no ComfyUI source tree found ($COMFYUI_PATH, ../.. when the pack sits in "
                     "custom_nodes/, ~/comfy/ComfyUI): the ComfyUI tier did not run")


def _tier(item) -> str:
    return "comfyui" if "comfyui" in item.path.relative_to(PACK_ROOT / "tests").parts[:1] else "core"


NOT_APPLICABLE: dict[str, int] = {}  # family -> cases left out: its model class is not in this ComfyUI


def pytest_collection_modifyitems(config, items):
    kept, left_out = [], []
    for item in items:
        if _tier(item) == "comfyui":
            item.add_marker(pytest.mark.comfyui)
            if COMFYUI is None:
                item.add_marker(pytest.mark.skip(reason=NO_COMFYUI_REASON))
            elif (marker := item.get_closest_marker("not_applicable")) is not None:
                NOT_APPLICABLE[marker.args[0]] = NOT_APPLICABLE.get(marker.args[0], 0) + 1
                left_out.append(item)
                continue
        kept.append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept


_outcomes: dict = {}


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        tier = "comfyui" if "tests/comfyui/" in report.nodeid.replace("\\", "/") else "core"
        counts = _outcomes.setdefault(tier, {"passed": 0, "failed": 0, "skipped": 0})
        counts[report.outcome] = counts.get(report.outcome, 0) + 1


def pytest_terminal_summary(terminalreporter):
    write = terminalreporter.write_line
    for tier in ("core", "comfyui"):
        c = _outcomes.get(tier, {"passed": 0, "failed": 0, "skipped": 0})
        write(f"LoRA Lab {tier} tier: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped")
    comfy_skipped = _outcomes.get("comfyui", {}).get("skipped", 0)
    if COMFYUI is None and comfy_skipped:
        terminalreporter.write_sep("!", f"SKIPPED {comfy_skipped} ComfyUI-tier tests: {NO_COMFYUI_REASON}",
                                   red=True, bold=True)
    elif COMFYUI is not None:
        write(f"LoRA Lab ComfyUI tier ran against {COMFYUI}")
    if NOT_APPLICABLE:
        write("LoRA Lab ComfyUI tier: not applicable on this ComfyUI (the model class or feature is missing): " +
              ", ".join(f"{family} ({n} cases)" for family, n in sorted(NOT_APPLICABLE.items())))
