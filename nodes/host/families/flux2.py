"""Flux.2 (the small Klein size and the full one): Flux's double- and single-stream blocks with
global modulation, 128-channel latents of a 16x VAE (patch size 1); files name ComfyUI's module
paths (`lora_unet_double_blocks_0_img_attn_qkv`), as for Flux.1. Its text encoders (Qwen3 for
Klein, Mistral 3 for the full model) are LLMs: they are not trained."""

from __future__ import annotations

import torch

from ... import demo_configs
from .. import demo
from . import flux
from .flux import PRESETS
from .profile import Demo, FamilyProfile


def skeleton(size: dict) -> dict:
    """The keys (and shapes) of a Flux.2 checkpoint that ComfyUI's detection reads."""
    hidden = size["hidden_size"]
    keys = {"img_in.weight": demo.meta(hidden, size["in_channels"]),
            "txt_in.weight": demo.meta(hidden, size["context_in_dim"]),
            "double_stream_modulation_img.lin.weight": demo.meta(6 * hidden, hidden)}
    if size["guidance_embed"]:
        keys["guidance_in.in_layer.weight"] = demo.meta(hidden, 256)
    return {**keys, **flux.block_keys(size)}


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


# Mistral's tekken special tokens at their real ranks (ids 0-19): the template's [SYSTEM_PROMPT],
# [INST] and their closings, <s> (start, 1) and <pad> (11) among them.
TEKKEN_SPECIAL = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                  "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]",
                  "[IMG_END]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
                  "[TOOL_CONTENT]")
TEKKEN_MERGES = (b"th", b"the", b" the", b"an", b" an", b"on", b"ph", b"oto", b"photo", b" photo", b"sk", b"sks",
                 b" sks", b"in", b"at", b"ion")


def tekken_model() -> torch.Tensor:
    """A minimal valid tekken tokenizer as the full Flux.2's text-encoder file stores it (the
    `tekken_model` uint8 tensor of the JSON, which ComfyUI reads into its byte-level BPE): the
    special tokens, all 256 bytes and a few merges. Its ids fit MISTRAL3_TINY's vocabulary."""
    import base64
    import json

    tokens = [bytes([b]) for b in range(256)] + list(TEKKEN_MERGES)
    special = len(TEKKEN_SPECIAL)
    if special + len(tokens) > demo_configs.MISTRAL3_TINY["vocab_size"]:
        raise RuntimeError("the demo tekken vocabulary does not fit the tiny Mistral 3's embedding")
    blob = {"config": {"pattern": "", "num_vocab_tokens": len(tokens), "default_vocab_size": special + len(tokens),
                       "default_num_special_tokens": special, "version": "v7"},
            "vocab": [{"rank": rank, "token_bytes": base64.b64encode(token).decode("ascii"),
                       "token_str": token.decode("utf-8", errors="replace")} for rank, token in enumerate(tokens)],
            "special_tokens": [{"rank": rank, "token_str": name, "is_control": True}
                               for rank, name in enumerate(TEKKEN_SPECIAL)]}
    return torch.frombuffer(bytearray(json.dumps(blob).encode("utf-8")), dtype=torch.uint8)


def _mistral_clip(seed: int):
    """Full Flux.2's text encoder (Mistral 3) and tokenizer, as ComfyUI's Flux2 clip target builds
    them from a text-encoder file; the tokenizer comes from the file's `tekken_model`."""
    import comfy.sd
    from comfy.supported_models_base import ClipTarget
    from comfy.text_encoders import flux

    clip = comfy.sd.CLIP(target=ClipTarget(flux.Flux2Tokenizer, flux.flux2_te()),
                         tokenizer_data={"tekken_model": tekken_model()},
                         model_options={"dtype": torch.float32,
                                        "mistral3_24b_model_config": dict(demo_configs.MISTRAL3_TINY)})
    demo.randomize_module(clip.cond_stage_model, seed)
    return clip


def _available() -> bool:
    import comfy.supported_models

    return hasattr(comfy.supported_models, "Flux2")


def _full_available() -> bool:
    """The full model's Mistral 3 encoder and its tekken tokenizer read from the file."""
    from comfy.text_encoders import flux

    return _available() and hasattr(flux, "flux2_te") and hasattr(flux, "Flux2Tokenizer")


def _demo(label: str, sizes: dict, clip, available=_available) -> Demo:
    def model_config():
        size = dict(sizes)  # read now: benchmarks widen it
        return demo.detected_config(skeleton(size), size)

    return Demo(label=label, model_config=model_config, clip=clip, vae=vae, available=available)


def _guidance(diffusion_model) -> bool:
    return bool(getattr(diffusion_model.params, "guidance_embed", False))


PROFILE = FamilyProfile(
    name="flux2", classes=("Flux2",), blocks=("DoubleStreamBlock", "SingleStreamBlock"), presets=PRESETS,
    base_model_version="flux2", architecture="flux-2-dev/lora",
    implementation="https://github.com/black-forest-labs/flux2",
    text_encoder_note="Flux.2's text encoders (Qwen3, Mistral 3) are LLMs and are not trained",
    guidance=_guidance,
    demos=(_demo("Flux.2 Klein", demo_configs.FLUX2_KLEIN_UNET, _klein_clip),
           _demo("Flux.2", demo_configs.FLUX2_UNET, _mistral_clip, _full_available)))
