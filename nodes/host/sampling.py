"""Sample images during training, and a LoRA applied to a MODEL the way LoraLoader applies it."""

from __future__ import annotations

import torch

from .families import profile_of
from .training_model import attach_with, encode_caption, latent_downscale, training_clone, unload


def apply_lora(model, tensors: dict, strength: float = 1.0, clip=None):
    """The MODEL (and CLIP, when given) with a LoRA applied exactly as the stock LoraLoader
    applies a file."""
    import comfy.sd

    patched, patched_clip = comfy.sd.load_lora_for_models(model, clip, tensors, strength, strength if clip else 0)
    return patched if clip is None else (patched, patched_clip)


def sampler_names() -> tuple[list[str], list[str]]:
    import comfy.samplers

    return list(comfy.samplers.KSampler.SAMPLERS), list(comfy.samplers.KSampler.SCHEDULERS)


def _cancel_point(*_):
    """Called by the sampler after each of its steps: Cancel stops sampling there."""
    import comfy.model_management as mm

    mm.throw_exception_if_processing_interrupted()


def sample_images(model, network, clip, vae, prompts: list[str], settings) -> torch.Tensor:
    """Images (N,H,W,3) from `prompts` with the adapter attached the same patcher-scoped way as
    in training (a separate clone, so training's raw-output patch does not apply)."""
    import comfy.sample
    import node_helpers

    patcher = training_clone(model)
    if network is not None:
        attach_with(patcher, network)
    fmt, down = model.get_model_object("latent_format"), latent_downscale(model)
    channels = fmt.latent_channels
    frames = (1,) if getattr(fmt, "latent_dimensions", 2) == 3 else ()  # video-style latents (Wan VAE)
    latent = torch.zeros(1, channels, *frames, settings.height // down, settings.width // down)
    takes_guidance = profile_of(model).guidance(model.model.diffusion_model)
    negative = encode_caption(clip, settings.negative)
    images = []
    try:
        with torch.no_grad():
            for prompt in prompts:
                positive = [encode_caption(clip, prompt)]
                if takes_guidance:
                    positive = node_helpers.conditioning_set_values(positive, {"guidance": settings.guidance})
                noise = comfy.sample.prepare_noise(latent, settings.seed)
                out = comfy.sample.sample(patcher, noise, settings.steps, settings.cfg, settings.sampler, settings.scheduler,
                                          positive, [negative], latent, seed=settings.seed, disable_pbar=True,
                                          callback=_cancel_point)
                decoded = vae.decode(out)[..., :3].float().cpu()
                images.append(decoded.reshape(-1, *decoded.shape[-3:]))  # a video VAE adds a frame axis
    finally:
        unload(patcher)
        if network is not None:
            network.detach()
    return torch.cat(images)
