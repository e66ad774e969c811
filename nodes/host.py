"""The host adapter: the only module of the pack that imports ComfyUI (`comfy.*`, `folder_paths`,
`server`). Everything else talks to ComfyUI through the small functions here, so a change in
ComfyUI's internals is mended in one place. ComfyUI modules are imported inside the functions:
importing this file costs nothing at ComfyUI start-up.

Tested against ComfyUI 0.3.64.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from . import demo_configs

log = logging.getLogger("LoRALab")

TESTED_COMFYUI_VERSIONS = ("0.3.64",)


def comfyui_version() -> str:
    try:
        import comfyui_version

        return comfyui_version.__version__
    except ImportError:
        return "unknown"


def check_host() -> list[str]:
    """Feature checks for what the pack relies on. Returns problems (empty when all is there)."""
    problems = []
    try:
        from comfy.model_patcher import ModelPatcher
    except ImportError as e:
        return [f"ComfyUI's comfy.model_patcher cannot be imported ({e})"]
    for method in ("clone", "add_patches", "add_weight_wrapper", "set_model_patch"):
        if not hasattr(ModelPatcher, method):
            problems.append(f"ModelPatcher.{method} is missing")
    version = comfyui_version()
    if version not in TESTED_COMFYUI_VERSIONS:
        log.info("LoRA Lab was tested with ComfyUI %s; this is %s",
                 ", ".join(TESTED_COMFYUI_VERSIONS), version)
    return problems


# --- Demo models -----------------------------------------------------------------------------

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


def _build_unet(family: str, weight_dtype: str, seed: int):
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models as sm

    config_class, unet_config = {
        "Flux": (sm.Flux, demo_configs.FLUX_UNET),
        "SD1.5": (sm.SD15, demo_configs.SD15_UNET),
        "SDXL": (sm.SDXL, demo_configs.SDXL_UNET),
    }[family]
    model_config = config_class(unet_config)
    model_config.unet_config.update(unet_config)  # the family's class forces full-size head counts
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
