"""fp8 base weights (float8_e4m3fn, float8_e5m2, scaled fp8 as ComfyUI loads `*_fp8_scaled` files),
ComfyUI's partial loading on the training path (a memory budget, also on a CPU), and keeping the
activations of the first blocks under checkpointing. One small family (Flux) keeps this fast.

The fp8 gradient bound: a frozen fp8 weight converts to float64 exactly, and a scaled one's
product (4-bit × 24-bit mantissa) is exact in float64's 53 bits. So the fp8-stored model computing
in float64 and a float64 model holding the dequantized weights are the same float64 function:
the autograd derivative of the first and a central difference of the second differ only by what
labtest.gradcheck bounds (ComfyUI's float32 output rounding, truncation, backward rounding), and
that bound is used unchanged (≤ 0.5% of the derivative, so a gradient 1% off fails)."""

import pytest
import torch

from labtest.gradcheck import Check, assert_sound, directional_check
from labtest.training import build_in_executor_mode, eval_loss, make_request, one_image_dataset, square_mask, train


FAMILY = "Flux"
FP8_TYPES = ["fp8_e4m3fn", "fp8_e5m2", "fp8_scaled"]


def _linears(diffusion_model):
    from comfy.ops import CastWeightBiasOp

    return {n: m for n, m in diffusion_model.named_modules()
            if isinstance(m, CastWeightBiasOp) and getattr(m, "weight", None) is not None and m.weight.ndim == 2}


def _dequantized(module) -> torch.Tensor:
    """The layer's weight as the float64 numbers it computes with (exact: see the module doc)."""
    weight = module.weight
    if type(weight).__name__ == "QuantizedTensor":  # ComfyUI 0.33's quant_ops layers
        weight = weight.dequantize()
    weight = weight.detach().double()
    scale = getattr(module, "scale_weight", None)  # 0.3.64's scaled-fp8 layers
    return weight * scale.double() if scale is not None else weight


@pytest.mark.parametrize("weight_dtype", FP8_TYPES)
def test_fp8_base_trains_and_the_lora_loads_on_the_bf16_base(host, comfy_nodes, loras_dir, weight_dtype):
    import comfy.sd
    import comfy.utils

    from comfyui_lora_lab.nodes import run_log, train_run

    demo = build_in_executor_mode(host, FAMILY, weight_dtype)
    stored = {t.dtype for t in demo.model.model.diffusion_model.state_dict().values()}
    assert torch.float8_e4m3fn in stored or torch.float8_e5m2 in stored
    request = make_request(demo, one_image_dataset(mask=square_mask()), steps=30)
    result = train(request)
    assert run_log.latest("").memory == "full"
    with torch.inference_mode(False):
        samples = train_run.encode_samples(request)
    before = eval_loss(host, demo.model, samples)
    after = eval_loss(host, host.apply_lora(demo.model, result.tensors), samples)
    assert after < 0.9 * before, (before, after)

    bf16 = build_in_executor_mode(host, FAMILY, "bf16")
    g = torch.Generator().manual_seed(0)
    x0 = samples[0].latent.unsqueeze(0)
    noise, sigma = torch.randn(x0.shape, generator=g), torch.tensor([0.5])

    def output(model):
        with torch.inference_mode(False), torch.no_grad(), host.TrainingModel(model, None, False, 1.0) as tm:
            return tm.predict(tm.family.noisy(x0, noise, sigma), sigma, [samples[0].cond]).float()

    base = output(bf16.model)
    loaded = output(comfy.sd.load_lora_for_models(bf16.model, None, comfy.utils.load_torch_file(
        str(result.lora_path), safe_load=True), 1.0, 0)[0])
    trained = output(host.apply_lora(bf16.model, result.tensors))
    assert (trained - base).norm() / base.norm() > 1e-3
    assert (loaded - trained).norm() / (trained - base).norm() < 1e-2


