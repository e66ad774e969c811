"""The objective matches ComfyUI's denoising conventions and kohya's weights and samplers."""

import math

import pytest
import torch

from comfyui_lora_lab.training.objective import (
    FAMILIES, FLOW_SAMPLERS, Eps, Flow, FlowTimesteps, SnrWeighting, VPred, noise_offset,
    sample_discrete_timesteps, sample_flow_sigmas, sigmas_for)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def latents(shape=(4, 4, 8, 8), seed=0):
    g = gen(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64),
            torch.randn(shape, generator=g, dtype=torch.float64))


def view(sigma, x):
    return sigma.view(-1, *([1] * (x.ndim - 1)))


# --- families -----------------------------------------------------------------------------------

def test_flow_noisy_is_x0_at_sigma_0_and_noise_at_sigma_1():
    x0, noise = latents()
    flow = Flow()
    assert torch.equal(flow.noisy(x0, noise, torch.zeros(4)), x0)
    assert torch.equal(flow.noisy(x0, noise, torch.ones(4)), noise)


@pytest.mark.parametrize("shape", [(4, 4, 8, 8), (4, 16, 3, 8, 8)])
def test_flow_target_denoises_like_comfyui_const(shape):
    # ComfyUI CONST.calculate_denoised: x0 = x_t - σ·model_output.
    x0, noise = latents(shape)
    sigma = torch.rand(4, generator=gen(1), dtype=torch.float64)
    x_t = Flow().noisy(x0, noise, sigma)
    assert torch.allclose(x_t - view(sigma, x_t) * Flow().target(x0, noise, sigma), x0, atol=1e-12)


@pytest.mark.parametrize("shape", [(4, 4, 8, 8), (4, 16, 3, 8, 8)])
def test_eps_target_denoises_like_comfyui_eps(shape):
    # ComfyUI EPS: model input x0 + σ·ε, calculate_denoised x0 = x_t - σ·model_output.
    x0, noise = latents(shape)
    sigma = torch.rand(4, generator=gen(1), dtype=torch.float64) * 14 + 0.03
    x_t = Eps().noisy(x0, noise, sigma)
    assert torch.allclose(x_t, x0 + view(sigma, x0) * noise)
    assert torch.allclose(x_t - view(sigma, x_t) * Eps().target(x0, noise, sigma), x0, atol=1e-12)


@pytest.mark.parametrize("shape", [(4, 4, 8, 8), (4, 16, 3, 8, 8)])
def test_vpred_target_denoises_like_comfyui_v_prediction(shape):
    # ComfyUI V_PREDICTION.calculate_denoised with sigma_data = 1.
    x0, noise = latents(shape)
    sigma = torch.rand(4, generator=gen(1), dtype=torch.float64) * 14 + 0.03
    x_t, v = VPred().noisy(x0, noise, sigma), VPred().target(x0, noise, sigma)
    s = view(sigma, x_t)
    denoised = x_t / (s**2 + 1) - v * s / (s**2 + 1).sqrt()
    assert torch.allclose(denoised, x0, atol=1e-12)
    assert not torch.allclose(v, noise)  # v is not ε


def test_family_registry_names_the_three_prediction_spaces():
    assert {name: type(f) for name, f in FAMILIES.items()} == {"flow": Flow, "eps": Eps, "v": VPred}


# --- SNR weights --------------------------------------------------------------------------------

SIGMAS = torch.tensor([0.1, 0.5, 1.0, 2.0, 0.01])  # SNR = 100, 4, 1, 0.25, 10000


def test_no_snr_option_weights_every_sample_1():
    for family in (Flow(), Eps(), VPred()):
        assert torch.equal(family.weight(SIGMAS, SnrWeighting()), torch.ones(5))


def test_min_snr_eps_weights_by_hand():
    # min(SNR, 5) / SNR
    expected = torch.tensor([5 / 100, 4 / 4, 1 / 1, 0.25 / 0.25, 5 / 10000])
    assert torch.allclose(Eps().weight(SIGMAS, SnrWeighting(min_snr_gamma=5)), expected, rtol=1e-5)


def test_min_snr_v_weights_by_hand():
    # min(SNR, 5) / (SNR + 1)
    expected = torch.tensor([5 / 101, 4 / 5, 1 / 2, 0.25 / 1.25, 5 / 10001])
    assert torch.allclose(VPred().weight(SIGMAS, SnrWeighting(min_snr_gamma=5)), expected, rtol=1e-5)


