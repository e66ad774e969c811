"""The pack's shape: what imports ComfyUI, what loads at start-up, what gets installed."""

import ast
import re
import subprocess
import sys
import tomllib

from labtest import PACK_ROOT

COMFY_MODULES = {"comfy", "comfy_extras", "folder_paths", "server", "execution", "node_helpers",
                 "latent_preview", "comfy_execution", "nodes"}
HEAVY_OPTIONAL = ["rembg", "onnxruntime", "bitsandbytes", "lycoris", "prodigyopt", "transformers"]


def imported_top_modules(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


def test_only_the_host_adapter_imports_comfyui():
    offenders = {}
    for folder in ("training", "masking", "nodes"):
        for path in (PACK_ROOT / folder).rglob("*.py"):
            if path.is_relative_to(PACK_ROOT / "nodes" / "host"):
                continue
            bad = sorted(set(imported_top_modules(path)) & COMFY_MODULES)
            if bad:
                offenders[str(path.relative_to(PACK_ROOT))] = bad
    assert not offenders, f"ComfyUI imported outside the nodes/host/ package: {offenders}"


def test_importing_the_pack_loads_nothing_heavy():
    code = ("import sys; sys.path.insert(0, %r); import labtest; labtest.register_pack(); "
            "print(','.join(sorted(m for m in %r if m in sys.modules)) or 'none'); "
            "print('torch' in sys.modules)") % (str(PACK_ROOT / "tests"), HEAVY_OPTIONAL)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["none", "False"]


def test_core_packages_import_without_comfyui():
    code = ("import sys; sys.path.insert(0, %r); import labtest; labtest.register_pack(); "
            "import comfyui_lora_lab.training.optional_deps, comfyui_lora_lab.masking.rembg_loader; "
            "print(sorted(m for m in %r if m in sys.modules))") % (str(PACK_ROOT / "tests"), sorted(COMFY_MODULES))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def requirement_names(lines):
    return {re.split(r"[<>=!\[; ]", line.strip(), maxsplit=1)[0].lower(): line.strip() for line in lines
            if line.strip() and not line.lstrip().startswith("#")}


def test_requirements_leave_torch_and_onnxruntime_to_the_user():
    requirements = requirement_names((PACK_ROOT / "requirements.txt").read_text().splitlines())
    assert {"safetensors", "lycoris-lora", "bitsandbytes", "prodigyopt", "pillow", "numpy", "rembg"} <= set(requirements)
    assert "torch" not in requirements and "torchvision" not in requirements  # ComfyUI owns torch
    assert not any(name.startswith("onnxruntime") for name in requirements)  # keep a user's onnxruntime-gpu
    assert "[" not in requirements["rembg"]  # rembg[cpu]/[gpu] would pull an onnxruntime
    assert all(re.search(r">=\s*\d", line) for line in requirements.values()), "every requirement needs a lower bound"


def test_pyproject_mirrors_requirements_and_has_registry_section():
    project = tomllib.loads((PACK_ROOT / "pyproject.toml").read_text())
    requirements = requirement_names((PACK_ROOT / "requirements.txt").read_text().splitlines())
    assert requirement_names(project["project"]["dependencies"]) == requirements
    comfy = project["tool"]["comfy"]
    assert comfy["DisplayName"] == "LoRA Lab" and "PublisherId" in comfy and comfy["includes"]
    assert "GNU GENERAL PUBLIC LICENSE" in (PACK_ROOT / project["project"]["license"]["file"]).read_text()[:200]


def test_readme_test_command_is_what_ci_runs():
    readme = (PACK_ROOT / "README.md").read_text()
    command = re.search(r"^\s*(python -m pytest[^\n`]*)$", readme, re.M).group(1).strip()
    assert command in (PACK_ROOT / ".ci" / "run").read_text()
