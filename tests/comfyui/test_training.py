"""Training inside a real ComfyUI (in-process, CPU, tiny models built as loader nodes build them):
it learns, the input MODEL is untouched, the saved file is what the stock loader applies."""

import logging

import pytest
import torch

from labtest import families
from labtest.gradcheck import Check, assert_sound, directional_check
from labtest.training import (build_in_executor_mode, eval_loss, make_request, one_image_dataset, pattern_image,
                              square_mask, train)

FAMILIES = families.params(families.ALL)  # every family this ComfyUI has; the others: not applicable
TE_FAMILIES = families.params([f for f in families.ALL if families.EXPECT[f].te_prefix])  # CLIP encoders


# Every family in fp32; the half-precision storage types on the three first families (the code path
# is shared: ComfyUI's manual cast), which keeps the tier inside its CI time budget.
LEARNING_CASES = families.params([(f, "fp32") for f in families.ALL] +
                                 [(f, d) for f in ("Flux", "SD1.5", "SDXL") for d in ("bf16", "fp16")])


@pytest.mark.parametrize("family, weight_dtype", LEARNING_CASES)
def test_training_one_image_makes_the_lora_predict_it_better(host, loras_dir, family, weight_dtype):
    from comfyui_lora_lab.nodes import train_run

    demo = build_in_executor_mode(host, family, weight_dtype)
    request = make_request(demo, one_image_dataset(mask=square_mask()), steps=40)
    result = train(request)
    assert result.lora_path.is_file() and result.lora_path.parent == loras_dir / "loralab"
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 40 and all(torch.isfinite(torch.tensor(losses)))
    with torch.inference_mode(False):
        samples = train_run.encode_samples(request)
    before = eval_loss(host, demo.model, samples)
    after = eval_loss(host, host.apply_lora(demo.model, result.tensors), samples)
    assert after < 0.9 * before, (before, after)
    from safetensors import safe_open

    with safe_open(str(result.lora_path), "pt") as f:
        assert f.metadata()["ss_base_model_version"] == families.EXPECT[family].base_model_version


@pytest.mark.parametrize("family, architecture", [("Flux", "flux-1-dev/lora"), ("Flux.1 schnell", "flux-1-schnell/lora")])
def test_flux_files_name_dev_or_schnell_as_kohya_does(host, family, architecture):
    demo = build_in_executor_mode(host, family)
    assert host.profile_of(demo.model).names(demo.model) == ("flux1", architecture)


@pytest.mark.parametrize("family", FAMILIES)
def test_input_model_output_is_bit_identical_after_training(host, comfy_nodes, loras_dir, family):
    demo = build_in_executor_mode(host, family)

    def sample():
        (cond,) = comfy_nodes.CLIPTextEncode().encode(demo.clip, "a photo of sks")
        latent = host.encode_images(demo.vae, demo.model, pattern_image().unsqueeze(0)) * 0  # the family's shape
        (out,) = comfy_nodes.common_ksampler(demo.model, 5, 2, 1.0, "euler", "normal", cond, cond,
                                             {"samples": latent})
        return out["samples"]

    before = sample()
    train(make_request(demo, one_image_dataset(), steps=5))
    assert torch.equal(before, sample())
    modules = list(demo.model.model.diffusion_model.modules())
    assert not any(module._forward_hooks for module in modules)
    assert not any("forward" in module.__dict__ for module in modules)  # checkpoint wrappers removed


@pytest.mark.parametrize("family", FAMILIES)
def test_latents_use_the_family_latent_scaling(host, family):
    demo = build_in_executor_mode(host, family)
    pixels = pattern_image().unsqueeze(0)
    with torch.no_grad():
        raw = demo.vae.encode(pixels)
    scaled = host.encode_images(demo.vae, demo.model, pixels)
    expect = families.EXPECT[family]
    assert type(demo.model.model.latent_format).__name__ == expect.latent_format
    assert scaled.shape[1] == expect.latent_channels
    if expect.scaling is not None:
        shift, scale = expect.scaling
        assert torch.allclose(scaled, (raw - shift) * scale, atol=1e-6)
    else:  # a per-channel mean/std format (Wan 2.1's): each channel normalised on its own
        fmt = demo.model.model.latent_format
        mean = fmt.latents_mean.reshape(1, -1, *[1] * (raw.ndim - 2))
        std = fmt.latents_std.reshape(1, -1, *[1] * (raw.ndim - 2))
        assert torch.allclose(scaled, (raw - mean) * fmt.scale_factor / std, atol=1e-5)