def test_debiased_weights_by_hand_with_snr_capped_at_1000():
    # eps 1/sqrt(SNR), v 1/(SNR+1); σ = 0.01 has SNR 10000, capped to 1000.
    eps = torch.tensor([1 / 10, 1 / 2, 1.0, 2.0, 1 / math.sqrt(1000)])
    v = torch.tensor([1 / 101, 1 / 5, 1 / 2, 1 / 1.25, 1 / 1001])
    assert torch.allclose(Eps().weight(SIGMAS, SnrWeighting(debiased=True)), eps, rtol=1e-5)
    assert torch.allclose(VPred().weight(SIGMAS, SnrWeighting(debiased=True)), v, rtol=1e-5)


@pytest.mark.parametrize("family", [Eps(), VPred()])
def test_min_snr_and_debiased_multiply(family):
    both = family.weight(SIGMAS, SnrWeighting(min_snr_gamma=5, debiased=True))
    min_snr = family.weight(SIGMAS, SnrWeighting(min_snr_gamma=5))
    debiased = family.weight(SIGMAS, SnrWeighting(debiased=True))
    assert torch.allclose(both, min_snr * debiased, rtol=1e-6)
    assert not torch.allclose(both, min_snr)


@pytest.mark.parametrize("snr, words", [(SnrWeighting(min_snr_gamma=5), "min-SNR gamma"),
                                        (SnrWeighting(debiased=True), "debiased")])
def test_flow_rejects_snr_options(snr, words):
    with pytest.raises(ValueError, match=f"{words}.*flow-matching models such as Flux"):
        Flow().weight(SIGMAS, snr)
    with pytest.raises(ValueError, match=words):
        Flow().check(snr)


def test_noise_offset_is_rejected_for_flow_only():
    with pytest.raises(ValueError, match="noise offset.*Flux"):
        Flow().check(SnrWeighting(), noise_offset=0.05)
    Flow().check(SnrWeighting(), noise_offset=0.0)
    Eps().check(SnrWeighting(min_snr_gamma=5, debiased=True), noise_offset=0.05)
    VPred().check(SnrWeighting(min_snr_gamma=5, debiased=True), noise_offset=0.05)


def test_min_snr_gamma_must_be_positive():
    with pytest.raises(ValueError, match="gamma"):
        SnrWeighting(min_snr_gamma=0)


# --- noise offset -------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (3, 16, 2, 8, 8)])
def test_noise_offset_adds_one_constant_per_sample_and_channel(shape):
    noise = torch.randn(shape, generator=gen(0))
    shifted = noise_offset(noise, 0.1, gen(1))
    drift = shifted - noise
    per_channel = drift.flatten(2)
    assert torch.allclose(per_channel, per_channel[..., :1].expand_as(per_channel), atol=1e-6)
    assert per_channel[..., 0].abs().min() > 0
    assert torch.equal(shifted, noise_offset(noise, 0.1, gen(1)))
    expected = 0.1 * torch.randn(shape[:2], generator=gen(1))
    assert torch.allclose(per_channel[..., 0], expected, atol=1e-6)


def test_zero_noise_offset_leaves_noise_alone():
    noise = torch.randn(2, 4, 8, 8, generator=gen(0))
    assert noise_offset(noise, 0.0, gen(1)) is noise


# --- discrete timesteps -------------------------------------------------------------------------

def test_discrete_timesteps_are_in_range_and_reproducible():
    t = sample_discrete_timesteps(10_000, gen(3))
    assert t.dtype == torch.long and t.shape == (10_000,)
    assert t.min() >= 0 and t.max() <= 999 and t.unique().numel() > 900
    assert torch.equal(t, sample_discrete_timesteps(10_000, gen(3)))
    assert not torch.equal(t, sample_discrete_timesteps(10_000, gen(4)))
    narrow = sample_discrete_timesteps(1000, gen(3), min_t=200, max_t=300)
    assert narrow.min() >= 200 and narrow.max() < 300


def test_discrete_timesteps_reject_an_empty_range():
    with pytest.raises(ValueError, match="min_t"):
        sample_discrete_timesteps(4, gen(), min_t=500, max_t=500)
    with pytest.raises(ValueError, match="1000"):
        sample_discrete_timesteps(4, gen(), max_t=1001)


def test_sigmas_for_reads_the_models_table():
    table = torch.linspace(0.03, 14.6, 1000)
    t = torch.tensor([0, 999, 500])
    assert torch.equal(sigmas_for(t, table), torch.stack([table[0], table[999], table[500]]))
    with pytest.raises(ValueError, match="1-D"):
        sigmas_for(t, table.view(10, 100))


# --- flow timesteps -----------------------------------------------------------------------------

