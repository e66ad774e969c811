"""Qwen-Image: one kind of dual-stream block (`QwenImageTransformerBlock`); files name ComfyUI's
module paths the kohya way (`lora_unet_transformer_blocks_0_attn_to_q`, as musubi-tuner writes
them; ComfyUI's module paths are diffusers' names, so ai-toolkit's `transformer.` files map to the
same layers). Latents are 5-D (Wan 2.1 VAE and latent format: a frame axis, per-channel scaling).
The text encoder is Qwen2.5-VL (an LLM): it never trains. Edit checkpoints (Qwen-Image-Edit) load
as this same class and train as text-to-image (no reference latents)."""

from __future__ import annotations

import torch

from ... import demo_configs
from .. import demo
from .profile import Demo, FamilyProfile, everything

# Layer paths inside QwenImageTransformerBlock: image stream to_q/k/v, to_out.0; text stream
# add_q/k/v_proj, to_add_out; MLPs img_mlp/txt_mlp; modulations img_mod.1/txt_mod.1 ("all" only,
# like musubi-tuner, which leaves the modulations out by default).
ATTENTION = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
             "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")
PRESETS = {
    "attention": lambda block, path: path.endswith(ATTENTION),
    "attention+mlp": lambda block, path: path.endswith(ATTENTION) or "_mlp." in path,
    "all": everything,
}
LLM_NOTE = "Qwen-Image's text encoder is an LLM (Qwen2.5-VL) and is not trained"


def skeleton(size: dict) -> dict:
    """The keys (and shapes) of a Qwen-Image checkpoint that ComfyUI's detection reads."""
    inner = size["num_attention_heads"] * size["attention_head_dim"]
    keys = {"img_in.weight": demo.meta(inner, size["in_channels"]),
            "txt_norm.weight": demo.meta(size["joint_attention_dim"]),
            "proj_out.weight": demo.meta(size["out_channels"] * size["patch_size"] ** 2, inner)}
    for i in range(size["num_layers"]):
        keys[f"transformer_blocks.{i}.img_mod.1.weight"] = demo.meta(6 * inner, inner)
    return keys


def _model_config():
    size = dict(demo_configs.QWEN_IMAGE_UNET)  # read now: benchmarks may widen it
    return demo.detected_config(skeleton(size), size)


def _clip(seed: int):
    """ComfyUI's Qwen-Image text encoder at the demo's language-model size. Its class always
    builds Qwen2.5-VL's full-size vision tower (~670M parameters): the encoder is built on the
    meta device, the tower dropped (text-to-image never calls it), and only the language model
    materialised and randomised."""
    import comfy.sd
    from comfy.supported_models_base import ClipTarget
    from comfy.text_encoders import qwen_image

    options = {"dtype": torch.float32, "initial_device": torch.device("meta"),
               "qwen25_7b_model_config": dict(demo_configs.QWEN25_VL)}
    clip = comfy.sd.CLIP(target=ClipTarget(qwen_image.QwenImageTokenizer, qwen_image.te()), model_options=options)
    encoder = clip.cond_stage_model.qwen25_7b.transformer
    del encoder.visual
    clip.cond_stage_model.to_empty(device=clip.patcher.offload_device)
    demo.randomize_module(clip.cond_stage_model, seed)
    return clip


def _wan_vae_template(seed: int) -> torch.nn.Module:
    from comfy.ldm.wan.vae import WanVAE

    template = WanVAE(dim=demo_configs.QWEN_IMAGE_VAE_DIM, z_dim=demo_configs.QWEN_IMAGE_UNET["out_channels"],
                      dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                      temperal_downsample=[False, True, True], dropout=0.0)
    demo.randomize_module(template, seed)
    return template.eval()


def _vae(seed: int):
    """A tiny Wan 2.1 VAE through ComfyUI's own VAE detection (the keys it reads). A ComfyUI that
    reads the width from the file builds it directly; one that hardcodes the full width (96) is
    given the detection key at that size, and its module replaced by the tiny one."""
    import comfy.model_patcher
    import comfy.sd

    template = _wan_vae_template(seed)
    sd = template.state_dict()
    try:
        return comfy.sd.VAE(sd=sd)
    except RuntimeError:  # size mismatch: this ComfyUI builds the full-width Wan 2.1 VAE
        pass
    key = "decoder.middle.0.residual.0.gamma"
    vae = comfy.sd.VAE(sd={key: torch.ones(96 * 4, 1, 1, 1)})
    offload = vae.patcher.offload_device
    vae.first_stage_model = template.to(vae.vae_dtype)
    vae.patcher = comfy.model_patcher.ModelPatcher(vae.first_stage_model, load_device=vae.device,
                                                   offload_device=offload)
    return vae


PROFILE = FamilyProfile(
    name="qwen_image", classes=("QwenImage",), blocks=("QwenImageTransformerBlock",), presets=PRESETS,
    base_model_version="qwen_image", architecture="Qwen-Image/lora",
    implementation="https://github.com/QwenLM/Qwen-Image", text_encoder_note=LLM_NOTE,
    demos=(Demo(label="Qwen-Image", model_config=_model_config, clip=_clip, vae=_vae,
                available=lambda: _has_class()),))


def _has_class() -> bool:
    import comfy.supported_models

    return hasattr(comfy.supported_models, "QwenImage")
