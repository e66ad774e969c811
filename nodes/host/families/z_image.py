"""Z-Image (Turbo and Base): Lumina 2's NextDiT with Z-Image's modulation; every transformer block
(`JointTransformerBlock`: the main layers, the noise and caption refiners) adapts. Files name
ComfyUI's module paths (`lora_unet_layers_0_attention_qkv`): the fused qkv the model has, which
ComfyUI's loader maps back exactly (diffusers-style names split qkv into to_q/to_k/to_v, which
only a plain LoRA could be split into). The Qwen3 text encoder is an LLM: it is not trained.

Only an exact `ZImage` is admitted: `ZImagePixelSpace` (a pixel-space subclass: no VAE, RGB
patches) is refused by name."""

from __future__ import annotations

from ... import demo_configs
from .. import demo
from .profile import Demo, FamilyProfile, everything

PRESETS = {
    "attention": lambda block, path: path.startswith("attention."),
    "attention+mlp": lambda block, path: path.startswith(("attention.", "feed_forward.")),
    "all": everything,
}

# ComfyUI's detection recognises Z-Image by its full width (3840); the skeleton is detected at
# that width, then the tiny sizes are set on the detected config.
DETECTED_DIM = 3840


def skeleton(size: dict) -> dict:
    """The keys (and shapes) of a Z-Image checkpoint that ComfyUI's detection reads."""
    keys = {"cap_embedder.1.weight": demo.meta(DETECTED_DIM, size["cap_feat_dim"]),
            "noise_refiner.0.attention.k_norm.weight": demo.meta(128),
            "x_embedder.weight": demo.meta(DETECTED_DIM, size["in_channels"] * 4),
            "cap_pad_token": demo.meta(1, DETECTED_DIM), "x_pad_token": demo.meta(1, DETECTED_DIM)}
    for i in range(size["n_layers"]):
        keys[f"layers.{i}.ffn_norm1.weight"] = demo.meta(DETECTED_DIM)
    return keys


def model_config():
    import comfy.model_detection

    size = dict(demo_configs.Z_IMAGE_UNET)  # read now: benchmarks widen it
    keys = skeleton(size)
    unet_config = comfy.model_detection.detect_unet_config(keys, "")
    if unet_config is None or unet_config.get("dim") != DETECTED_DIM:
        raise RuntimeError("ComfyUI's model detection does not recognise the Z-Image demo checkpoint keys")
    config = comfy.model_detection.model_config_from_unet_config(unet_config, keys)
    if config is None or type(config).__name__ != "ZImage":
        raise RuntimeError(f"ComfyUI detects the Z-Image demo checkpoint as {type(config).__name__}")
    config.unet_config.update(size)
    return config


def _clip(seed: int):
    from comfy.supported_models_base import ClipTarget
    from comfy.text_encoders import z_image

    return demo.build_clip(ClipTarget(z_image.ZImageTokenizer, z_image.te()), seed,
                           qwen3_4b_model_config=dict(demo_configs.QWEN3_TINY))


def _available() -> bool:
    import comfy.supported_models

    return hasattr(comfy.supported_models, "ZImage")


PROFILE = FamilyProfile(
    name="z_image", classes=("ZImage",), blocks=("JointTransformerBlock",), presets=PRESETS,
    base_model_version="z_image", architecture="z-image-turbo/lora",
    implementation="https://github.com/Tongyi-MAI/Z-Image",
    text_encoder_note="Z-Image's Qwen3 text encoder is an LLM and is not trained",
    demos=(Demo("Z-Image", model_config, _clip,
                lambda seed: demo.build_vae(demo_configs.Z_IMAGE_UNET["in_channels"], seed), _available),))