@pytest.mark.parametrize("sampling", list(FLOW_SAMPLERS))
def test_flow_sigmas_shape_range_and_reproducibility(sampling):
    cfg = FlowTimesteps(sampling=sampling, shift=3.0)
    sigma = sample_flow_sigmas(cfg, 10_000, (128, 128), gen(5))
    assert sigma.shape == (10_000,) and sigma.dtype == torch.float32
    assert sigma.min() > 0 and sigma.max() < 1
    assert torch.equal(sigma, sample_flow_sigmas(cfg, 10_000, (128, 128), gen(5)))
    assert not torch.equal(sigma, sample_flow_sigmas(cfg, 10_000, (128, 128), gen(6)))


def test_sigmoid_is_a_logit_normal_centred_on_one_half():
    sigma = sample_flow_sigmas(FlowTimesteps("sigmoid", sigmoid_scale=2.0), 10_000, (64, 64), gen(0))
    expected = torch.sigmoid(2.0 * torch.randn(10_000, generator=gen(0)))
    assert torch.equal(sigma, expected)
    assert abs(sigma.mean().item() - 0.5) < 0.01


def test_uniform_has_mean_one_half_and_no_middle_bulge():
    sigma = sample_flow_sigmas(FlowTimesteps("uniform"), 10_000, (64, 64), gen(0))
    assert abs(sigma.mean().item() - 0.5) < 0.01
    assert abs((sigma < 0.1).float().mean().item() - 0.1) < 0.01


def test_shift_moves_sigmas_towards_noise():
    sigmoid = sample_flow_sigmas(FlowTimesteps("sigmoid"), 10_000, (64, 64), gen(0))
    shifted = sample_flow_sigmas(FlowTimesteps("shift", shift=3.1582), 10_000, (64, 64), gen(0))
    assert shifted.mean() > sigmoid.mean() + 0.1
    # Same draws, shifted pointwise: t·s/(1+(s-1)·t).
    assert torch.allclose(shifted, sigmoid * 3.1582 / (1 + 2.1582 * sigmoid))


def test_flux_shift_depends_on_resolution():
    cfg = FlowTimesteps("flux_shift")
    small = sample_flow_sigmas(cfg, 10_000, (32, 32), gen(0))  # 256 tokens: mu = 0.5
    large = sample_flow_sigmas(cfg, 10_000, (128, 128), gen(0))  # 4096 tokens: mu = 1.15
    assert large.mean() > small.mean() + 0.05
    t = sample_flow_sigmas(FlowTimesteps("sigmoid"), 10_000, (32, 32), gen(0))
    for sigma, mu in ((small, 0.5), (large, 1.15)):  # kohya's time_shift(mu, 1, t)
        assert torch.allclose(sigma, math.exp(mu) / (math.exp(mu) + (1 / t - 1)), atol=1e-6)


def test_unknown_flow_sampling_names_the_valid_ones():
    with pytest.raises(ValueError, match="auto, uniform, sigmoid, shift, flux_shift"):
        FlowTimesteps(sampling="logit_normal")


@pytest.mark.parametrize("asked, model_shift, family_default, expected", [
    (FlowTimesteps(), 3.0, "shift", FlowTimesteps("shift", 1.0, 3.0)),  # Z-Image, SD3.5: the model's 3.0
    (FlowTimesteps(), 1.15, "shift", FlowTimesteps("shift", 1.0, 1.15)),  # Qwen-Image
    (FlowTimesteps(), 1.15, "sigmoid", FlowTimesteps("sigmoid", 1.0, 1.15)),  # Flux.1: kohya's sigmoid, no shift
    (FlowTimesteps("shift"), 2.02, "sigmoid", FlowTimesteps("shift", 1.0, 2.02)),  # shift asked, model's value
    (FlowTimesteps("shift", 1.0, 5.0), 3.0, "shift", FlowTimesteps("shift", 1.0, 5.0)),  # an explicit shift wins
    (FlowTimesteps("uniform"), 3.0, "shift", FlowTimesteps("uniform", 1.0, 3.0)),
])
def test_auto_timesteps_resolve_to_the_family_default_with_the_models_shift(asked, model_shift, family_default,
                                                                              expected):
    resolved = asked.resolved(model_shift, family_default)
    assert resolved == expected
    sigma = sample_flow_sigmas(resolved, 1000, (32, 32), gen(0))
    if resolved.sampling == "shift":  # exactly one shift: the sigmoid draws shifted once by that value
        base = sample_flow_sigmas(FlowTimesteps("sigmoid"), 1000, (32, 32), gen(0))
        s = resolved.shift
        assert torch.allclose(sigma, base * s / (1 + (s - 1) * base))


def test_unresolved_timesteps_are_refused_by_the_sampler():
    for cfg in (FlowTimesteps(), FlowTimesteps("shift")):
        with pytest.raises(ValueError, match="must be resolved"):
            sample_flow_sigmas(cfg, 4, (8, 8), gen(0))
