"""Flux.2 (the small Klein size and the full one): Flux's double- and single-stream blocks with
global modulation, 128-channel latents of a 16x VAE (patch size 1); files name ComfyUI's module
paths (`lora_unet_double_blocks_0_img_attn_qkv`), as for Flux.1. Its text encoders (Qwen3 for
Klein, Mistral 3 for the full model) are LLMs: they are not trained."""

from __future__ import annotations

import torch

from ... import demo_configs
from .. import demo
from .flux import PRESETS
from .profile import Demo, FamilyProfile


def skeleton(size: dict) -> dict:
    """The keys (and shapes) of a Flux.2 checkpoint that ComfyUI's detection reads."""
    hidden, head = size["hidden_size"], size["hidden_size"] // size["num_heads"]
    keys = {"img_in.weight": demo.meta(hidden, size["in_channels"]),
            "txt_in.weight": demo.meta(hidden, size["context_in_dim"]),
            "double_stream_modulation_img.lin.weight": demo.meta(6 * hidden, hidden)}
    if size["guidance_embed"]:
        keys["guidance_in.in_layer.weight"] = demo.meta(hidden, 256)
    for i in range(size["depth"]):
        keys[f"double_blocks.{i}.img_attn.norm.key_norm.scale"] = demo.meta(head)
    for i in range(size["depth_single_blocks"]):
        keys[f"single_blocks.{i}.norm.key_norm.scale"] = demo.meta(head)
    return keys


def vae(seed: int):
    """A Flux.2 VAE through ComfyUI's own detection: an AutoencoderKL state dict with the batch-norm
    latent statistics (`bn.running_mean`), which detection turns into 16x and 128 channels (2x2
    patches of 32). Detection fixes the encoder's width (ch 128, mult 1-2-4-4) and reads the
    decoder's from the file, so only the decoder is narrow."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    encoder = dict(demo_configs.FLUX2_VAE, ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2)
    template = AutoencoderKL(ddconfig=encoder, embed_dim=encoder["z_channels"],
                             decoder_ddconfig=dict(encoder, ch=demo_configs.FLUX2_VAE["ch"]))
    demo.randomize_module(template, seed)
    result = comfy.sd.VAE(sd=template.state_dict())
    if result.latent_channels != 128 or result.spacial_compression_encode() != 16:
        raise RuntimeError("ComfyUI's VAE detection does not build the Flux.2 VAE (16x, 128 channels) "
                           "from the demo state dict")
    return result


def _klein_clip(seed: int):
    from comfy.supported_models_base import ClipTarget
    from comfy.text_encoders import flux

    return demo.build_clip(ClipTarget(flux.KleinTokenizer, flux.klein_te(model_type="qwen3_4b")), seed,
                           qwen3_4b_model_config=dict(demo_configs.QWEN3_KLEIN))


def _available() -> bool:
    import comfy.supported_models

    return hasattr(comfy.supported_models, "Flux2")


def _demo(label: str, sizes: dict, clip) -> Demo:
    def model_config():
        size = dict(sizes)  # read now: benchmarks widen it
        return demo.detected_config(skeleton(size), size)

    return Demo(label=label, model_config=model_config, clip=clip, vae=vae, available=_available)


def _guidance(diffusion_model) -> bool:
    return bool(getattr(diffusion_model.params, "guidance_embed", False))


PROFILE = FamilyProfile(
    name="flux2", classes=("Flux2",), blocks=("DoubleStreamBlock", "SingleStreamBlock"), presets=PRESETS,
    base_model_version="flux2", architecture="flux-2-dev/lora",
    implementation="https://github.com/black-forest-labs/flux2",
    text_encoder_note="Flux.2's text encoders (Qwen3, Mistral 3) are LLMs and are not trained",
    guidance=_guidance,
    demos=(_demo("Flux.2 Klein", demo_configs.FLUX2_KLEIN_UNET, _klein_clip),))
