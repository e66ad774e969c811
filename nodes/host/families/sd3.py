"""Stable Diffusion 3 / 3.5 (medium and large): MMDiT JointBlocks, each a context and an image
DismantledBlock (3.5 medium adds a second image self-attention, `attn2`, in its first blocks);
kohya-format files name ComfyUI's module paths (`lora_unet_joint_blocks_0_x_block_attn_qkv`), as
kohya's sd-scripts (networks/lora_sd3.py) writes them, whose MMDiT uses the same names. CLIP-L
and CLIP-G train (`lora_te1_`/`lora_te2_`, kohya's prefixes, which ComfyUI's key map reads for
SD3's CLIP), T5 never. kohya names the variant in the metadata: `ss_base_model_version`
"medium" / "5-medium" / "5-large", `modelspec.architecture` "stable-diffusion-3-<that>/lora"."""

from __future__ import annotations

from ... import demo_configs
from .. import demo
from .profile import Demo, FamilyProfile, everything

BLOCK = "JointBlock"
ATTENTION = (".attn.qkv", ".attn.proj", ".attn2.qkv", ".attn2.proj")
PRESETS = {
    "attention": lambda block, path: f".{path}".endswith(ATTENTION),
    "attention+mlp": lambda block, path: f".{path}".endswith(ATTENTION) or ".mlp." in f".{path}",
    "all": everything,
}


def variant(unet_config: dict) -> str:
    """kohya's name of the SD3 variant (sd3_utils.analyze_state_dict_state): QK RMS-norm marks
    3.5; 3.5 medium has image self-attention blocks (x_block_self_attn_layers), large has none."""
    if unet_config.get("qk_norm") is None:
        return "medium"
    return "5-medium" if unet_config.get("x_block_self_attn_layers") else "5-large"


def skeleton(size: dict) -> dict:
    """The keys (and shapes) of an SD3 checkpoint that ComfyUI's detection reads; MMDiT's width
    is 64 per block of depth (head size 64), so detection gets every size from these shapes."""
    hidden, patch = 64 * size["depth"], size["patch_size"]
    keys = {"joint_blocks.0.context_block.attn.qkv.weight": demo.meta(3 * hidden, hidden),
            "x_embedder.proj.weight": demo.meta(hidden, size["in_channels"], patch, patch),
            "final_layer.linear.weight": demo.meta(patch * patch * size["in_channels"], hidden),
            "y_embedder.mlp.0.weight": demo.meta(hidden, size["adm_in_channels"]),
            "context_embedder.weight": demo.meta(hidden, size["context_in_dim"]),
            "pos_embed": demo.meta(1, size["pos_embed_max_size"] ** 2, hidden)}
    if size["qk_norm"]:
        keys["joint_blocks.0.context_block.attn.ln_q.weight"] = demo.meta(64)
    for i in size["x_block_self_attn_layers"]:
        keys[f"joint_blocks.{i}.x_block.attn2.qkv.weight"] = demo.meta(3 * hidden, hidden)
    return keys


def _clip(seed: int):
    """CLIP-L and CLIP-G without T5: ComfyUI pads CLIP-L+G's features to T5-XXL's full 4096 width
    before joining T5's, so a tiny T5 cannot join them (SD3 also runs without T5)."""
    from comfy.supported_models_base import ClipTarget
    from comfy.text_encoders import sd3_clip

    return demo.build_clip(ClipTarget(sd3_clip.SD3Tokenizer, sd3_clip.sd3_clip(clip_l=True, clip_g=True, t5=False)), seed)


def _model_config():
    return demo.detected_config(skeleton(dict(demo_configs.SD3_UNET)), {})


PROFILE = FamilyProfile(
    name="sd3", classes=("SD3",), blocks=(BLOCK,), presets=PRESETS,
    base_model_version="5-large", architecture="stable-diffusion-3-5-large/lora", implementation="diffusers",
    variant_names=lambda unet_config: (variant(unet_config), f"stable-diffusion-3-{variant(unet_config)}/lora"),
    text_encoders={"clip_l": "lora_te1_", "clip_g": "lora_te2_"}, text_encoder_note="T5 is not trained",
    copies_without_checkpointing=False,
    demos=(Demo("SD3.5", _model_config, _clip, lambda seed: demo.build_vae(16, seed)),))
