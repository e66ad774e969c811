"""Chroma: what the shared family tests do not cover — its pixel-space subclass refused by name,
its T5-only text encoder refused for training, no training guidance, kohya's metadata names and
the timestep shift ComfyUI samples it with (Flux-style log-shift 1.15 = linear e^1.15)."""

import math

import pytest
import torch

from labtest import families
from labtest.training import build_in_executor_mode, make_request, one_image_dataset, saved_file, train

CHROMA = families.params(["Chroma"])


def _request(demo, steps=2, **overrides):
    return make_request(demo, one_image_dataset(), steps=steps, lr=1e-3, name="chroma_lora", **overrides)


def _radiance_config():
    """The model config ComfyUI's detection gives a Chroma Radiance checkpoint (pixel space: no
    img_in, a patch embedding and NeRF head blocks instead) of the demo's sizes."""
    import comfy.model_detection

    from comfyui_lora_lab.nodes import demo_configs
    from comfyui_lora_lab.nodes.host import demo
    from comfyui_lora_lab.nodes.host.families import chroma

    size = dict(demo_configs.CHROMA_UNET)
    keys = {k: v for k, v in chroma.skeleton(size).items() if k != "img_in.weight"}
    keys["img_in_patch.weight"] = demo.meta(size["hidden_size"], 3, 16, 16)
    keys["nerf_blocks.0.norm.scale"] = demo.meta(64)
    unet_config = comfy.model_detection.detect_unet_config(keys, "")
    return comfy.model_detection.model_config_from_unet_config(unet_config, keys)


@pytest.mark.parametrize("family", CHROMA)
def test_chroma_radiance_is_refused_by_name(host, comfy_nodes, loras_dir, family):
    config = _radiance_config()
    assert type(config).__name__ == "ChromaRadiance"  # a subclass of Chroma: not admitted by inheritance
    demo = build_in_executor_mode(host, family)
    other = demo.model.clone()
    other.model = type("Model", (), {"model_config": config})()
    with pytest.raises(ValueError, match="unsupported model family ChromaRadiance: LoRA Lab trains .*Chroma"):
        train(_request(demo, model=other))
    assert not list(loras_dir.rglob("*.safetensors"))


@pytest.mark.parametrize("family", CHROMA)
def test_chroma_text_encoder_training_is_refused_with_the_reason(host, loras_dir, family):
    from comfyui_lora_lab.training.settings import OptimizerSettings

    demo = build_in_executor_mode(host, family)
    with pytest.raises(ValueError, match="text_encoder_lr: Chroma's only text encoder is T5"):
        train(_request(demo, optimizer=OptimizerSettings(text_encoder_lr=1e-4)))


@pytest.mark.parametrize("family", CHROMA)
def test_chroma_takes_no_training_guidance(host, family):
    """Chroma's guidance input comes from the conditioning (0 unless a node sets it), never from
    the training guidance setting, which is Flux-dev's."""
    demo = build_in_executor_mode(host, family)
    model = host.TrainingModel(demo.model, None, checkpointing=False, guidance=1.0)
    assert model.guidance is None
    cond = host.encode_caption(demo.clip, "a photo of sks")
    noisy = torch.zeros(1, 16, 8, 8)
    kwargs = model._model_kwargs([cond], noisy)
    assert float(kwargs["guidance"].flatten()[0]) == 0.0


@pytest.mark.parametrize("family", CHROMA)
def test_chroma_file_names_kohya_keys_and_the_model_shift(host, loras_dir, family):
    demo = build_in_executor_mode(host, family)
    result = train(_request(demo))
    meta, keys = saved_file(result.lora_path)
    assert "lora_unet_single_blocks_0_linear1.lora_down.weight" in keys
    assert not any(k.startswith(("lora_te", "lora_unet_distilled_guidance_layer")) for k in keys)
    assert (meta["ss_base_model_version"], meta["modelspec.architecture"], meta["modelspec.implementation"]) == (
        "chroma", "chroma/lora", "https://huggingface.co/lodestones/Chroma")
    assert meta["ss_timestep_sampling"] == "shift"
    assert float(meta["ss_discrete_flow_shift"]) == pytest.approx(math.exp(1.15), abs=1e-5)
