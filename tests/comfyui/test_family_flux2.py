"""Flux.2: what the shared family tests do not cover — its 16x VAE (128 channels) built through
ComfyUI's detection, images of sides that are multiples of 16 but not 32 with masks pooled to the
16x grid, guidance only where the model has a guidance embedding (the full model's reaches it),
the full model's Mistral tokenizer read from the text-encoder file, the LLM text encoders refused,
metadata names and the timestep shift ComfyUI samples Flux.2 with (Flux-style log-shift 2.02 =
linear e^2.02)."""

import math

import pytest
import torch

from labtest import families
from labtest.training import build_in_executor_mode, make_request, one_image_dataset, pattern_image, saved_file, train

KLEIN = families.params(["Flux.2 Klein"])
FULL = families.params(["Flux.2"])


def _request(demo, image=None, mask=None, steps=2, **overrides):
    return make_request(demo, one_image_dataset(mask, image=image), steps=steps, lr=1e-3, name="flux2_lora",
                        **overrides)


@pytest.mark.parametrize("family", KLEIN)
def test_flux2_trains_16x_latents_of_any_multiple_of_16_with_the_mask_on_the_latent_grid(host, loras_dir, family):
    """A 48x80 image (3x5 latent cells of the 16x VAE; not a multiple of 32) trains as it is, its
    mask area-averaged to the 3x5 grid; the resolution metadata is the image's own size."""
    from comfyui_lora_lab.nodes import train_run

    demo = build_in_executor_mode(host, family)
    assert host.latent_downscale(demo.model) == 16 and host.pixel_multiple(demo.model) == 16
    image = pattern_image(size=96)[:80, :48].contiguous()
    mask = torch.zeros(80, 48)
    mask[:16, :16] = 1.0  # exactly the top-left latent cell
    mask[16:24, 16:32] = 1.0  # half of the cell below-right of it
    request = _request(demo, image=image, mask=mask)
    with torch.inference_mode(False):
        (sample,) = train_run.encode_samples(request)
    assert sample.latent.shape == (128, 5, 3)
    expected = torch.zeros(5, 3)
    expected[0, 0], expected[1, 1] = 1.0, 0.5
    assert torch.allclose(sample.weight.reshape(5, 3), expected)
    result = train(request)
    meta, _ = saved_file(result.lora_path)
    assert meta["ss_resolution"] == "48x80"
    assert (meta["ss_base_model_version"], meta["modelspec.architecture"]) == ("flux2", "flux-2-dev/lora")
    # ComfyUI samples Flux.2 with Flux's exponential shift mu = 2.02: the linear shift e^2.02
    assert meta["ss_timestep_sampling"] == "shift"
    assert float(meta["ss_discrete_flow_shift"]) == pytest.approx(math.exp(2.02), abs=1e-5)


@pytest.mark.parametrize("family", KLEIN)
def test_flux2_guidance_only_with_a_guidance_embedding(host, family):
    """Klein has no guidance embedding (no guidance passed); a Flux.2 checkpoint with
    `guidance_in` (the full model) gets the training guidance, which its extra_conds reads."""
    from comfyui_lora_lab.nodes import demo_configs
    from comfyui_lora_lab.nodes.host import TrainingModel, demo
    from comfyui_lora_lab.nodes.host.families import flux2

    klein = build_in_executor_mode(host, family)
    with TrainingModel(klein.model, None, False, 1.0) as model:
        assert model.guidance is None
    size = {**demo_configs.FLUX2_KLEIN_UNET, "guidance_embed": True}
    config = demo.detected_config(flux2.skeleton(size), size)
    unet = config.get_model({}, "").diffusion_model
    assert flux2.PROFILE.guidance(unet) and unet.params.guidance_embed
    conds = config.get_model({}, "").extra_conds(cross_attn=torch.zeros(1, 4, size["context_in_dim"]), guidance=1.0,
                                                 noise=torch.zeros(1, 128, 2, 2), device="cpu")
    assert float(conds["guidance"].cond) == 1.0


@pytest.mark.parametrize("family", FULL)
def test_full_flux2_training_guidance_reaches_its_guidance_embedding(host, family):
    """The full model's guidance embedding gets the training guidance: the prediction changes
    with it (Klein's, without an embedding, passes none)."""
    from comfyui_lora_lab.nodes import demo_configs
    from comfyui_lora_lab.nodes.host import TrainingModel

    full = build_in_executor_mode(host, family)
    assert full.model.model.diffusion_model.params.guidance_embed
    cond = torch.randn(1, 6, demo_configs.FLUX2_UNET["context_in_dim"], generator=torch.Generator().manual_seed(0))
    noisy = torch.randn(1, 128, 2, 2, generator=torch.Generator().manual_seed(1))
    outputs = []
    with torch.inference_mode(False), torch.no_grad():
        for guidance in (1.0, 4.0):
            with TrainingModel(full.model, None, False, guidance) as model:
                assert model.guidance == guidance
                outputs.append(model.predict(noisy, torch.tensor([0.5]), [(cond, {})]))
    assert not torch.allclose(outputs[0], outputs[1])


@pytest.mark.parametrize("family", FULL)
def test_full_flux2_tokenizer_is_read_from_the_text_encoder_file(host, family):
    """The full model's Mistral tokenizer is the text-encoder file's `tekken_model` (in no ComfyUI
    tree): the demo's synthetic one tokenizes the chat template's special tokens as single ids,
    starts with <s>, saves with the CLIP, and the encoder stacks three layers (3 x its width)."""
    from comfyui_lora_lab.nodes import demo_configs

    demo = build_in_executor_mode(host, family)
    tokens = demo.clip.tokenize("a photo of sks")
    ids = [t[0] for t in tokens["mistral3_24b"][0]]
    assert ids[:2] == [1, 17] and ids[-1] == 4 and 3 in ids and 18 in ids  # <s> [SYSTEM_PROMPT] ... [/INST]
    assert max(ids) < demo_configs.MISTRAL3_TINY["vocab_size"]
    saved = demo.clip.get_sd()
    assert saved["tekken_model"].dtype == torch.uint8
    cond = demo.clip.encode_from_tokens_scheduled(tokens)[0][0]
    assert cond.shape == (1, len(ids), 3 * demo_configs.MISTRAL3_TINY["hidden_size"])
    assert torch.isfinite(cond).all()


@pytest.mark.parametrize("family", KLEIN + FULL)
def test_flux2_text_encoder_training_is_refused_with_the_reason(host, loras_dir, family):
    from comfyui_lora_lab.training.settings import OptimizerSettings

    demo = build_in_executor_mode(host, family)
    with pytest.raises(ValueError, match="LLMs and are not trained"):
        train(_request(demo, optimizer=OptimizerSettings(text_encoder_lr=1e-4)))
