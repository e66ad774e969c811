"""A missing or broken optional library disables only the feature that needs it."""

import sys

from labtest.blocking import run_child


def test_background_removal_without_onnxruntime_names_the_pip_command(tmp_path):
    out = run_child(
        "from comfyui_lora_lab.masking.rembg_loader import load_rembg\n"
        "from comfyui_lora_lab.training.optional_deps import MissingDependency, import_optional\n"
        "try:\n    load_rembg()\nexcept MissingDependency as e:\n    print('ERROR', e)\n"
        "print('prodigy ok', import_optional('prodigyopt', 'Prodigy').__name__)\n",
        ["onnxruntime"], tmp_path)
    assert "ERROR Background removal needs" in out
    assert "pip install onnxruntime" in out and "onnxruntime-gpu" in out
    assert "prodigy ok prodigyopt" in out


def test_missing_bitsandbytes_disables_only_8bit_optimizers(tmp_path):
    out = run_child(
        "from comfyui_lora_lab.training.optional_deps import MissingDependency, import_optional\n"
        "try:\n    import_optional('bitsandbytes', 'AdamW8bit')\nexcept MissingDependency as e:\n    print('ERROR', e)\n"
        "print('lycoris ok', import_optional('lycoris', 'LyCORIS adapters').__name__)\n",
        ["bitsandbytes"], tmp_path)
    assert "ERROR AdamW8bit needs the Python package 'bitsandbytes'" in out and "pip install bitsandbytes" in out
    assert "lycoris ok lycoris" in out


def test_a_library_that_calls_sys_exit_on_import_does_not_end_the_process(tmp_path):
    (tmp_path / "exits_on_import.py").write_text("import sys\nsys.exit(1)\n")
    sys.path.insert(0, str(tmp_path))
    try:
        from comfyui_lora_lab.training.optional_deps import MissingDependency, import_optional

        try:
            import_optional("exits_on_import", "Some feature", "pip install something")
        except MissingDependency as error:
            message = str(error)
        else:
            raise AssertionError("no MissingDependency raised")
    finally:
        sys.path.remove(str(tmp_path))
    assert "SystemExit" in message and "pip install something" in message
