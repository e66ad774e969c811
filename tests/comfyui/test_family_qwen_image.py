"""Qwen-Image: what the shared family tests do not cover — a demo text encoder without the
full-size vision tower (its memory bounded), the Qwen2.5-VL (LLM) text encoder refused for
training, module-path keys and metadata names, ComfyUI's sampling shift (1.15, a log-shift: e^1.15)
as the timestep shift, and 5-D latents (Wan 2.1 VAE, a frame axis) through masks, flips and samples."""

import math

import pytest
import torch

from labtest import families
from labtest.training import build_in_executor_mode, make_request, pattern_image, saved_file, train

QWEN = families.params(["Qwen-Image"])


def _dataset(mask=None, flip=False):
    from comfyui_lora_lab.training.dataset import Dataset, DatasetSample

    sample = DatasetSample(image=pattern_image(), mask=mask, caption="a photo of sks", concept="sks")
    return Dataset(samples=(sample,), trigger="sks", flip=flip)


def _request(demo, steps=2, **overrides):
    dataset = overrides.pop("dataset", None) or _dataset()
    return make_request(demo, dataset, steps=steps, lr=1e-3, name="qwen_image_lora", **overrides)


def _left_mask():
    """A loss weight on the image's left quarter (not mirror-symmetric: a flip shows)."""
    image = pattern_image()
    mask = torch.zeros(image.shape[:2])
    mask[:, : image.shape[1] // 4] = 1
    return mask


@pytest.mark.parametrize("family", QWEN)
def test_qwen_image_demo_is_small_and_its_text_encoder_is_the_language_model_only(host, family):
    demo = build_in_executor_mode(host, family)
    encoder = demo.clip.cond_stage_model
    assert not any(".visual." in key for key in encoder.state_dict())  # no 670M-parameter vision tower
    assert sum(p.numel() for p in encoder.parameters()) < 3_000_000
    assert sum(p.numel() for p in demo.model.model.diffusion_model.parameters()) < 1_000_000
    assert sum(p.numel() for p in demo.vae.first_stage_model.parameters()) < 2_000_000
    assert not any(t.is_meta for t in encoder.state_dict().values())
    cond = host.encode_caption(demo.clip, "a photo of sks")
    assert cond[0].shape[-1] == demo.model.model.diffusion_model.txt_norm.weight.shape[0] and cond[0].isfinite().all()


@pytest.mark.parametrize("family", QWEN)
def test_qwen_image_file_keys_metadata_and_the_model_shift(host, loras_dir, family):
    from comfyui_lora_lab.nodes.host import TrainingModel

    demo = build_in_executor_mode(host, family)
    with TrainingModel(demo.model, None, False, 1.0) as model:
        assert model.guidance is None  # Qwen-Image takes no guidance embedding
    result = train(_request(demo))
    meta, keys = saved_file(result.lora_path)
    for layer in ("attn_to_q", "attn_add_k_proj", "attn_to_add_out", "img_mlp_net_2", "txt_mlp_net_0_proj"):
        assert f"lora_unet_transformer_blocks_0_{layer}.lora_down.weight" in keys
    assert not any("_mod_" in key for key in keys)  # modulations only with the "all" preset
    assert (meta["ss_base_model_version"], meta["modelspec.architecture"]) == ("qwen_image", "Qwen-Image/lora")
    # ComfyUI's setting is 1.15, a log-shift (Flux-style sampling): it samples with s = e^1.15 ≈ 3.16,
    # the discrete flow shift the file records (ComfyUI's own Qwen-Image template samples at 3.1).
    assert demo.model.model.model_config.sampling_settings["shift"] == 1.15
    assert meta["ss_timestep_sampling"] == "shift"
    assert float(meta["ss_discrete_flow_shift"]) == pytest.approx(math.exp(1.15), rel=1e-5)
    image = pattern_image()
    assert meta["ss_resolution"] == f"{image.shape[1] - image.shape[1] % 16}x{image.shape[0] - image.shape[0] % 16}"


@pytest.mark.parametrize("family", QWEN)
def test_qwen_image_text_encoder_training_is_refused_with_the_reason(host, loras_dir, family):
    from comfyui_lora_lab.training.settings import OptimizerSettings

    demo = build_in_executor_mode(host, family)
    with pytest.raises(ValueError, match=r"text encoder is an LLM \(Qwen2.5-VL\) and is not trained"):
        train(_request(demo, optimizer=OptimizerSettings(text_encoder_lr=1e-4)))


@pytest.mark.parametrize("family", QWEN)
def test_qwen_image_5d_latents_masks_and_flips_through_the_latent_cache(host, family):
    from comfyui_lora_lab.nodes import train_run
    from comfyui_lora_lab.training.masked_loss import pool_to_latent

    demo = build_in_executor_mode(host, family)
    mask = _left_mask()
    with torch.inference_mode(False):
        (sample,) = train_run.encode_samples(_request(demo, dataset=_dataset(mask=mask, flip=True)))
    frames, h, w = sample.latent.shape[1:]
    assert sample.latent.shape == (16, 1, h, w) and frames == 1  # the Wan VAE's frame axis kept
    assert h * 8 == pattern_image().shape[0] - pattern_image().shape[0] % 16
    assert sample.weight.shape == (1, 1, h, w)
    expected = pool_to_latent(mask[None, None, : h * 8, : w * 8], (1, h, w))[0]
    assert torch.allclose(sample.weight, expected)
    flipped_latent, flipped_weight = sample.flipped
    assert flipped_latent.shape == sample.latent.shape
    assert torch.allclose(flipped_weight, sample.weight.flip(-1))  # mirrored along the width axis, the last
    assert not torch.allclose(flipped_latent, sample.latent)


@pytest.mark.parametrize("family", QWEN)
def test_qwen_image_samples_during_training_are_images_of_the_asked_size(host, loras_dir, family):
    from comfyui_lora_lab.training.settings import SampleSettings

    demo = build_in_executor_mode(host, family)
    settings = SampleSettings(prompts=("a photo of {trigger}",), steps=2, width=48, height=32, cfg=2.5)
    with torch.inference_mode(False):
        result = train(_request(demo, dataset=_dataset(mask=_left_mask()), samples=settings))
    assert [step for step, _ in result.samples] == [0, 2]  # at the start and with the final save
    for _, images in result.samples:
        assert images.shape == (1, 32, 48, 3) and images.isfinite().all()
