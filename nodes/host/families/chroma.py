"""Chroma (lodestones' de-distilled Flux.1-schnell derivative): Flux's double- and single-stream
blocks without per-block modulation (a shared `distilled_guidance_layer` computes it, and is not
adapted); kohya-format files name ComfyUI's module paths (`lora_unet_double_blocks_0_img_attn_qkv`),
as kohya's sd-scripts (`--model_type chroma`) writes them. Its only text encoder is T5, never
trained. ChromaRadiance, the pixel-space subclass, is not admitted (exact classes only)."""

from __future__ import annotations

from ... import demo_configs
from .. import demo
from . import flux
from .profile import Demo, FamilyProfile


def skeleton(size: dict) -> dict:
    """The keys (and shapes) of a Chroma checkpoint that ComfyUI's detection reads: Flux's, with
    the distilled guidance layer instead of vector_in/guidance_in."""
    hidden = size["hidden_size"]
    keys = {"img_in.weight": demo.meta(hidden, size["in_channels"]),
            "txt_in.weight": demo.meta(hidden, size["context_in_dim"]),
            "distilled_guidance_layer.norms.0.scale": demo.meta(size["hidden_dim"])}
    return {**keys, **flux.block_keys(size)}


def _clip(seed: int):
    from comfy.supported_models_base import ClipTarget
    from comfy.text_encoders import pixart_t5

    return demo.build_clip(ClipTarget(pixart_t5.PixArtTokenizer, pixart_t5.pixart_te()), seed)


def _model_config():
    size = dict(demo_configs.CHROMA_UNET)  # read now: benchmarks may widen it
    return demo.detected_config(skeleton(size), size)


def _available() -> bool:
    import comfy.supported_models

    return hasattr(comfy.supported_models, "Chroma")


PROFILE = FamilyProfile(
    name="chroma", classes=("Chroma",), blocks=("DoubleStreamBlock", "SingleStreamBlock"),
    presets=flux.PRESETS, base_model_version="chroma", architecture="chroma/lora",
    implementation="https://huggingface.co/lodestones/Chroma",
    text_encoder_note="Chroma's only text encoder is T5, which is not trained",
    demos=(Demo("Chroma", _model_config, _clip,
                lambda seed: demo.build_vae(demo_configs.CHROMA_LATENT_CHANNELS, seed), _available),))
