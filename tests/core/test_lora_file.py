"""LoRA files: atomic, never-overwriting writes; safe names; kohya/modelspec metadata."""

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from comfyui_lora_lab.training import lora_file
from comfyui_lora_lab.training.lora_file import (TrainingFacts, build_metadata, check_output_name,
                                                 check_subfolder, read_lora, write_atomic)


def tensors():
    return {"lora_unet_a.lora_up.weight": torch.arange(6, dtype=torch.float32).reshape(3, 2),
            "lora_unet_a.lora_down.weight": torch.ones(2, 4, dtype=torch.bfloat16),
            "lora_unet_a.alpha": torch.tensor(2.0)}


# What the host's family profiles pass for the families these tests name.
BASES = {"flux": ("flux1", "flux-1-dev/lora", "https://github.com/black-forest-labs/flux"),
         "sdxl": ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora", "https://github.com/Stability-AI/generative-models"),
         "sd15": ("sd_v1", "stable-diffusion-v1/lora", "https://github.com/Stability-AI/generative-models")}


def facts(base="sdxl", **overrides):
    version, architecture, implementation = BASES[base]
    values = dict(base_model_version=version, architecture=architecture, implementation=implementation,
                  output_name="my lora", network_module="networks.lora", rank=16, alpha=8.0,
                  network_args={"conv_dim": 4}, steps=1000, epoch=3, learning_rate=1e-4, optimizer="AdamW",
                  resolution="1024x1024", seed=42)
    values.update(overrides)
    return TrainingFacts(**values)


# --- write_atomic ---------------------------------------------------------------------------------

def test_write_atomic_writes_a_loadable_file_with_metadata(tmp_path):
    path = tmp_path / "loras" / "sub" / "a.safetensors"  # missing folders are created
    assert write_atomic(path, tensors(), {"ss_network_dim": "16"}) == path
    loaded = load_file(str(path))
    expected = tensors()
    assert loaded.keys() == expected.keys()
    for k in expected:
        assert loaded[k].dtype == expected[k].dtype
        assert torch.equal(loaded[k], expected[k])
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"ss_network_dim": "16"}
    assert os.listdir(path.parent) == ["a.safetensors"]


def test_write_atomic_accepts_a_string_path_and_non_contiguous_tensors(tmp_path):
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()
    assert not t.is_contiguous()
    write_atomic(str(tmp_path / "t.safetensors"), {"w": t}, {})
    assert torch.equal(load_file(str(tmp_path / "t.safetensors"))["w"], t)


def test_write_atomic_never_replaces_an_existing_file_unless_asked(tmp_path):
    path = tmp_path / "a.safetensors"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="already exists"):
        write_atomic(path, tensors(), {})
    assert path.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["a.safetensors"]

    write_atomic(path, tensors(), {"k": "v"}, overwrite=True)
    assert torch.equal(load_file(str(path))["lora_unet_a.alpha"], torch.tensor(2.0))
    assert os.listdir(tmp_path) == ["a.safetensors"]


def test_a_failed_write_leaves_no_file_and_no_temporary(tmp_path):
    path = tmp_path / "a.safetensors"
    with pytest.raises(Exception):
        write_atomic(path, {"w": "not a tensor"}, {})
    assert os.listdir(tmp_path) == []


def test_a_failed_save_keeps_the_old_file_and_cleans_up(tmp_path, monkeypatch):
    path = tmp_path / "a.safetensors"
    write_atomic(path, tensors(), {"v": "1"})
    old = path.read_bytes()

    def full_disk(data, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a fi")  # a partial write, then the failure
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lora_file, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, tensors(), {"v": "2"}, overwrite=True)
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["a.safetensors"]


def test_a_file_that_appears_during_the_write_is_not_replaced(tmp_path, monkeypatch):
    path = tmp_path / "a.safetensors"

    def slow_save(data, filename, metadata=None):
        path.write_bytes(b"another run's lora")  # someone else finished first
        save_file(data, filename, metadata=metadata)

    monkeypatch.setattr(lora_file, "save_file", slow_save)
    with pytest.raises(FileExistsError):
        write_atomic(path, tensors(), {})
    assert path.read_bytes() == b"another run's lora"
    assert os.listdir(tmp_path) == ["a.safetensors"]