ALGORITHMS = [("LoRA", 0), ("LoCon", 4), ("LoHa", 4), ("LoKr", 4), ("GLoRA", 0), ("Diag-OFT", 0), ("DoRA", 0)]


@pytest.mark.parametrize("algorithm, conv_rank", ALGORITHMS)
@pytest.mark.parametrize("family", FAMILIES)
def test_saved_file_loads_in_the_stock_loader_as_trained(host, comfy_nodes, loras_dir, family, algorithm, conv_rank,
                                                        caplog, tmp_path):
    """Every adapter tensor randomised (non-zero up), saved in fp32, loaded the way LoraLoader
    loads a file: no key left over, and the loaded model's output equals the trained one."""
    import comfy.sd
    import comfy.utils

    from comfyui_lora_lab.nodes import train_run
    from comfyui_lora_lab.training import lora_file
    from comfyui_lora_lab.training.network import AdapterNetwork, NetworkConfig

    demo = build_in_executor_mode(host, family)
    config = NetworkConfig(algorithm, rank=4, alpha=2.0, conv_rank=conv_rank, conv_alpha=2.0)
    preset = "all" if conv_rank else "attention+mlp"
    network = AdapterNetwork(host.target_modules(demo.model, preset), config, seed=3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in network.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    path = lora_file.write_atomic(tmp_path / "random.safetensors", network.file_state_dict(torch.float32), {})
    with torch.inference_mode(False):
        samples = train_run.encode_samples(make_request(demo, one_image_dataset()))
    x0 = samples[0].latent.unsqueeze(0)
    noise = torch.randn(x0.shape, generator=g)
    sigma = torch.tensor([0.5]) if families.EXPECT[family].flow else torch.tensor([2.0])

    def output(model, net):
        with torch.inference_mode(False), torch.no_grad(), host.TrainingModel(model, net, False, 1.0) as tm:
            return tm.predict(tm.family.noisy(x0, noise, sigma), sigma, [samples[0].cond])

    base = output(demo.model, None)
    trained = output(demo.model, network)
    caplog.set_level(logging.WARNING)
    loaded_model, _ = comfy.sd.load_lora_for_models(demo.model, None, comfy.utils.load_torch_file(str(path), safe_load=True), 1.0, 0)
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage()]
    loaded = output(loaded_model, None)
    assert (trained - base).norm() / base.norm() > 1e-2
    assert (loaded - trained).norm() / (trained - base).norm() < 1e-3


@pytest.mark.parametrize("checkpointing", [True, False])
@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_gradients_match_finite_differences(host, loras_dir, family, checkpointing):
    """float64: the autograd directional derivative over all adapter parameters equals a central
    finite difference within a bound derived from ComfyUI's float32 output rounding (see
    labtest.gradcheck), tight enough that a gradient 1% off fails: in-place adds in the blocks and
    checkpoint recomputes must not corrupt gradients."""
    from comfyui_lora_lab.nodes import train_run
    from comfyui_lora_lab.training.masked_loss import per_sample_loss, pool_to_latent
    from comfyui_lora_lab.training.network import AdapterNetwork, NetworkConfig

    demo = build_in_executor_mode(host, family)
    with torch.inference_mode(False):
        samples = train_run.encode_samples(make_request(demo, one_image_dataset()))
    with torch.inference_mode():  # still inference tensors, as a loader node leaves them
        demo.model.model.diffusion_model.to(torch.float64)
    demo.model.model.diffusion_model.dtype = torch.float64
    network = AdapterNetwork(host.target_modules(demo.model, "attention+mlp"), NetworkConfig("LoRA", 2, 2.0), seed=1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in network.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    network.double()
    direction = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in network.parameters()]
    x0 = samples[0].latent.unsqueeze(0).double()
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.4 if families.EXPECT[family].flow else 1.5], dtype=torch.float64)
    weight = pool_to_latent(square_mask()[None, None], tuple(x0.shape[-2:])).double()

    with torch.inference_mode(False), host.TrainingModel(demo.model, network, checkpointing, 1.0) as tm:
        target = tm.family.target(x0, noise, sigma)

        def predict():
            return tm.predict(tm.family.noisy(x0, noise, sigma), sigma, [samples[0].cond])

        def loss(pred):
            return per_sample_loss(pred, target, weight).sum()

        wrapped = [m for m in demo.model.model.diffusion_model.modules() if "forward" in m.__dict__]
        assert bool(wrapped) == (checkpointing or tm.profile.copies_without_checkpointing)
        params = list(network.parameters())
        check = directional_check(predict, loss, params, direction, eps=1e-3)
    print(f"{family}, checkpointing {checkpointing}: {check}")
    assert_sound(check)
    with pytest.raises(AssertionError, match="gradient off"):  # the same check catches a gradient 1% off
        assert_sound(Check(check.analytic * 1.01, check.numeric, check.bound))