@pytest.mark.parametrize("case", ["fp8_e4m3fn", "fp8_e5m2", "fp8_scaled", "half budget", "keep 1 block"])
def test_adapter_gradients_with_fp8_partial_loading_and_kept_blocks(host, loras_dir, case):
    """Autograd on the model as trained (fp8-stored, partially loaded, or with the first block's
    activations kept) against a central difference of a float64 model with the same numbers."""
    from comfyui_lora_lab.nodes import train_run
    from comfyui_lora_lab.training.masked_loss import per_sample_loss, pool_to_latent
    from comfyui_lora_lab.training.network import AdapterNetwork, NetworkConfig

    fp8 = case.startswith("fp8")
    demo = build_in_executor_mode(host, FAMILY, case if fp8 else "fp32")
    reference = build_in_executor_mode(host, FAMILY, "fp32") if fp8 else demo
    with torch.inference_mode(False):
        samples = train_run.encode_samples(make_request(demo, one_image_dataset()))
    unet = demo.model.model.diffusion_model
    # ComfyUI 0.33 loads scaled fp8 as quant_ops layers, which comfy-kitchen dequantizes to 16/32-bit
    # floats only: that model computes in float32, compared with a float32 copy (see below).
    kitchen = any(type(m.weight).__name__ == "QuantizedTensor" for m in _linears(unet).values())
    compute = torch.float32 if kitchen else torch.float64
    with torch.inference_mode():
        if fp8:  # the copy of the dequantized numbers (all exact in float32)
            ref_sd = reference.model.model.diffusion_model.state_dict()
            for name, value in unet.state_dict().items():
                if name in ref_sd and value.shape == ref_sd[name].shape and type(value) is torch.Tensor:
                    ref_sd[name].copy_(value.float())
            ref_layers = _linears(reference.model.model.diffusion_model)
            for name, layer in _linears(unet).items():
                ref_layers[name].weight.copy_(_dequantized(layer).float())
            demo.model.model.manual_cast_dtype = compute
            for p in unet.parameters():
                if p.dtype == torch.float32 and type(p.data) is torch.Tensor:
                    p.data = p.data.to(compute)
            unet.dtype = compute
        reference.model.model.diffusion_model.to(compute)
    reference.model.model.diffusion_model.dtype = compute

    network = AdapterNetwork(host.target_modules(demo.model, "attention+mlp"), NetworkConfig("LoRA", 2, 2.0), seed=1)
    ref_network = AdapterNetwork(host.target_modules(reference.model, "attention+mlp"), NetworkConfig("LoRA", 2, 2.0), seed=1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p, q in zip(network.parameters(), ref_network.parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            q.copy_(p)
    network.to(compute)
    ref_network.to(compute)
    direction = [torch.randn(p.shape, generator=g, dtype=compute) for p in network.parameters()]
    x0 = samples[0].latent.unsqueeze(0).to(compute)
    noise = torch.randn(x0.shape, generator=g, dtype=compute)
    sigma = torch.tensor([0.4], dtype=compute)
    weight = pool_to_latent(square_mask()[None, None], tuple(x0.shape[-2:])).to(compute)
    options = {"half budget": dict(memory_budget=demo.model.model_size() // 2),
               "keep 1 block": dict(keep_activations_blocks=1)}.get(case, {})

    with torch.inference_mode(False), host.TrainingModel(demo.model, network, True, 1.0, **options) as tm:
        assert tm.memory.startswith("partial: ") == (case == "half budget"), tm.memory
        target = tm.family.target(x0, noise, sigma)

        def loss(pred):
            return per_sample_loss(pred, target, weight).sum()

        for p in network.parameters():
            p.grad = None
        pred = tm.predict(tm.family.noisy(x0, noise, sigma), sigma, [samples[0].cond])
        loss(pred.double()).backward()
        analytic = sum(float((p.grad * d).sum()) for p, d in zip(network.parameters(), direction))
    with torch.inference_mode(False), host.TrainingModel(reference.model, ref_network, True, 1.0) as ref:
        ref_pred = ref.predict(ref.family.noisy(x0, noise, sigma), sigma, [samples[0].cond])
        # the same function; 0.3.64's scaled layers multiply the scale into the input or the
        # weight (float64 rounding, then ComfyUI's float32 output: at most one float32 ulp)
        torch.testing.assert_close(pred.detach(), ref_pred, rtol=2.0 ** -23, atol=2.0 ** -23 * float(ref_pred.abs().max()))
        if kitchen:  # the same float32 function: the same gradient up to summation order
            for p in ref_network.parameters():
                p.grad = None
            loss(ref_pred.double()).backward()
            reference_derivative = sum(float((p.grad * d).sum()) for p, d in zip(ref_network.parameters(), direction))
            assert abs(analytic - reference_derivative) <= 1e-5 * abs(reference_derivative)
            return  # the float32 model's own gradients: the float64 check of test_training
        check = directional_check(lambda: ref.predict(ref.family.noisy(x0, noise, sigma), sigma, [samples[0].cond]),
                                  loss, list(ref_network.parameters()), direction, eps=1e-3)
    check = Check(analytic, check.numeric, check.bound)
    print(f"{case}: {check}")
    assert_sound(check)
    with pytest.raises(AssertionError, match="gradient off"):
        assert_sound(Check(check.analytic * 1.01, check.numeric, check.bound))


def test_partial_load_with_half_the_model_trains_like_a_full_load(host, loras_dir):
    """ComfyUI's per-layer partial loading (ModelPatcher.load with lowvram_model_memory) on the
    training path: the loss falls, the run log says so, and the LoRA equals a full load's."""
    from comfyui_lora_lab.nodes import run_log
    from comfyui_lora_lab.training.settings import OptimizerSettings

    demo = build_in_executor_mode(host, FAMILY)
    budget = demo.model.model_size() // 2
    partial = train(make_request(demo, one_image_dataset(), steps=12, name="partial", memory_budget=budget))
    memory = run_log.latest("").memory
    assert memory.startswith("partial: ") and memory.endswith(" MB on the device"), memory
    full = train(make_request(demo, one_image_dataset(), steps=12, name="full",
                              optimizer=OptimizerSettings(memory_mode="full")))
    assert run_log.latest("").memory == "full"
    losses = [h["loss"] for h in partial.history]
    assert sum(losses[-4:]) < sum(losses[:4]), losses
    assert partial.tensors.keys() == full.tensors.keys()
    for key, value in full.tensors.items():
        torch.testing.assert_close(partial.tensors[key], value, rtol=1e-5, atol=1e-7, msg=key)


def test_memory_settings_are_checked():
    from comfyui_lora_lab.training.settings import OptimizerSettings

    with pytest.raises(ValueError, match="memory_mode"):
        OptimizerSettings(memory_mode="lots")
    with pytest.raises(ValueError, match="keep_activations_blocks"):
        OptimizerSettings(keep_activations_blocks=-1)


def _quantized_layouts() -> list:
    """ComfyUI's quantized layouts other than fp8 (0.33's comfy/quant_ops.py), where this ComfyUI
    can make them on the CPU; not applicable on versions without them."""
    from labtest import families

    families.available()  # ComfyUI imported
    try:
        from comfy.quant_ops import QuantizedTensor

        QuantizedTensor.from_float(torch.ones(4, 4), "TensorWiseINT8Layout")
        return ["TensorWiseINT8Layout"]
    except Exception:  # noqa: BLE001 - no such layouts (0.3.64) or no CPU kernel for them
        return [pytest.param("TensorWiseINT8Layout", marks=pytest.mark.not_applicable("ComfyUI's int8 layout"))]


@pytest.mark.parametrize("layout", _quantized_layouts())
def test_quantized_types_other_than_fp8_are_refused_by_name(host, layout):
    """A layer quantized as int8 (or nvfp4, w4a4, w4a8, mxfp8) is refused before training, naming
    the layer and its layout, instead of being trained untested."""
    from comfy.quant_ops import QuantizedTensor

    demo = build_in_executor_mode(host, "Flux", "fp8_scaled")
    layer = demo.model.model.diffusion_model.double_blocks[0].img_attn.qkv
    assert str(layer.weight._layout_cls).startswith("TensorCoreFP8")
    host.target_modules(demo.model, "attention")  # scaled fp8 trains
    weight = layer.weight.dequantize().float()
    with torch.inference_mode(False):
        layer.weight = torch.nn.Parameter(QuantizedTensor.from_float(weight, layout), requires_grad=False)
    with pytest.raises(ValueError, match=f"img_attn.qkv.weight is quantized as {layout}, which LoRA Lab does not train"):
        host.target_modules(demo.model, "attention")
