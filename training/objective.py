"""The training objective: timesteps, noising, the target in the model's own prediction space, and
per-sample timestep weights. One small class per family (Flow, Eps, VPred) with the same methods,
and a registry of flow timestep samplers; the train loop reads like

    sigma = sample_flow_sigmas(cfg, B, latent.shape[-2:], g)      # or sigmas_for(t, table)
    x_t = family.noisy(x0, noise, sigma)
    loss = per_sample_loss(model(x_t, sigma), family.target(x0, noise, sigma), mask)
    loss = (loss * family.weight(sigma, snr)).mean()

Conventions are ComfyUI's (k-diffusion σ for eps/v models, σ = t for flow models) and kohya
sd-scripts' for the options they share (min-SNR, debiased estimation, flow timestep sampling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

DEBIASED_SNR_CAP = 1000.0  # kohya: σ → 0 gives SNR = inf; the cap keeps debiased weights finite


def _per_sample(sigma: Tensor, like: Tensor) -> Tensor:
    """(B,) σ as (B,1,1,...) in `like`'s dtype, so it broadcasts over 4-D and 5-D latents."""
    return sigma.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


@dataclass(frozen=True)
class SnrWeighting:
    """kohya's per-sample timestep weights for eps/v models; both multiply when both are set."""

    min_snr_gamma: float | None = None
    debiased: bool = False

    def __post_init__(self):
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            raise ValueError(f"min-SNR gamma must be > 0 (kohya uses 5), got {self.min_snr_gamma}")


