"""SD3 / 3.5: what the shared family tests do not cover — kohya's variant names in the metadata
(read off the model, as kohya's sd3_utils does), both CLIP encoders trained with kohya's prefixes
and T5 never, and the shift ComfyUI samples SD3 with (3.0) as the training shift."""

import pytest
import torch

from labtest import families
from labtest.training import build_in_executor_mode, pattern_image, saved_file

SD3 = families.params(["SD3.5"])


def _train(demo, **overrides):
    from comfyui_lora_lab.nodes import train_run
    from comfyui_lora_lab.nodes.train_run import RunRequest
    from comfyui_lora_lab.training.dataset import Dataset, DatasetSample
    from comfyui_lora_lab.training.settings import (NetworkSettings, ObjectiveSettings, OptimizerSettings,
                                                    SaveSettings)

    dataset = Dataset(samples=(DatasetSample(image=pattern_image(), caption="a photo of sks", concept="sks"),), trigger="sks")
    fields = dict(model=demo.model, clip=demo.clip, vae=demo.vae, dataset=dataset, steps=2, learning_rate=1e-3,
                  seed=0, output_name="sd3_lora", network=NetworkSettings(), optimizer=OptimizerSettings(),
                  objective=ObjectiveSettings(), save=SaveSettings(precision="fp32"))
    fields.update(overrides)
    with torch.inference_mode(False):
        return train_run.run(RunRequest(**fields))


@pytest.mark.parametrize("unet_config, version", [
    ({"qk_norm": None, "x_block_self_attn_layers": []}, "medium"),  # SD3 medium
    ({"qk_norm": "rms", "x_block_self_attn_layers": [0, 1, 2]}, "5-medium"),
    ({"qk_norm": "rms", "x_block_self_attn_layers": []}, "5-large"),  # also 3.5 large turbo
])
def test_sd3_variant_names_are_kohyas(host, unet_config, version):
    from comfyui_lora_lab.nodes.host.families import sd3

    assert sd3.PROFILE.variant_names(unet_config) == (version, f"stable-diffusion-3-{version}/lora")


@pytest.mark.parametrize("family", SD3)
def test_sd3_file_has_kohya_names_both_clips_and_comfyuis_shift(host, loras_dir, family):
    from comfyui_lora_lab.training.settings import OptimizerSettings

    demo = build_in_executor_mode(host, family)
    assert host.sampling_shift(demo.model) == 3.0  # ComfyUI's SD3 sampling settings
    result = _train(demo, optimizer=OptimizerSettings(text_encoder_lr=1e-3))
    meta, keys = saved_file(result.lora_path)
    assert {"lora_unet_joint_blocks_0_context_block_attn_qkv.lora_down.weight",
            "lora_unet_joint_blocks_0_x_block_attn2_proj.lora_down.weight",
            "lora_unet_joint_blocks_1_x_block_mlp_fc2.lora_down.weight",
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",
            "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"} <= keys
    assert not any(k.startswith("lora_te3") for k in keys)  # T5 never
    assert (meta["ss_base_model_version"], meta["modelspec.architecture"], meta["modelspec.implementation"]) == (
        "5-medium", "stable-diffusion-3-5-medium/lora", "diffusers")
    assert (meta["ss_timestep_sampling"], float(meta["ss_discrete_flow_shift"])) == ("shift", 3.0)
