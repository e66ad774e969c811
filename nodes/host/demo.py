"""The Demo Model node's tiny random-weight models, built from ComfyUI's own classes.

Transformer families go through ComfyUI's own model detection, as a checkpoint file does: a
skeleton of the file's keys (shape-only meta tensors, never allocated) is detected into the
family's `supported_models` class and its full config, including any field a newer ComfyUI
adds; only the size keys that detection cannot describe at tiny widths are then overridden.
UNets are built from the family's class with the sizes of demo_configs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import demo_configs

_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class DemoModel:
    model: object  # comfy.model_patcher.ModelPatcher
    clip: object  # comfy.sd.CLIP
    vae: object  # comfy.sd.VAE


def randomize_module(module: torch.nn.Module, seed: int) -> None:
    """Fills every parameter and buffer deterministically (ComfyUI builds modules without
    initialising them). Weights ~ N(0, 1/fan_in) keep activations bounded through the tiny
    depth; 1-D scales (norm weights) are 1 and biases small, so no layer starts as a no-op."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in sorted(module.state_dict(keep_vars=True).items()):
            if not tensor.is_floating_point():
                continue
            if tensor.ndim >= 2:
                fan_in = tensor[0].numel()
                values = torch.randn(tensor.shape, generator=gen) / fan_in ** 0.5
            elif name.endswith("bias"):
                values = torch.randn(tensor.shape, generator=gen) * 0.02
            else:
                values = torch.ones(tensor.shape)
            tensor.copy_(values.to(tensor.dtype))


def _clip_target(family: str):
    from comfy import sd1_clip, sdxl_clip
    from comfy.supported_models_base import ClipTarget
    from comfy.text_encoders import flux

    if family == "Flux":
        return ClipTarget(flux.FluxTokenizer, flux.flux_clip())
    if family == "SDXL":
        return ClipTarget(sdxl_clip.SDXLTokenizer, sdxl_clip.SDXLClipModel)
    return ClipTarget(sd1_clip.SD1Tokenizer, sd1_clip.SD1ClipModel)


def _build_clip(family: str, seed: int):
    import comfy.sd

    options = {
        "dtype": torch.float32,  # ComfyUI's CPU default for text encoders is fp16
        "clip_l_model_config": dict(demo_configs.CLIP_L),
        "clip_g_model_config": dict(demo_configs.CLIP_G),
        "t5xxl_model_config": dict(demo_configs.T5XXL),
    }
    clip = comfy.sd.CLIP(target=_clip_target(family), model_options=options)
    randomize_module(clip.cond_stage_model, seed)
    return clip


def _build_vae(latent_channels: int, seed: int):
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    config = demo_configs.vae_config(latent_channels)
    template = AutoencoderKL(**config["params"])
    randomize_module(template, seed)
    vae = comfy.sd.VAE(sd=template.state_dict(), config=config)
    vae.latent_channels = latent_channels  # the config route leaves ComfyUI's default of 4
    return vae


def _meta(*shape: int) -> torch.Tensor:
    return torch.empty(shape, device="meta")


def _flux_skeleton(size: dict) -> dict:
    """The keys (and shapes) of a Flux.1 checkpoint that ComfyUI's detection reads."""
    hidden, head = size["hidden_size"], size["hidden_size"] // size["num_heads"]
    keys = {"img_in.weight": _meta(hidden, size["in_channels"] * 4),
            "txt_in.weight": _meta(hidden, size["context_in_dim"]),
            "vector_in.in_layer.weight": _meta(hidden, size["vec_in_dim"])}
    if size["guidance_embed"]:
        keys["guidance_in.in_layer.weight"] = _meta(hidden, 256)
    for i in range(size["depth"]):
        keys[f"double_blocks.{i}.img_attn.norm.key_norm.scale"] = _meta(head)
    for i in range(size["depth_single_blocks"]):
        keys[f"single_blocks.{i}.norm.key_norm.scale"] = _meta(head)
    return keys


def _detected_config(skeleton: dict, size: dict):
    """The `supported_models` config ComfyUI detects for a checkpoint with these keys, with the
    size keys that detection hardcodes for full-size files set to the tiny ones."""
    import comfy.model_detection

    unet_config = comfy.model_detection.detect_unet_config(skeleton, "")
    unet_config.update(size)
    model_config = comfy.model_detection.model_config_from_unet_config(unet_config, skeleton)
    if model_config is None:
        raise RuntimeError("ComfyUI's model detection does not recognise the demo model's checkpoint keys")
    model_config.unet_config.update(size)  # the class may force full-size values (head counts)
    return model_config


def _model_config(family: str):
    import comfy.supported_models as sm

    if family == "Flux":
        return _detected_config(_flux_skeleton(demo_configs.FLUX_UNET), demo_configs.FLUX_UNET)
    config_class, unet_config = {"SD1.5": (sm.SD15, demo_configs.SD15_UNET),
                                 "SDXL": (sm.SDXL, demo_configs.SDXL_UNET)}[family]
    model_config = config_class(unet_config)
    model_config.unet_config.update(unet_config)  # the family's class forces full-size head counts
    return model_config


def _build_unet(family: str, weight_dtype: str, seed: int):
    import comfy.model_management as mm
    import comfy.model_patcher

    model_config = _model_config(family)
    dtype = _TORCH_DTYPES[weight_dtype]
    load_device = mm.get_torch_device()
    manual_cast = mm.unet_manual_cast(dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(dtype, manual_cast)
    model = model_config.get_model({}, "")
    randomize_module(model.diffusion_model, seed)
    model = model.to(mm.unet_offload_device())
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device,
                                            offload_device=mm.unet_offload_device())


def build_demo_model(family: str, weight_dtype: str = "fp32", seed: int = 0) -> DemoModel:
    """A tiny random-weight model of `family` built from ComfyUI's own classes, with its text
    encoder(s) and VAE: the same code paths as a real checkpoint, at a size CPU tests afford."""
    if family not in demo_configs.FAMILIES:
        raise ValueError(f"family must be one of {', '.join(demo_configs.FAMILIES)}, not {family!r}")
    if weight_dtype not in _TORCH_DTYPES:
        raise ValueError(f"weight_dtype must be one of {', '.join(_TORCH_DTYPES)}, not {weight_dtype!r}")
    latent_channels = demo_configs.FLUX_UNET["in_channels"] if family == "Flux" else 4
    return DemoModel(
        model=_build_unet(family, weight_dtype, seed),
        clip=_build_clip(family, seed + 1),
        vae=_build_vae(latent_channels, seed + 2),
    )