# --- names ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../x", "a/b", "a\\b", "", "..", ".", "   ", "x/../y", "a..b", "c:evil",
                                  ".safetensors", "../x.safetensors", "a\nb"])
def test_output_names_that_are_not_plain_file_names_are_refused(name):
    with pytest.raises(ValueError, match="plain file name"):
        check_output_name(name)


@pytest.mark.parametrize("name, expected", [
    ("my lora_v2", "my lora_v2"),
    ("my lora_v2.safetensors", "my lora_v2"),
    ("  spaced  ", "spaced"),
    ("style (v1) [sdxl]+final-2.5", "style (v1) [sdxl]+final-2.5"),
])
def test_plain_output_names_are_accepted(name, expected):
    assert check_output_name(name) == expected


@pytest.mark.parametrize("subfolder", ["../x", "/abs", "\\abs", "a/../b", "a\\..\\b", "..", "a/b:c",
                                       "loralab\n", "a\n/b"])
def test_subfolders_outside_the_loras_folder_are_refused(subfolder):
    with pytest.raises(ValueError, match="relative folder inside the loras folder"):
        check_subfolder(subfolder)


@pytest.mark.parametrize("subfolder, expected", [
    ("a/b", "a/b"), ("a\\b", "a/b"), ("a//b/", "a/b"), ("loralab", "loralab"), ("", ""),
])
def test_relative_subfolders_are_normalised(subfolder, expected):
    assert check_subfolder(subfolder) == expected


# --- metadata ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("base, version, architecture", [
    ("flux", "flux1", "flux-1-dev/lora"),
    ("sdxl", "sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora"),
    ("sd15", "sd_v1", "stable-diffusion-v1/lora"),
])
def test_metadata_names_the_base_model_as_kohya_and_modelspec_do(base, version, architecture):
    meta = build_metadata(facts(base))
    assert meta["ss_base_model_version"] == version
    assert meta["modelspec.architecture"] == architecture
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    assert "ss_clip_skip" not in meta
    assert meta["ss_network_dim"] == "16"
    assert float(meta["ss_network_alpha"]) == 8.0
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": 4}
    assert json.loads(meta["ss_tag_frequency"]) == {}
    assert meta["ss_output_name"] == meta["modelspec.title"] == "my lora"
    assert int(meta["ss_steps"]) == 1000 and int(meta["ss_epoch"]) == 3 and int(meta["ss_seed"]) == 42
    assert float(meta["ss_learning_rate"]) == 1e-4
    assert int(meta["ss_training_finished_at"]) > 1_600_000_000
    assert ("black-forest-labs" in meta["modelspec.implementation"]) == (base == "flux")


def test_clip_skip_and_tag_frequency_are_recorded_when_given():
    meta = build_metadata(facts("sd15", clip_skip=2, tag_frequency={"concept": {"ohwx": 3}}))
    assert meta["ss_clip_skip"] == "2"
    assert json.loads(meta["ss_tag_frequency"]) == {"concept": {"ohwx": 3}}


def test_the_metadata_can_be_written_into_a_lora_file(tmp_path):
    meta = build_metadata(facts("flux", clip_skip=1))
    path = write_atomic(tmp_path / "m.safetensors", tensors(), meta)
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == meta


# --- reading ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["old.ckpt", "old.pt", "old.bin", "old.safetensors.bak", "old"])
def test_read_lora_refuses_anything_but_safetensors(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x80\x04 a pickle")
    with pytest.raises(ValueError, match="only .safetensors"):
        read_lora(path)


def test_read_lora_reads_what_write_atomic_wrote(tmp_path):
    path = write_atomic(tmp_path / "r.safetensors", tensors(), {})
    loaded = read_lora(path)
    assert all(torch.equal(loaded[k], v) for k, v in tensors().items())
