"""The Demo Model node's tiny models behave like the real families inside ComfyUI."""

import pytest
import torch

FAMILIES = ["Flux", "SD1.5", "SDXL"]
LATENT = {"Flux": ("Flux", 16), "SD1.5": ("SD15", 4), "SDXL": ("SDXL", 4)}


def sample(comfy_nodes, demo, seed=7, steps=2):
    (positive,) = comfy_nodes.CLIPTextEncode().encode(demo.clip, "a photo of sks")
    channels = LATENT[demo_family(demo)][1]
    latent = {"samples": torch.zeros(1, channels, 8, 8)}
    (out,) = comfy_nodes.common_ksampler(demo.model, seed, steps, 1.0, "euler", "normal",
                                         positive, positive, latent)
    return out["samples"]


def demo_family(demo):
    return type(demo.model.model.latent_format).__name__.replace("SD15", "SD1.5")


@pytest.mark.parametrize("family", FAMILIES)
def test_family_pieces_fit_together(host, comfy_nodes, family):
    demo = host.build_demo_model(family, "fp32", seed=0)
    latent_format, channels = LATENT[family]
    assert type(demo.model.model.latent_format).__name__ == latent_format
    (cond,) = comfy_nodes.CLIPTextEncode().encode(demo.clip, "a photo of sks")
    tokens, extra = cond[0]
    from comfyui_lora_lab.nodes import demo_configs as cfg

    context = {"Flux": cfg.FLUX_UNET["context_in_dim"], "SD1.5": cfg.SD15_UNET["context_dim"],
               "SDXL": cfg.SDXL_UNET["context_dim"]}[family]
    assert tokens.shape[-1] == context
    assert extra["pooled_output"].shape[-1] == (cfg.CLIP_G["projection_dim"] if family == "SDXL"
                                                else cfg.CLIP_L["hidden_size"])
    latents = demo.vae.encode(torch.rand(1, 64, 64, 3))
    assert latents.shape == (1, channels, 8, 8)
    decoded = demo.vae.decode(latents)
    assert decoded.shape == (1, 64, 64, 3)
    out = sample(comfy_nodes, demo)
    assert out.shape == (1, channels, 8, 8) and torch.isfinite(out).all()


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
    layers = [f"diffusion_model.{name}.weight" for name, module in demo.model.model.diffusion_model.named_modules()
              if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))]
    assert layers and not [k for k in layers if k not in targets]
    expected_prefix = {"Flux": "lora_unet_double_blocks_0_img_attn_qkv",
                       "SD1.5": "lora_unet_down_blocks_0_attentions_0_proj_in",
                       "SDXL": "lora_unet_input_blocks_1_1_proj_in"}[family]
    assert expected_prefix in unet_keys
    clip_keys = comfy.lora.model_lora_keys_clip(demo.clip.cond_stage_model, {})
    te_prefix = {"Flux": "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
                 "SD1.5": "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
                 "SDXL": "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"}[family]
    assert te_prefix in clip_keys


def test_unknown_family_is_a_clear_error(host):
    with pytest.raises(ValueError, match="family must be one of Flux, .*SD1.5, SDXL.*, not 'SD9'"):
        host.build_demo_model("SD9", "fp32", 0)
