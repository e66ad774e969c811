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

_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
                 "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
# A scaled-fp8 checkpoint (`*_fp8_scaled`): e4m3fn weights with one float32 scale per linear layer
# and a `scaled_fp8` marker key, loaded the way ComfyUI loads such a file.
SCALED_FP8 = "fp8_scaled"
FP8_E4M3_MAX = 448.0


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


def scaled_fp8_state_dict(diffusion_model: torch.nn.Module) -> dict:
    """The diffusion model's state dict as a scaled-fp8 checkpoint stores it: every Linear's
    weight as float8_e4m3fn of weight/scale with scale = max|weight|/448 in `<layer>.scale_weight`,
    the rest as it is, plus the `scaled_fp8` marker."""
    sd = {k: v.detach().clone() for k, v in diffusion_model.state_dict().items()}
    for name, module in diffusion_model.named_modules():
        if isinstance(module, torch.nn.Linear) and f"{name}.weight" in sd:
            weight = sd[f"{name}.weight"].float()
            scale = (weight.abs().max() / FP8_E4M3_MAX).clamp(min=1e-12)
            sd[f"{name}.weight"] = (weight / scale).to(torch.float8_e4m3fn)
            sd[f"{name}.scale_weight"] = scale.reshape(())
    sd["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return sd


def load_scaled_fp8(model_config, sd: dict):
    """A ModelPatcher of a scaled-fp8 state dict through ComfyUI's own route: 0.33 converts the
    old format to its quantized layers (`convert_old_quants`, `quant_config`), older versions use
    `model_config.scaled_fp8` (feature-detected)."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.utils

    sd = dict(sd)
    load_device = mm.get_torch_device()
    supported = list(model_config.supported_inference_dtypes)
    unet_dtype = mm.unet_dtype(supported_dtypes=supported)
    if hasattr(comfy.utils, "convert_old_quants"):
        sd, _ = comfy.utils.convert_old_quants(sd, "", metadata={})
        model_config.quant_config = comfy.utils.detect_layer_quantization(sd, "")
        manual_cast = mm.unet_manual_cast(None, load_device, supported)
    else:
        model_config.scaled_fp8 = sd.pop("scaled_fp8").dtype
        manual_cast = mm.unet_manual_cast(unet_dtype, load_device, supported)
    model_config.set_inference_dtype(unet_dtype, manual_cast)
    model = model_config.get_model(sd, "")
    model.load_model_weights(sd, "")
    model = model.to(mm.unet_offload_device())
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=mm.unet_offload_device())


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
    if weight_dtype not in _TORCH_DTYPES and weight_dtype != SCALED_FP8:
        raise ValueError(f"weight_dtype must be one of {', '.join([*_TORCH_DTYPES, SCALED_FP8])}, not {weight_dtype!r}")
    recipe = available[family]
    if weight_dtype == SCALED_FP8:
        full = _build_unet(recipe.model_config(), "fp32", seed)
        unet = load_scaled_fp8(recipe.model_config(), scaled_fp8_state_dict(full.model.diffusion_model))
    else:
        unet = _build_unet(recipe.model_config(), weight_dtype, seed)
    return DemoModel(model=unet, clip=recipe.clip(seed + 1), vae=recipe.vae(seed + 2))
