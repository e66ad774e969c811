"""The Demo Model node's tiny random-weight models, built from ComfyUI's own classes; each
family's recipe is in its profile module (families/), the shared pieces are here.

Transformer families go through ComfyUI's own model detection, as a checkpoint file does: a
skeleton of the file's keys (shape-only meta tensors, never allocated) is detected into the
family's `supported_models` class and its full config, including any field a newer ComfyUI adds;
only the size keys that detection cannot describe at tiny widths are then set."""

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


def meta(*shape: int) -> torch.Tensor:
    """A shape-only tensor for a detection skeleton."""
    return torch.empty(shape, device="meta")


def detected_config(skeleton: dict, sizes: dict):
    """The `supported_models` config ComfyUI detects for a checkpoint with these keys, with the
    size keys that detection hardcodes for full-size files set to the tiny ones."""
    import comfy.model_detection

    unet_config = comfy.model_detection.detect_unet_config(skeleton, "")
    if unet_config is None:
        raise RuntimeError("ComfyUI's model detection does not recognise the demo model's checkpoint keys")
    unet_config.update(sizes)
    model_config = comfy.model_detection.model_config_from_unet_config(unet_config, skeleton)
    if model_config is None:
        raise RuntimeError(f"ComfyUI has no model class for the demo config {unet_config}")
    model_config.unet_config.update(sizes)  # the class may force full-size values (head counts)
    return model_config


def build_clip(target, seed: int, **model_options):
    """A comfy.sd.CLIP of `target` with the demo encoder sizes, randomised."""
    import comfy.sd

    options = {
        "dtype": torch.float32,  # ComfyUI's CPU default for text encoders is fp16
        "clip_l_model_config": dict(demo_configs.CLIP_L),
        "clip_g_model_config": dict(demo_configs.CLIP_G),
        "t5xxl_model_config": dict(demo_configs.T5XXL),
        **model_options,
    }
    clip = comfy.sd.CLIP(target=target, model_options=options)
    randomize_module(clip.cond_stage_model, seed)
    return clip


def build_vae(latent_channels: int, seed: int):
    """A tiny 8x AutoencoderKL VAE with the family's latent channel count."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    config = demo_configs.vae_config(latent_channels)
    template = AutoencoderKL(**config["params"])
    randomize_module(template, seed)
    vae = comfy.sd.VAE(sd=template.state_dict(), config=config)
    vae.latent_channels = latent_channels  # the config route leaves ComfyUI's default of 4
    return vae


def _build_unet(model_config, weight_dtype: str, seed: int):
    import comfy.model_management as mm
    import comfy.model_patcher

    dtype = _TORCH_DTYPES[weight_dtype]
    load_device = mm.get_torch_device()
    manual_cast = mm.unet_manual_cast(dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(dtype, manual_cast)
    model = model_config.get_model({}, "")
    randomize_module(model.diffusion_model, seed)
    model = model.to(mm.unet_offload_device())
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device,
                                            offload_device=mm.unet_offload_device())


def demo_families() -> list[str]:
    """The Demo Model's families on this ComfyUI (a family whose class it lacks is left out)."""
    from .families import demos

    return list(demos())


def build_demo_model(family: str, weight_dtype: str = "fp32", seed: int = 0) -> DemoModel:
    """A tiny random-weight model of `family` built from ComfyUI's own classes, with its text
    encoder(s) and VAE: the same code paths as a real checkpoint, at a size CPU tests afford."""
    from .families import demos

    available = demos()
    if family not in available:
        raise ValueError(f"family must be one of {', '.join(available)}, not {family!r}")
    if weight_dtype not in _TORCH_DTYPES:
        raise ValueError(f"weight_dtype must be one of {', '.join(_TORCH_DTYPES)}, not {weight_dtype!r}")
    recipe = available[family]
    return DemoModel(model=_build_unet(recipe.model_config(), weight_dtype, seed), clip=recipe.clip(seed + 1),
                     vae=recipe.vae(seed + 2))
