"""Which ComfyUI model classes LoRA Lab trains, and per family what the presets adapt and
the LoRA key names files use (the names the stock LoraLoader maps back to each weight)."""

from __future__ import annotations

import torch

# model_config class name -> base family (file names, metadata, target presets)
_BASE_FAMILIES = {"Flux": "flux", "FluxSchnell": "flux", "SDXL": "sdxl", "SD15": "sd15"}

# Which layers a preset adapts: per base, the block classes searched and, per preset, a filter on
# (block class, the layer's path inside the block) over the block's Linear/Conv2d layers.
_BLOCKS = {
    "flux": ("DoubleStreamBlock", "SingleStreamBlock"),
    "sdxl": ("SpatialTransformer", "ResBlock", "Downsample", "Upsample"),
    "sd15": ("SpatialTransformer", "ResBlock", "Downsample", "Upsample"),
}
_FLUX_ATTENTION = ("attn.qkv", "attn.proj", "linear1", "linear2")
_PRESETS = {
    "flux": {
        "attention": lambda block, path: path.endswith(_FLUX_ATTENTION),
        "attention+mlp": lambda block, path: path.endswith(_FLUX_ATTENTION) or "_mlp." in path,
        "all": lambda block, path: True,
    },
    "unet": {
        "attention": lambda block, path: block == "SpatialTransformer" and (".attn1." in f".{path}" or ".attn2." in f".{path}"),
        "attention+mlp": lambda block, path: block == "SpatialTransformer",
        "all": lambda block, path: True,
    },
}


def base_family(patcher) -> str:
    name = type(patcher.model.model_config).__name__
    if name not in _BASE_FAMILIES:
        raise ValueError(f"unsupported model family {name}: LoRA Lab trains Flux, SDXL and SD1.5 models")
    return _BASE_FAMILIES[name]


def prediction_family(patcher):
    from comfy.model_base import ModelType

    from ...training.objective import FAMILIES

    kind = {ModelType.FLUX: "flow", ModelType.EPS: "eps", ModelType.V_PREDICTION: "v"}.get(patcher.model.model_type)
    if kind is None:
        raise ValueError(f"unsupported prediction type {patcher.model.model_type.name}: LoRA Lab trains eps, "
                         "v-prediction and flow (Flux) models")
    return FAMILIES[kind]


def _lora_names(patcher, base: str) -> dict[str, str]:
    """Weight key -> the kohya-format name the stock LoraLoader maps back to it. SD1.5 files
    use diffusers block names; Flux and SDXL files use ComfyUI's module paths."""
    import comfy.lora

    names: dict[str, list[str]] = {}
    for lora_key, target in comfy.lora.model_lora_keys_unet(patcher.model, {}).items():
        if isinstance(target, str) and lora_key.startswith("lora_unet_"):
            names.setdefault(target, []).append(lora_key)
    chosen = {}
    for weight_key, candidates in names.items():
        path_style = "lora_unet_" + weight_key[len("diffusion_model."):-len(".weight")].replace(".", "_")
        diffusers = [c for c in candidates if c != path_style]
        chosen[weight_key] = diffusers[0] if base == "sd15" and diffusers else path_style
    return chosen


def target_modules(patcher, preset: str) -> dict[str, torch.nn.Module]:
    """{file name prefix: layer} for the preset, every name loadable by the stock LoraLoader."""
    base = base_family(patcher)
    presets = _PRESETS["flux" if base == "flux" else "unet"]
    if preset not in presets:
        raise ValueError(f"target preset must be one of {', '.join(presets)}, not {preset!r}")
    wanted = presets[preset]
    names = _lora_names(patcher, base)
    targets = {}
    for block_path, block in patcher.model.diffusion_model.named_modules():
        block_class = type(block).__name__
        if block_class not in _BLOCKS[base]:
            continue
        for path, layer in block.named_modules():
            if not isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)) or not wanted(block_class, path):
                continue
            key = f"diffusion_model.{block_path}.{path}.weight"
            if key not in names:
                raise RuntimeError(f"ComfyUI's LoRA key map has no name for {key}: this ComfyUI version "
                                   "is not supported for training")
            targets[names[key]] = layer
    return targets


# Text encoders trained with the diffusion model, and the file prefixes kohya-format files use
# for them (T5 training is out of scope).
_TEXT_ENCODER_PREFIXES = {"sd15": {"clip_l": "lora_te_"}, "sdxl": {"clip_l": "lora_te1_", "clip_g": "lora_te2_"},
                          "flux": {"clip_l": "lora_te1_"}}


def text_encoder_targets(clip, base: str) -> dict[str, torch.nn.Module]:
    """{file name prefix: Linear} for the CLIP text encoder layers (attention and MLP)."""
    import comfy.lora

    prefixes = _TEXT_ENCODER_PREFIXES[base]
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
