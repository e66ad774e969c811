"""Which ComfyUI model classes LoRA Lab trains: an allow-list of exact `supported_models` class
names, one small profile module per family (see profile.py). Adding a family = one module here
plus its tests; anything not listed is refused by name, with what is supported."""

from __future__ import annotations

import torch

from . import chroma, flux, qwen_image, sd3, unet, flux2, z_image
from .profile import FamilyProfile

PROFILES: tuple[FamilyProfile, ...] = (flux.PROFILE, unet.SD15, unet.SDXL, qwen_image.PROFILE, chroma.PROFILE, sd3.PROFILE, z_image.PROFILE, flux2.PROFILE)


def profile_of(patcher) -> FamilyProfile:
    """The family of a MODEL, by its exact model class (a subclass, e.g. a pixel-space variant,
    is not admitted by inheritance)."""
    name = type(patcher.model.model_config).__name__
    for profile in PROFILES:
        if name in profile.classes:
            return profile
    supported = ", ".join(c for p in PROFILES for c in p.classes)
    raise ValueError(f"unsupported model family {name}: LoRA Lab trains {supported} models")


def prediction_family(patcher):
    """The objective in the model's own prediction space, from ComfyUI's model type."""
    from comfy.model_base import ModelType

    from ....training.objective import FAMILIES

    kinds = {"FLUX": "flow", "FLOW": "flow", "EPS": "eps", "V_PREDICTION": "v"}
    kind = kinds.get(patcher.model.model_type.name)
    if kind is None or not isinstance(patcher.model.model_type, ModelType):
        raise ValueError(f"unsupported prediction type {patcher.model.model_type.name}: LoRA Lab trains eps, "
                         "v-prediction and flow-matching models")
    return FAMILIES[kind]


def _lora_names(patcher, profile: FamilyProfile) -> dict[str, str]:
    """Weight key -> the kohya-format name the stock LoraLoader maps back to it: ComfyUI's module
    path (`lora_unet_double_blocks_0_img_attn_qkv`), or diffusers block names for families whose
    files use them (SD1.5)."""
    import comfy.lora

    names: dict[str, list[str]] = {}
    for lora_key, target in comfy.lora.model_lora_keys_unet(patcher.model, {}).items():
        if isinstance(target, str) and lora_key.startswith("lora_unet_"):
            names.setdefault(target, []).append(lora_key)
    chosen = {}
    for weight_key, candidates in names.items():
        path_style = "lora_unet_" + weight_key[len("diffusion_model."):-len(".weight")].replace(".", "_")
        diffusers = [c for c in candidates if c != path_style]
        chosen[weight_key] = diffusers[0] if profile.key_style == "diffusers" and diffusers else path_style
    return chosen


def blocks_of(patcher, profile: FamilyProfile | None = None) -> list[tuple[str, torch.nn.Module]]:
    """(path, block) of every block of the family's block classes, in module order."""
    profile = profile or profile_of(patcher)
    return [(path, module) for path, module in patcher.model.diffusion_model.named_modules()
            if type(module).__name__ in profile.blocks]


def _quantized_linear(layer) -> bool:
    """ComfyUI 0.33's quantized linear layers (comfy/quant_ops.py: scaled fp8 and the rest) are
    cast layers with a Linear's shape but no torch.nn.Linear."""
    from comfy.ops import CastWeightBiasOp

    return isinstance(layer, CastWeightBiasOp) and type(layer).__name__ == "Linear" and hasattr(layer, "in_features")


# ComfyUI 0.33's quantized weight layouts (comfy/quant_ops.py) that train like plain fp8: their
# values are fp8 times a scale, exactly representable once cast. The others (nvfp4, mxfp8, int8,
# w4a4, w4a8) are refused by name rather than trained untested.
TRAINED_QUANT_LAYOUTS = ("TensorCoreFP8Layout", "TensorCoreFP8E4M3Layout", "TensorCoreFP8E5M2Layout")


def _check_quantization(layer, key: str) -> None:
    layout = getattr(getattr(layer, "weight", None), "_layout_cls", None)
    if layout is not None and not str(layout).startswith(TRAINED_QUANT_LAYOUTS):
        raise ValueError(f"model: layer {key} is quantized as {layout}, which LoRA Lab does not train; "
                         f"it trains bf16/fp16/fp32 and fp8 bases (float8_e4m3fn, float8_e5m2, scaled fp8): load "
                         "an fp8 or bf16 checkpoint of this model to train it")


def target_modules(patcher, preset: str) -> dict[str, torch.nn.Module]:
    """{file name prefix: layer} for the preset, every name loadable by the stock LoraLoader."""
    profile = profile_of(patcher)
    wanted = profile.preset(preset)
    names = _lora_names(patcher, profile)
    targets = {}
    for block_path, block in blocks_of(patcher, profile):
        block_class = type(block).__name__
        for path, layer in block.named_modules():
            if not (isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)) or _quantized_linear(layer)) \
                    or not wanted(block_class, path):
                continue
            key = f"diffusion_model.{block_path}.{path}.weight"
            _check_quantization(layer, key)
            if key not in names:
                raise RuntimeError(f"ComfyUI's LoRA key map has no name for {key}: this ComfyUI version "
                                   "is not supported for training")
            targets.setdefault(names[key], layer)  # a block nested in another is found once
    return targets


def text_encoder_targets(clip, profile: FamilyProfile) -> dict[str, torch.nn.Module]:
    """{file name prefix: Linear} for the CLIP text encoder layers (attention and MLP)."""
    import comfy.lora

    prefixes = profile.text_encoders
    if not prefixes:
        raise ValueError(f"text_encoder_lr: {profile.text_encoder_note or 'this family has no CLIP text encoder'}; "
                         "set text_encoder_lr to 0")
    names = {}
    for lora_key, target in comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {}).items():
        encoder = target.split(".")[0] if isinstance(target, str) else None
        if encoder in prefixes and lora_key.startswith(prefixes[encoder]):
            names[target] = lora_key
    targets = {}
    for path, module in clip.cond_stage_model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".encoder.layers." in path and f"{path}.weight" in names:
            targets[names[f"{path}.weight"]] = module
    if not targets:
        raise RuntimeError("ComfyUI's LoRA key map names no text-encoder layer of this CLIP: text-encoder training "
                           "is not supported for it")
    return targets


def demos() -> dict:
    """Demo Model label -> Demo, for the families this ComfyUI has."""
    return {demo.label: demo for profile in PROFILES for demo in profile.demos if demo.available()}
