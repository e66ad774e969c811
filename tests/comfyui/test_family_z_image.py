"""Z-Image: what the shared family tests do not cover — its pixel-space subclass refused by name,
its Qwen3 (LLM) text encoder refused for training, no guidance, ComfyUI module-path keys, the
metadata names and the timestep shift ComfyUI samples Z-Image with (3.0)."""

import pytest

from labtest import families
from labtest.training import build_in_executor_mode, make_request, one_image_dataset, saved_file, train

Z_IMAGE = families.params(["Z-Image"])


def _request(demo, steps=2, **overrides):
    return make_request(demo, one_image_dataset(), steps=steps, lr=1e-3, name="z_image_lora", **overrides)


@pytest.mark.parametrize("family", Z_IMAGE)
def test_z_image_pixel_space_subclass_is_refused_by_name(host, loras_dir, family):
    import comfy.supported_models as sm

    demo = build_in_executor_mode(host, family)
    other = demo.model.clone()
    other.model = type("Model", (), {"model_config": sm.ZImagePixelSpace.__new__(sm.ZImagePixelSpace)})()
    with pytest.raises(ValueError, match="unsupported model family ZImagePixelSpace: LoRA Lab trains .*ZImage"):
        train(_request(demo, model=other))


@pytest.mark.parametrize("family", Z_IMAGE)
def test_z_image_file_names_module_keys_metadata_and_the_model_shift(host, loras_dir, family):
    from comfyui_lora_lab.nodes.host import TrainingModel

    demo = build_in_executor_mode(host, family)
    with TrainingModel(demo.model, None, False, 1.0) as model:
        assert model.guidance is None  # Z-Image takes no guidance embedding
    result = train(_request(demo))
    meta, keys = saved_file(result.lora_path)
    assert "lora_unet_layers_0_attention_qkv.lora_down.weight" in keys
    assert "lora_unet_noise_refiner_0_attention_qkv.lora_down.weight" in keys  # the refiners adapt too
    assert (meta["ss_base_model_version"], meta["modelspec.architecture"]) == ("z_image", "z-image-turbo/lora")
    assert meta["ss_timestep_sampling"] == "shift" and float(meta["ss_discrete_flow_shift"]) == pytest.approx(3.0)


@pytest.mark.parametrize("family", Z_IMAGE)
def test_z_image_text_encoder_training_is_refused_with_the_reason(host, loras_dir, family):
    from comfyui_lora_lab.training.settings import OptimizerSettings

    demo = build_in_executor_mode(host, family)
    with pytest.raises(ValueError, match="Qwen3 text encoder is an LLM and is not trained"):
        train(_request(demo, optimizer=OptimizerSettings(text_encoder_lr=1e-4)))
