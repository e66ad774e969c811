"""The Demo Model node's tiny models behave like the real families inside ComfyUI."""

import pytest
import torch

from labtest import families

FAMILIES = families.params(families.ALL)


def sample(comfy_nodes, demo, seed=7, steps=2):
    (positive,) = comfy_nodes.CLIPTextEncode().encode(demo.clip, "a photo of sks")
    latent = {"samples": torch.zeros(empty_latent_shape(demo, 64))}
    (out,) = comfy_nodes.common_ksampler(demo.model, seed, steps, 1.0, "euler", "normal",
                                         positive, positive, latent)
    return out["samples"]


def empty_latent_shape(demo, pixels: int) -> tuple:
    """The latent of a pixels² image for the model: its channels, its VAE's downscale, a frame
    axis for video-style formats."""
    fmt = demo.model.model.latent_format
    down = getattr(fmt, "spacial_downscale_ratio", 8)
    frames = (1,) if getattr(fmt, "latent_dimensions", 2) == 3 else ()
    return (1, fmt.latent_channels, *frames, pixels // down, pixels // down)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_pieces_fit_together(host, comfy_nodes, family):
    """The VAE's latents are what the model takes (format, channels, downscale), the text
    encoder's conditioning reaches it, and sampling runs end to end."""
    demo = host.build_demo_model(family, "fp32", seed=0)
    expect = families.EXPECT[family]
    assert type(demo.model.model.latent_format).__name__ == expect.latent_format
    (cond,) = comfy_nodes.CLIPTextEncode().encode(demo.clip, "a photo of sks")
    assert cond and cond[0][0].ndim == 3
    latents = demo.vae.encode(torch.rand(1, 64, 64, 3))
    assert tuple(latents.shape) == empty_latent_shape(demo, 64)
    decoded = demo.vae.decode(latents)
    assert decoded.shape[-3:] == (64, 64, 3)
    out = sample(comfy_nodes, demo)
    assert tuple(out.shape) == empty_latent_shape(demo, 64) and torch.isfinite(out).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_seed_makes_the_same_model(host, comfy_nodes, family):
    a = sample(comfy_nodes, host.build_demo_model(family, "fp32", seed=1))
    b = sample(comfy_nodes, host.build_demo_model(family, "fp32", seed=1))
    c = sample(comfy_nodes, host.build_demo_model(family, "fp32", seed=2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("weight_dtype, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_weight_dtype_is_the_storage_dtype(host, comfy_nodes, weight_dtype, dtype):
    demo = host.build_demo_model("Flux", weight_dtype, seed=0)
    assert demo.model.model.get_dtype() == dtype
    assert torch.isfinite(sample(comfy_nodes, demo)).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_stock_lora_key_map_covers_every_layer(host, comfy_nodes, family):
    """The LoRA files we write later must load through the stock LoraLoader: its key map has to
    reach every Linear/Conv of the tiny models, under the names kohya-format files use."""
    import comfy.lora

    demo = host.build_demo_model(family, "fp32", seed=0)
    unet_keys = comfy.lora.model_lora_keys_unet(demo.model.model, {})
    targets = {v if isinstance(v, str) else v[0] for v in unet_keys.values()}
    adapted = host.target_modules(demo.model, "all").values()
    layers = [f"diffusion_model.{name}.weight" for name, module in demo.model.model.diffusion_model.named_modules()
              if any(module is a for a in adapted)]
    assert layers and not [k for k in layers if k not in targets]
    expect = families.EXPECT[family]
    assert expect.lora_key in unet_keys and expect.lora_key in host.target_modules(demo.model, "all")
    if expect.te_prefix:
        assert expect.te_prefix in comfy.lora.model_lora_keys_clip(demo.clip.cond_stage_model, {})


def test_unknown_family_is_a_clear_error(host):
    with pytest.raises(ValueError, match="family must be one of Flux, .*SD1.5, SDXL.*, not 'SD9'"):
        host.build_demo_model("SD9", "fp32", 0)
