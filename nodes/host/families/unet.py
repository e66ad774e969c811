"""SD1.5 and SDXL UNets: attention in SpatialTransformer blocks, convolutions in ResBlocks and
resamplers; SD1.5 files use diffusers block names (`lora_unet_down_blocks_0_attentions_0_…`,
`lora_te_`), SDXL ComfyUI's module paths (`lora_te1_`/`lora_te2_` for CLIP-L/G). Their blocks
never add into saved tensors in place: without checkpointing they run as they are."""

from __future__ import annotations

from ... import demo_configs
from .. import demo
from .profile import Demo, FamilyProfile, everything

PRESETS = {
    "attention": lambda block, path: block == "SpatialTransformer" and (".attn1." in f".{path}" or ".attn2." in f".{path}"),
    "attention+mlp": lambda block, path: block == "SpatialTransformer",
    "all": everything,
}
BLOCKS = ("SpatialTransformer", "ResBlock", "Downsample", "Upsample")
CHECKPOINTED = ("ResBlock", "SpatialTransformer")


def _config(class_name: str, sizes: dict):
    import comfy.supported_models as sm

    model_config = getattr(sm, class_name)(sizes)
    model_config.unet_config.update(sizes)  # the family's class forces full-size head counts
    return model_config


def _sd15_clip(seed: int):
    from comfy import sd1_clip
    from comfy.supported_models_base import ClipTarget

    return demo.build_clip(ClipTarget(sd1_clip.SD1Tokenizer, sd1_clip.SD1ClipModel), seed)


def _sdxl_clip(seed: int):
    from comfy import sdxl_clip
    from comfy.supported_models_base import ClipTarget

    return demo.build_clip(ClipTarget(sdxl_clip.SDXLTokenizer, sdxl_clip.SDXLClipModel), seed)


SDXL = FamilyProfile(
    name="sdxl", classes=("SDXL",), blocks=BLOCKS, checkpointed=CHECKPOINTED, presets=PRESETS,
    base_model_version="sdxl_base_v1-0", architecture="stable-diffusion-xl-v1-base/lora",
    text_encoders={"clip_l": "lora_te1_", "clip_g": "lora_te2_"}, has_convolutions=True,
    copies_without_checkpointing=False,
    demos=(Demo("SDXL", lambda: _config("SDXL", demo_configs.SDXL_UNET), _sdxl_clip, lambda s: demo.build_vae(4, s)),))
SD15 = FamilyProfile(
    name="sd15", classes=("SD15",), blocks=BLOCKS, checkpointed=CHECKPOINTED, presets=PRESETS,
    base_model_version="sd_v1", architecture="stable-diffusion-v1/lora", key_style="diffusers",
    text_encoders={"clip_l": "lora_te_"}, has_convolutions=True, copies_without_checkpointing=False,
    demos=(Demo("SD1.5", lambda: _config("SD15", demo_configs.SD15_UNET), _sd15_clip, lambda s: demo.build_vae(4, s)),))