@dataclass(frozen=True)
class Flow:
    """Rectified flow (Flux): x_t = (1-σ)·x0 + σ·ε, the model predicts the velocity ε - x0."""

    def noisy(self, x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        s = _per_sample(sigma, x0)
        return (1 - s) * x0 + s * noise

    def target(self, x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        return noise - x0

    def weight(self, sigma: Tensor, snr: SnrWeighting) -> Tensor:
        self.check(snr)
        return torch.ones_like(sigma, dtype=torch.float32)

    def check(self, snr: SnrWeighting, noise_offset: float = 0.0) -> None:
        """Rejects eps/v options: silently ignoring them would train something other than asked."""
        if snr.min_snr_gamma is not None:
            raise ValueError("min-SNR gamma does not apply to flow-matching models such as Flux; "
                             "leave it unset")
        if snr.debiased:
            raise ValueError("debiased estimation does not apply to flow-matching models such as "
                             "Flux; turn it off")
        if noise_offset > 0:
            raise ValueError("noise offset does not apply to flow-matching models such as Flux; "
                             "set it to 0")


@dataclass(frozen=True)
class _VarianceExploding:
    """Shared by eps and v models: ComfyUI feeds them x0 + σ·ε with σ = sqrt((1-ᾱ)/ᾱ)."""

    def noisy(self, x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        return x0 + _per_sample(sigma, x0) * noise

    def check(self, snr: SnrWeighting, noise_offset: float = 0.0) -> None:
        """Every option applies to eps/v models."""


def _snr(sigma: Tensor) -> Tensor:
    return sigma.float().pow(-2)


@dataclass(frozen=True)
class Eps(_VarianceExploding):
    """ε-prediction (SD1.5, SDXL): the model predicts the noise."""

    def target(self, x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        return noise

    def weight(self, sigma: Tensor, snr: SnrWeighting) -> Tensor:
        s = _snr(sigma)
        w = torch.ones_like(s)
        if snr.min_snr_gamma is not None:
            w = w * s.clamp(max=snr.min_snr_gamma) / s
        if snr.debiased:
            w = w / s.clamp(max=DEBIASED_SNR_CAP).sqrt()
        return w


@dataclass(frozen=True)
class VPred(_VarianceExploding):
    """v-prediction: v = α·ε − σ_ddpm·x0, with α = 1/sqrt(σ²+1) and σ_ddpm = σ/sqrt(σ²+1)."""

    def target(self, x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        s = _per_sample(sigma, x0)
        return (noise - s * x0) / (s * s + 1).sqrt()

    def weight(self, sigma: Tensor, snr: SnrWeighting) -> Tensor:
        # v-space MSE is (SNR+1)× ε-space MSE, hence SNR+1 where eps has SNR.
        s = _snr(sigma)
        w = torch.ones_like(s)
        if snr.min_snr_gamma is not None:
            w = w * s.clamp(max=snr.min_snr_gamma) / (s + 1)
        if snr.debiased:
            w = w / (s.clamp(max=DEBIASED_SNR_CAP) + 1)
        return w


FAMILIES = {"flow": Flow(), "eps": Eps(), "v": VPred()}


# --- eps/v timesteps: integer t, σ from the model's own table ---------------------------------

def sample_discrete_timesteps(batch: int, generator: torch.Generator, num_train_timesteps: int = 1000,
                              min_t: int = 0, max_t: int = 1000) -> Tensor:
    """Uniform integer timesteps in [min_t, max_t), on the generator's device."""
    if not 0 <= min_t < max_t <= num_train_timesteps:
        raise ValueError(f"need 0 <= min_t < max_t <= {num_train_timesteps}, got min_t={min_t}, "
                         f"max_t={max_t}")
    return torch.randint(min_t, max_t, (batch,), generator=generator, device=generator.device)


def sigmas_for(timesteps: Tensor, sigma_table: Tensor) -> Tensor:
    """σ of each timestep, read from the model's table (ComfyUI's model_sampling.sigmas)."""
    if sigma_table.ndim != 1:
        raise ValueError(f"sigma_table must be 1-D (one σ per training timestep), got shape "
                         f"{tuple(sigma_table.shape)}")
    return sigma_table[timesteps.to(sigma_table.device)]


def noise_offset(noise: Tensor, offset: float, generator: torch.Generator) -> Tensor:
    """Adds a per-channel constant, offset·N(0,1), so eps/v models learn to shift mean brightness."""
    if offset == 0:
        return noise
    shape = noise.shape[:2] + (1,) * (noise.ndim - 2)
    drift = torch.randn(shape, generator=generator, device=generator.device, dtype=noise.dtype)
    return noise + offset * drift.to(noise.device)


# --- flow timesteps: σ = t in (0, 1), sampled directly (kohya flux_train_utils) ---------------

AUTO = "auto"  # sampling chosen per family (FlowTimesteps.resolved)


@dataclass(frozen=True)
class FlowTimesteps:
    """How flow timesteps are drawn. Exactly one shift is ever applied: this one (the σ drawn is
    passed to the model as it is). `auto` sampling and a shift of 0 stand for the family's default,
    which `resolved` fills in before training."""
    sampling: str = AUTO
    sigmoid_scale: float = 1.0  # larger spreads t towards 0 and 1
    shift: float = 0.0  # "shift" only; 0: the shift ComfyUI samples the model with

    def __post_init__(self):
        if self.sampling not in FLOW_SAMPLERS and self.sampling != AUTO:
            raise ValueError(f"unknown flow timestep sampling {self.sampling!r}; valid: "
                             f"{', '.join([AUTO, *FLOW_SAMPLERS])}")
        if not (self.sigmoid_scale > 0 and self.shift >= 0):
            raise ValueError(f"sigmoid_scale must be > 0 and shift >= 0 (0: the model's own), got "
                             f"{self.sigmoid_scale}, {self.shift}")

    def resolved(self, model_shift: float, family_default: str) -> "FlowTimesteps":
        """The concrete settings for a model whose sampling shift is `model_shift`: `auto` is the
        family's default sampling (`sigmoid`, kohya's Flux.1 default, or `shift`), and a shift of 0
        is the model's own (an upstream ModelSampling node's value included)."""
        sampling = self.sampling if self.sampling != AUTO else family_default
        return FlowTimesteps(sampling, self.sigmoid_scale, self.shift or model_shift)

    def describe(self) -> str:
        """What the run uses, for its log and progress text."""
        if self.sampling == "shift":
            return f"timesteps: sigmoid (scale {self.sigmoid_scale:g}) shifted by {self.shift:g}"
        if self.sampling == "flux_shift":
            return f"timesteps: sigmoid (scale {self.sigmoid_scale:g}) with Flux's resolution-dependent shift"
        return f"timesteps: {self.sampling}" + (f" (scale {self.sigmoid_scale:g}), no shift"
                                                 if self.sampling == "sigmoid" else ", no shift")


def _time_shift(t: Tensor, shift: float) -> Tensor:
    """Moves t towards 1 (more noise) for shift > 1; equals kohya's time_shift(log(shift), 1, t)."""
    return t * shift / (1 + (shift - 1) * t)


def _flux_shift_mu(image_seq_len: int) -> float:
    """Flux's resolution-dependent log-shift: linear through (256, 0.5) and (4096, 1.15)."""
    slope = (1.15 - 0.5) / (4096 - 256)
    return 0.5 + slope * (image_seq_len - 256)


def _uniform(cfg: FlowTimesteps, batch: int, seq_len: int, g: torch.Generator) -> Tensor:
    return torch.rand(batch, generator=g, device=g.device)


def _sigmoid(cfg: FlowTimesteps, batch: int, seq_len: int, g: torch.Generator) -> Tensor:
    # logit-normal: concentrates on middle timesteps, where the velocity is hardest to predict.
    return torch.sigmoid(cfg.sigmoid_scale * torch.randn(batch, generator=g, device=g.device))


def _shift(cfg: FlowTimesteps, batch: int, seq_len: int, g: torch.Generator) -> Tensor:
    return _time_shift(_sigmoid(cfg, batch, seq_len, g), cfg.shift)


def _flux_shift(cfg: FlowTimesteps, batch: int, seq_len: int, g: torch.Generator) -> Tensor:
    # Larger images keep more structure at a given σ, so they need more noise to be learned from.
    return _time_shift(_sigmoid(cfg, batch, seq_len, g), math.exp(_flux_shift_mu(seq_len)))


FlowSampler = Callable[[FlowTimesteps, int, int, torch.Generator], Tensor]
FLOW_SAMPLERS: dict[str, FlowSampler] = {
    "uniform": _uniform,
    "sigmoid": _sigmoid,
    "shift": _shift,
    "flux_shift": _flux_shift,
}


def sample_flow_sigmas(cfg: FlowTimesteps, batch: int, latent_hw: tuple[int, int],
                       generator: torch.Generator) -> Tensor:
    """(B,) σ for a flow model, float32 on the generator's device. Pass σ itself as the timestep:
    ComfyUI's sigma()/percent_to_sigma would add the model's own shift on top (a double shift)."""
    if cfg.sampling not in FLOW_SAMPLERS or (cfg.sampling == "shift" and not cfg.shift):
        raise ValueError(f"flow timesteps {cfg} must be resolved for the model first (FlowTimesteps.resolved)")
    h, w = latent_hw
    image_seq_len = (h // 2) * (w // 2)  # Flux packs 2×2 latent patches into one token
    return FLOW_SAMPLERS[cfg.sampling](cfg, batch, image_seq_len, generator)
