"""Adapter networks (lycoris in bypass mode through forward hooks): the base model is never
changed, the adapter adds exactly the ΔW the saved file describes, files round-trip."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from comfyui_lora_lab.training.network import ALGORITHMS, AdapterNetwork, NetworkConfig


def tiny_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # spatial: adapted only with conv_rank > 0
        nn.Conv2d(8, 8, 1),  # 1x1: adapted like a linear layer
        nn.Flatten(1),
        nn.Linear(8 * 4 * 4, 16),
        nn.GELU(),
        nn.Linear(16, 6),
    ).to(dtype)


def targets_of(model, spatial=False):
    targets = {"lora_pw": model[1], "lora_fc1": model[3], "lora_fc2": model[5]}
    if spatial:
        targets["lora_conv"] = model[0]
    return targets


def config_for(algorithm, **overrides):
    conv = 0 if algorithm == "LoRA" else 2
    values = dict(algorithm=algorithm, rank=4, alpha=2.0, conv_rank=conv, conv_alpha=3.0)
    values.update(overrides)
    return NetworkConfig(**values)


def inputs(dtype=torch.float32):
    return torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(123), dtype=dtype)


def randomize(network, seed=7):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in network.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_base_untouched(model, before):
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    for module in model.modules():
        assert "forward" not in module.__dict__, f"{type(module).__name__}.forward was monkeypatched"
        assert not module._forward_hooks, f"{type(module).__name__} still has forward hooks"
        assert not module._forward_pre_hooks


# --- attaching and detaching ------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_attach_adds_nothing_at_init_and_detach_restores_the_base_exactly(algorithm):
    model = tiny_model()
    x = inputs()
    before = snapshot(model)
    with torch.no_grad():
        base = model(x)
    spatial = algorithm != "LoRA"
    network = AdapterNetwork(targets_of(model, spatial), config_for(algorithm), seed=1)
    expected_layers = {"lora_pw", "lora_fc1", "lora_fc2"} | ({"lora_conv"} if spatial else set())
    assert set(network.adapters) == expected_layers
    # the adapter parameters are not the model's: the network owns only its own tensors
    model_ids = {id(p) for p in model.parameters()}
    assert all(id(p) not in model_ids for p in network.parameters())

    network.attach()
    assert network.attached
    with torch.no_grad():
        if algorithm == "DoRA":  # W·‖W‖/‖W‖ recomputed: equal up to rounding
            assert torch.allclose(model(x), base, atol=1e-5)
        else:
            assert torch.equal(model(x), base)  # up (or w2) weights start at zero: ΔW = 0

    randomize(network)
    with torch.no_grad():
        adapted = model(x)
    assert (adapted - base).abs().max() > 1e-3

    network.detach()
    assert not network.attached
    with torch.no_grad():
        assert torch.equal(model(x), base)
    assert_base_untouched(model, before)


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_every_adapted_layer_contributes(algorithm):
    # each hook must reach its own layer: randomising one adapter at a time changes the output
    model = tiny_model()
    x = inputs()
    with torch.no_grad():
        base = model(x)
    network = AdapterNetwork(targets_of(model, algorithm != "LoRA"), config_for(algorithm), seed=1)
    network.attach()
    for i, (name, adapter) in enumerate(network.adapters.items()):
        with torch.no_grad():
            for p in network.parameters():
                p.zero_()
            for p in adapter.parameters():
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
            assert (model(x) - base).abs().max() > 1e-4, name
    network.detach()


def test_attach_twice_does_not_apply_the_adapter_twice():
    model = tiny_model()
    x = inputs()
    network = AdapterNetwork(targets_of(model), config_for("LoRA"), seed=1)
    randomize(network)
    network.attach()
    with torch.no_grad():
        once = model(x)
    network.attach()
    with torch.no_grad():
        assert torch.equal(model(x), once)
    network.detach()
    assert all(not m._forward_hooks for m in model.modules())


def test_two_networks_on_one_model_add_up_and_detach_independently():
    model = tiny_model()
    x = inputs()
    with torch.no_grad():
        base = model(x)
    a = AdapterNetwork({"lora_fc2": model[5]}, config_for("LoRA"), seed=1)
    b = AdapterNetwork({"lora_fc2": model[5]}, config_for("LoRA"), seed=2)
    randomize(a, 1)
    randomize(b, 2)
    with torch.no_grad():
        a.attach()
        only_a = model(x)
        b.attach()
        both = model(x)
        a.detach()
        only_b = model(x)
        b.detach()
        assert torch.allclose(both - base, (only_a - base) + (only_b - base), atol=1e-5)
        assert torch.equal(model(x), base)


# --- the file format: ΔW = up @ down * alpha / rank --------------------------------------------

def _merged_delta(tensors, name, weight_shape):
    up = tensors[f"{name}.lora_up.weight"]
    down = tensors[f"{name}.lora_down.weight"]
    alpha = float(tensors[f"{name}.alpha"])
    rank = down.shape[0]
    return ((up.flatten(1) @ down.flatten(1)) * (alpha / rank)).reshape(weight_shape)


def test_lora_bypass_equals_the_merged_weight_the_file_describes():
    model = tiny_model(dtype=torch.float64)
    x = inputs(torch.float64)
    network = AdapterNetwork(targets_of(model), config_for("LoRA", rank=4, alpha=3.0), seed=1)
    randomize(network)
    tensors = network.file_state_dict(torch.float64)
    assert float(tensors["lora_fc1.alpha"]) == 3.0
    assert tensors["lora_fc1.lora_up.weight"].shape == (16, 4)
    assert tensors["lora_fc1.lora_down.weight"].shape == (4, 128)

    fc1, pw = model[3], model[1]
    h = torch.randn(5, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    network.attach()
    with torch.no_grad():
        hooked_fc = fc1(h)
        hooked_pw = pw(x.repeat(1, 3, 1, 1)[:, :8])
    network.detach()
    with torch.no_grad():
        merged_fc = F.linear(h, fc1.weight + _merged_delta(tensors, "lora_fc1", fc1.weight.shape), fc1.bias)
        merged_pw = F.conv2d(x.repeat(1, 3, 1, 1)[:, :8],
                             pw.weight + _merged_delta(tensors, "lora_pw", pw.weight.shape), pw.bias)
        # the adapter's effect is large compared with the tolerance: the check has teeth
        assert (merged_fc - fc1(h)).abs().max() > 1e-2
    assert torch.allclose(hooked_fc, merged_fc, rtol=0, atol=1e-10)
    assert torch.allclose(hooked_pw, merged_pw, rtol=0, atol=1e-10)


def test_locon_spatial_conv_bypass_equals_the_merged_kernel():
    model = tiny_model(dtype=torch.float64)
    x = inputs(torch.float64)
    network = AdapterNetwork(targets_of(model, spatial=True),
                             config_for("LoCon", conv_rank=2, conv_alpha=3.0), seed=1)
    randomize(network)
    tensors = network.file_state_dict(torch.float64)
    assert float(tensors["lora_conv.alpha"]) == 3.0
    conv = model[0]
    network.attach()
    with torch.no_grad():
        hooked = conv(x)
    network.detach()
    with torch.no_grad():
        merged = F.conv2d(x, conv.weight + _merged_delta(tensors, "lora_conv", conv.weight.shape), conv.bias,
                          padding=1)
    assert torch.allclose(hooked, merged, rtol=0, atol=1e-10)


def test_file_state_dict_casts_weights_but_keeps_alpha_exact():
    model = tiny_model()
    network = AdapterNetwork(targets_of(model), config_for("LoRA", alpha=0.3), seed=1)
    tensors = network.file_state_dict(torch.bfloat16)
    assert tensors["lora_fc1.lora_up.weight"].dtype == torch.bfloat16
    assert tensors["lora_fc1.alpha"].dtype == torch.float32
    assert float(tensors["lora_fc1.alpha"]) == pytest.approx(0.3, rel=1e-7)
    assert all(not t.requires_grad and t.is_contiguous() for t in tensors.values())


# --- loading a saved adapter --------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_file_round_trip_reproduces_the_outputs(algorithm):
    model = tiny_model()
    x = inputs()
    spatial = algorithm != "LoRA"
    saved = AdapterNetwork(targets_of(model, spatial), config_for(algorithm), seed=1)
    randomize(saved)
    saved.attach()
    with torch.no_grad():
        expected = model(x)
    saved.detach()
    tensors = saved.file_state_dict()

    fresh = AdapterNetwork(targets_of(model, spatial), config_for(algorithm), seed=99)
    fresh.attach()
    with torch.no_grad():
        assert not torch.equal(model(x), expected)
    fresh.load_file_state_dict(tensors, "saved.safetensors")
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    fresh.detach()
    again = fresh.file_state_dict()
    assert again.keys() == tensors.keys()
    assert all(torch.equal(again[k], tensors[k]) for k in tensors)


def test_loading_a_file_without_one_of_the_layers_names_file_and_layer():
    model = tiny_model()
    tensors = AdapterNetwork(targets_of(model), config_for("LoRA"), seed=1).file_state_dict()
    partial = {k: v for k, v in tensors.items() if not k.startswith("lora_fc2.")}
    fresh = AdapterNetwork(targets_of(model), config_for("LoRA"), seed=2)
    with pytest.raises(ValueError, match=r"old\.safetensors.*lora_fc2"):
        fresh.load_file_state_dict(partial, "old.safetensors")


def test_a_layer_name_prefix_is_not_mistaken_for_another_layer():
    # "lora_fc1" must not pick up the tensors of a layer called "lora_fc10"
    model = tiny_model()
    tensors = AdapterNetwork({"lora_fc10": model[3]}, config_for("LoRA"), seed=1).file_state_dict()
    fresh = AdapterNetwork({"lora_fc1": model[3]}, config_for("LoRA"), seed=2)
    with pytest.raises(ValueError, match="lora_fc1"):
        fresh.load_file_state_dict(tensors, "other.safetensors")


def test_loading_a_file_of_another_rank_names_file_and_layer():
    model = tiny_model()
    tensors = AdapterNetwork(targets_of(model), config_for("LoRA", rank=2, alpha=2.0), seed=1).file_state_dict()
    fresh = AdapterNetwork(targets_of(model), config_for("LoRA", rank=4, alpha=2.0), seed=2)
    before = fresh.file_state_dict()
    with pytest.raises(ValueError, match=r"rank4\.safetensors: layer lora_\w+ .*another algorithm or rank"):
        fresh.load_file_state_dict(tensors, "rank4.safetensors")
    # the first layer checked fails before anything is loaded
    after = fresh.file_state_dict()
    first = next(iter(fresh.adapters))
    assert all(torch.equal(after[k], before[k]) for k in after if k.startswith(first + "."))


def test_loading_a_file_of_another_algorithm_is_refused():
    model = tiny_model()
    tensors = AdapterNetwork(targets_of(model), config_for("LoHa", conv_rank=0), seed=1).file_state_dict()
    fresh = AdapterNetwork(targets_of(model), config_for("LoRA"), seed=2)
    with pytest.raises(ValueError, match="another algorithm or rank"):
        fresh.load_file_state_dict(tensors, "loha.safetensors")


def test_loading_a_layer_with_a_missing_weight_is_refused():
    model = tiny_model()
    tensors = AdapterNetwork(targets_of(model), config_for("LoRA"), seed=1).file_state_dict()
    del tensors["lora_fc1.lora_down.weight"]
    fresh = AdapterNetwork(targets_of(model), config_for("LoRA"), seed=2)
    with pytest.raises(ValueError, match=r"broken\.safetensors: layer lora_fc1"):
        fresh.load_file_state_dict(tensors, "broken.safetensors")


def test_loading_a_file_saved_with_another_alpha_is_refused():
    # alpha scales ΔW: continuing an alpha-2 file under alpha 4 would train (and then save)
    # something other than what the file holds
    model = tiny_model()
    tensors = AdapterNetwork(targets_of(model), config_for("LoRA", alpha=2.0), seed=1).file_state_dict()
    fresh = AdapterNetwork(targets_of(model), config_for("LoRA", alpha=4.0), seed=2)
    with pytest.raises(ValueError, match=r"a2\.safetensors: layer lora_\w+ was saved with alpha 2"):
        fresh.load_file_state_dict(tensors, "a2.safetensors")


def test_continuing_from_a_file_keeps_the_files_strength():
    # the loaded network must apply exactly the ΔW of the file, at the file's alpha
    model = tiny_model()
    x = inputs()
    saved = AdapterNetwork(targets_of(model), config_for("LoRA", alpha=2.0), seed=1)
    randomize(saved)
    saved.attach()
    with torch.no_grad():
        expected = model(x)
    saved.detach()
    fresh = AdapterNetwork(targets_of(model), config_for("LoRA", alpha=2.0), seed=2)
    fresh.load_file_state_dict(saved.file_state_dict(torch.bfloat16), "bf16.safetensors")
    fresh.attach()
    with torch.no_grad():
        assert torch.allclose(model(x), expected, rtol=2e-2, atol=2e-2)
    fresh.detach()
    assert float(fresh.file_state_dict()["lora_fc1.alpha"]) == 2.0


# --- seeds --------------------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_same_seed_same_initial_weights_other_seed_other_weights(algorithm):
    spatial = algorithm != "LoRA"
    one = AdapterNetwork(targets_of(tiny_model(), spatial), config_for(algorithm), seed=5).file_state_dict()
    torch.manual_seed(12345)  # the global RNG state must not matter
    two = AdapterNetwork(targets_of(tiny_model(), spatial), config_for(algorithm), seed=5).file_state_dict()
    other = AdapterNetwork(targets_of(tiny_model(), spatial), config_for(algorithm), seed=6).file_state_dict()
    assert one.keys() == two.keys() == other.keys()
    assert all(torch.equal(one[k], two[k]) for k in one)
    # DoRA's magnitude starts as the base weight's column norms: not random
    random_keys = [k for k in one if one[k].ndim >= 2 and one[k].abs().sum() > 0 and "dora_scale" not in k]
    if algorithm == "Diag-OFT":  # starts as the identity rotation: nothing random to compare
        assert not random_keys
        return
    assert random_keys, "no randomly initialised tensor"
    assert all(not torch.equal(one[k], other[k]) for k in random_keys)


def test_lora_down_weights_depend_on_the_seed():
    a = AdapterNetwork(targets_of(tiny_model()), config_for("LoRA"), seed=0).file_state_dict()
    b = AdapterNetwork(targets_of(tiny_model()), config_for("LoRA"), seed=1).file_state_dict()
    for name in ("lora_pw", "lora_fc1", "lora_fc2"):
        assert not torch.equal(a[f"{name}.lora_down.weight"], b[f"{name}.lora_down.weight"])
        assert torch.count_nonzero(a[f"{name}.lora_up.weight"]) == 0


def test_building_a_network_leaves_the_global_rng_alone():
    model = tiny_model()
    torch.manual_seed(42)
    expected = torch.rand(3)
    torch.manual_seed(42)
    AdapterNetwork(targets_of(model), config_for("LoRA"), seed=9)
    assert torch.equal(torch.rand(3), expected)


# --- validation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("config, message", [
    (NetworkConfig(algorithm="LoRA", conv_rank=4), "conv_rank"),
    (NetworkConfig(rank=0), "rank must be at least 1"),
    (NetworkConfig(algorithm="IA3"), "algorithm must be one of LoRA, LoCon, LoHa, LoKr"),
    (NetworkConfig(alpha=0), "alpha"),
    (NetworkConfig(algorithm="LoCon", conv_rank=-1), "conv_rank"),
    (NetworkConfig(dropout=1.0), "dropout"),
])
def test_invalid_configs_are_refused(config, message):
    with pytest.raises(ValueError, match=message):
        config.validate()
    with pytest.raises(ValueError, match=message):
        AdapterNetwork(targets_of(tiny_model()), config)


def test_rank_larger_than_a_layer_allows_names_the_layer():
    model = tiny_model()  # fc2 is 16 -> 6: rank 7 does not fit
    with pytest.raises(ValueError, match=r"rank 7 .*lora_fc2.*\(6\)"):
        AdapterNetwork(targets_of(model), NetworkConfig(rank=7, alpha=7), seed=0)
    # the spatial conv (3 in, 3x3 kernel, 8 out) allows min(8, 27) = 8
    with pytest.raises(ValueError, match=r"lora_conv.*\(8\)"):
        AdapterNetwork(targets_of(model, spatial=True),
                       NetworkConfig(algorithm="LoCon", rank=4, conv_rank=9, conv_alpha=1), seed=0)
    AdapterNetwork(targets_of(model, spatial=True),
                   NetworkConfig(algorithm="LoCon", rank=6, alpha=6, conv_rank=8, conv_alpha=1), seed=0)


def test_no_layer_to_adapt_is_refused():
    with pytest.raises(ValueError, match="no layer to adapt"):
        AdapterNetwork({}, NetworkConfig())
    # a spatial conv alone with conv_rank 0 leaves nothing to adapt either
    with pytest.raises(ValueError, match="no layer to adapt"):
        AdapterNetwork({"lora_conv": tiny_model()[0]}, NetworkConfig(algorithm="LoCon", conv_rank=0))


def test_spatial_convs_are_skipped_when_conv_rank_is_zero():
    model = tiny_model()
    network = AdapterNetwork(targets_of(model, spatial=True), NetworkConfig(algorithm="LoCon", rank=4, alpha=4),
                             seed=0)
    assert set(network.adapters) == {"lora_pw", "lora_fc1", "lora_fc2"}


# --- training -----------------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_gradients_reach_only_the_adapter(algorithm):
    model = tiny_model()
    model.requires_grad_(False)  # as the host freezes the base
    network = AdapterNetwork(targets_of(model, algorithm != "LoRA"), config_for(algorithm), seed=1)
    randomize(network)
    network.attach()
    model(inputs()).square().mean().backward()
    network.detach()
    assert all(p.grad is None for p in model.parameters())
    grads = {name: p.grad for name, p in network.named_parameters()}
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert all(torch.count_nonzero(g) > 0 for g in grads.values())


def test_an_optimizer_step_changes_the_output_but_never_the_base():
    model = tiny_model()
    model.requires_grad_(False)
    before = snapshot(model)
    x = inputs()
    with torch.no_grad():
        base = model(x)
    network = AdapterNetwork(targets_of(model), config_for("LoRA"), seed=1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    network.attach()
    for _ in range(2):
        optimizer.zero_grad()
        (model(x) - 1).square().mean().backward()
        optimizer.step()
    with torch.no_grad():
        assert (model(x) - base).abs().max() > 1e-4
    network.detach()
    assert_base_untouched(model, before)


def test_max_norm_rescales_a_large_adapter_and_the_file_carries_it():
    model = tiny_model()
    x = inputs()
    network = AdapterNetwork(targets_of(model), config_for("LoRA"), seed=1)
    randomize(network)
    assert network.apply_max_norm(1e-3) == 3
    network.attach()
    with torch.no_grad():
        scaled = model(x)
    network.detach()
    # the saved file must reproduce the rescaled adapter, not the raw parameters
    fresh = AdapterNetwork(targets_of(model), config_for("LoRA"), seed=2)
    fresh.load_file_state_dict(network.file_state_dict(), "scaled.safetensors")
    fresh.attach()
    with torch.no_grad():
        assert torch.allclose(model(x), scaled, atol=1e-6)
    fresh.detach()
    assert network.apply_max_norm(1e6) == 0