@pytest.mark.parametrize("family", TE_FAMILIES)
def test_text_encoder_training_saves_loadable_te_weights_and_leaves_input_clip_alone(host, comfy_nodes, loras_dir,
                                                                                       family, caplog):
    import comfy.sd
    import comfy.utils

    from comfyui_lora_lab.training.settings import OptimizerSettings

    demo = build_in_executor_mode(host, family)

    def encode(clip):  # Flux's CLIP-L only reaches the pooled output (the tokens come from T5)
        cond, extra = comfy_nodes.CLIPTextEncode().encode(clip, "a photo of sks")[0][0]
        return torch.cat([cond.flatten(), extra["pooled_output"].flatten()])

    before = encode(demo.clip)
    result = train(make_request(demo, one_image_dataset(), steps=8,
                                optimizer=OptimizerSettings(text_encoder_lr=5e-3)))
    assert torch.equal(before, encode(demo.clip))  # the input CLIP is untouched
    te_keys = [k for k in result.tensors if k.startswith("lora_te")]
    assert any(k.startswith(families.EXPECT[family].te_prefix) for k in te_keys)
    assert any(result.tensors[k].abs().sum() > 0 for k in te_keys if "lora_up" in k)  # it was trained
    caplog.set_level(logging.WARNING)
    tensors = comfy.utils.load_torch_file(str(result.lora_path), safe_load=True)
    _, loaded_clip = comfy.sd.load_lora_for_models(demo.model, demo.clip, tensors, 1.0, 1.0)
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage()]
    assert not torch.allclose(before, encode(loaded_clip))  # the file changes what the CLIP encodes


@pytest.mark.parametrize("algorithm", ["LoRA", "LoHa", "LoKr", "GLoRA", "Diag-OFT", "DoRA"])
@pytest.mark.parametrize("family", TE_FAMILIES)
def test_text_encoder_adapter_file_loads_as_trained(host, comfy_nodes, family, algorithm, caplog, tmp_path):
    import comfy.sd
    import comfy.utils

    from comfyui_lora_lab.training import lora_file
    from comfyui_lora_lab.training.network import AdapterNetwork, NetworkConfig

    demo = build_in_executor_mode(host, family)
    network = AdapterNetwork(host.text_encoder_targets(demo.clip, host.profile_of(demo.model)), NetworkConfig(algorithm, 4, 2.0), seed=2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in network.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    path = lora_file.write_atomic(tmp_path / "te.safetensors", network.file_state_dict(torch.float32), {})

    def encode(clip):
        cond, extra = comfy_nodes.CLIPTextEncode().encode(clip, "a photo of sks")[0][0]
        return torch.cat([cond.flatten(), extra["pooled_output"].flatten()])

    base_out = encode(demo.clip)
    encoder = host.TrainingTextEncoder(demo.clip, network)
    try:
        with torch.inference_mode(False), torch.no_grad():
            cond, extra = encoder.encode("a photo of sks")
            trained = torch.cat([cond.flatten(), extra["pooled_output"].flatten()])
    finally:
        encoder.close()
    caplog.set_level(logging.WARNING)
    _, loaded_clip = comfy.sd.load_lora_for_models(demo.model, demo.clip,
                                                   comfy.utils.load_torch_file(str(path), safe_load=True), 1.0, 1.0)
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage()]
    loaded = encode(loaded_clip)
    assert (trained - base_out).norm() / base_out.norm() > 1e-2
    assert (loaded - trained).norm() / (trained - base_out).norm() < 1e-3
    assert torch.equal(base_out, encode(demo.clip))


@pytest.mark.parametrize("kind", ["video", "subclass"])
def test_unsupported_model_family_is_named(host, comfy_nodes, loras_dir, kind):
    """Anything not on the allow-list is refused by its class name, with what is supported: a
    video model, and a subclass of a supported class (exact classes only: pixel-space variants
    subclass their latent-space families)."""
    import comfy.supported_models as sm

    demo = build_in_executor_mode(host, "SD1.5")
    config_class = sm.WAN21_T2V if kind == "video" else type("SD15Variant", (sm.SD15,), {})
    other = demo.model.clone()
    other.model = type("Model", (), {"model_config": config_class.__new__(config_class)})()
    with pytest.raises(ValueError, match=f"unsupported model family {config_class.__name__}: LoRA Lab trains .*SD15"):
        train(make_request(demo, one_image_dataset(), steps=2, model=other))


