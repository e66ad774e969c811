"""Flux.1 (dev and schnell): double- and single-stream blocks; kohya-format files name ComfyUI's
module paths (`lora_unet_double_blocks_0_img_attn_qkv`); CLIP-L trains (`lora_te1_`), T5 never."""

from __future__ import annotations

from ... import demo_configs
from .. import demo
from .profile import Demo, FamilyProfile, everything

ATTENTION = ("attn.qkv", "attn.proj", "linear1", "linear2")
PRESETS = {
    "attention": lambda block, path: path.endswith(ATTENTION),
    "attention+mlp": lambda block, path: path.endswith(ATTENTION) or "_mlp." in path,
    "all": everything,
}


def block_keys(size: dict) -> dict:
    """The keys of the double and single blocks that ComfyUI's detection counts (and reads the head
    width from), shared by the Flux-style checkpoints (Flux.1, Flux.2, Chroma)."""
    head = size["hidden_size"] // size["num_heads"]
    keys = {f"double_blocks.{i}.img_attn.norm.key_norm.scale": demo.meta(head) for i in range(size["depth"])}
    keys.update({f"single_blocks.{i}.norm.key_norm.scale": demo.meta(head)
                 for i in range(size["depth_single_blocks"])})
    return keys


def skeleton(size: dict) -> dict:
    """The keys (and shapes) of a Flux.1 checkpoint that ComfyUI's detection reads."""
    hidden = size["hidden_size"]
    keys = {"img_in.weight": demo.meta(hidden, size["in_channels"] * 4),
            "txt_in.weight": demo.meta(hidden, size["context_in_dim"]),
            "vector_in.in_layer.weight": demo.meta(hidden, size["vec_in_dim"])}
    if size["guidance_embed"]:
        keys["guidance_in.in_layer.weight"] = demo.meta(hidden, 256)
    return {**keys, **block_keys(size)}


def _clip(seed: int):
    from comfy.supported_models_base import ClipTarget
    from comfy.text_encoders import flux

    return demo.build_clip(ClipTarget(flux.FluxTokenizer, flux.flux_clip()), seed)


def _demo(label: str, guidance: bool) -> Demo:
    def model_config():
        size = {**demo_configs.FLUX_UNET, "guidance_embed": guidance}  # read now: benchmarks widen it
        return demo.detected_config(skeleton(size), size)

    return Demo(label=label, model_config=model_config, clip=_clip,
                vae=lambda seed: demo.build_vae(demo_configs.FLUX_UNET["in_channels"], seed))


PROFILE = FamilyProfile(
    name="flux", classes=("Flux", "FluxSchnell"), blocks=("DoubleStreamBlock", "SingleStreamBlock"),
    presets=PRESETS, base_model_version="flux1", architecture="flux-1-dev/lora",
    implementation="https://github.com/black-forest-labs/flux", text_encoders={"clip_l": "lora_te1_"},
    text_encoder_note="T5 is not trained", flow_default="sigmoid",
    # kohya's modelspec names schnell (no guidance embedding) apart from dev
    variant_names=lambda cfg: ("flux1", "flux-1-dev/lora" if cfg.get("guidance_embed") else "flux-1-schnell/lora"),
    guidance=lambda unet: bool(getattr(unet.params, "guidance_embed", False)),
    demos=(_demo("Flux", True), _demo("Flux.1 schnell", False)))