def test_non_finite_loss_stops_and_names_the_step(host, loras_dir):
    from comfyui_lora_lab.training.dataset import Dataset, DatasetSample
    from comfyui_lora_lab.training.settings import SaveSettings

    demo = build_in_executor_mode(host, "SD1.5")
    image = pattern_image()
    image[10, 10, 0] = float("nan")
    dataset = Dataset(samples=(DatasetSample(image=image, caption="sks", concept="sks"),))
    with pytest.raises(ValueError, match="the loss became nan at step 1") as error:
        train(make_request(demo, dataset, steps=4, save=SaveSettings(every_n_steps=1, precision="fp32")))
    assert "Last good checkpoint: none was saved yet" in str(error.value)
    assert not list(loras_dir.rglob("*.safetensors"))


def test_dataset_flips_and_caption_variants_reach_training(host, loras_dir):
    """With flips on, the mirrored image is encoded too; with a shuffling caption policy, each
    sample carries its pre-drawn variants, encoded once each."""
    from comfyui_lora_lab.nodes import train_run
    from comfyui_lora_lab.training.captions import CaptionPolicy
    from comfyui_lora_lab.training.dataset import Dataset, DatasetSample

    demo = build_in_executor_mode(host, "SD1.5")
    image = pattern_image()
    policy = CaptionPolicy(template="{trigger}, {caption}", shuffle=True, keep_tokens=1)
    dataset = Dataset(samples=(DatasetSample(image=image, caption="red, green, blue, yellow", concept="c"),),
                      trigger="sks", flip=True, caption_policy=policy)
    with torch.inference_mode(False):
        (sample,) = train_run.encode_samples(make_request(demo, dataset))
        mirrored = host.encode_images(demo.vae, demo.model, image.flip(1).unsqueeze(0))[0]
    assert sample.flipped is not None and torch.allclose(sample.flipped[0], mirrored)
    assert len(sample.cond_variants) == train_run.CAPTION_VARIANTS
    first = sample.cond_variants[0][0]
    assert any(not torch.equal(first, c[0]) for c in sample.cond_variants[1:])  # shuffled captions differ


@pytest.mark.parametrize("family", families.params(["Flux", "SD1.5", "Z-Image"]))
def test_cancel_raised_inside_a_block_forward_saves_the_last_logged_step_and_resumes_exactly(
        host, comfy_nodes, loras_dir, family):
    """ComfyUI 0.33 raises Cancel from inside every cast layer's forward; here ComfyUI's own
    interrupt exception is raised from a block's forward hook (on any version): the run ends in
    `<name>_interrupted_<last logged step>` (LoRA + .trainstate), and a resume from that state
    ends bitwise equal to the uninterrupted run."""
    import comfy.model_management as mm
    from safetensors.torch import load_file

    from comfyui_lora_lab.nodes import run_log
    from comfyui_lora_lab.training.settings import SaveSettings

    demo = build_in_executor_mode(host, family)
    dataset = one_image_dataset(square_mask())
    save = SaveSettings(precision="fp32", save_state=True)
    full = train(make_request(demo, dataset, steps=8, name="full", save=save))

    unet = demo.model.model.diffusion_model
    block = {"Flux": lambda: unet.double_blocks[0], "Z-Image": lambda: unet.layers[0]}.get(family, lambda: unet.middle_block[1])()
    calls = {"n": 0}

    def cancel_in_the_fifth_step(module, args, output):
        calls["n"] += 1  # once a step: a checkpoint's recompute calls forward, not the module
        if calls["n"] == 5:
            raise mm.InterruptProcessingException()

    handle = block.register_forward_hook(cancel_in_the_fifth_step)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            train(make_request(demo, dataset, steps=8, name="cut", save=save))
    finally:
        handle.remove()
    logged = run_log.latest("").steps[-1]["step"]
    assert run_log.latest("").status == "interrupted"
    files = sorted(loras_dir.glob("loralab/cut_interrupted_*.safetensors"))
    assert [f.name for f in files] == [f"cut_interrupted_{logged}.safetensors"] and logged == 4
    assert files[0].with_suffix(".trainstate").is_file()
    assert not (loras_dir / "loralab" / "cut.safetensors").exists()
    (patched,) = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(demo.model, f"loralab/{files[0].name}", 1.0)
    assert patched.patches  # the stock loader applies it

    resume = SaveSettings(precision="fp32", save_state=True, resume_from=f"loralab/cut_interrupted_{logged}.trainstate")
    resumed = train(make_request(demo, dataset, steps=8, name="resumed", save=resume))
    a, b = load_file(full.lora_path), load_file(resumed.lora_path)
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
