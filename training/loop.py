"""The training loop, in plain torch. The model is reached through a small `Predictor` (ComfyUI's
MODEL behind the host adapter, or a tiny torch model in tests); everything random in a
micro-batch comes from generators seeded by (seed, micro-batch index), so a resumed run repeats
the interrupted one exactly."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor

from .data_order import MicroBatchOrder, OrderItem
from .masked_loss import per_sample_loss
from .objective import (Flow, FlowTimesteps, SnrWeighting, noise_offset, sample_discrete_timesteps,
                        sample_flow_sigmas, sigmas_for)


@dataclass(frozen=True)
class Sample:
    latent: Tensor  # (C,h,w) or (C,frames,h,w), already in the model's latent space
    weight: Tensor | None = None  # (1,*latent spatial shape) loss weight on the latent grid, 1 = learn
    cond: object = None  # conditioning, opaque here: the predictor batches it
    repeats: int = 1
    flipped: tuple[Tensor, Tensor | None] | None = None  # (latent, weight) of the mirrored image
    cond_variants: tuple = ()  # pre-drawn caption variants; one is picked per step (else `cond`)

    def view(self, g: torch.Generator) -> tuple[Tensor, Tensor | None, object]:
        """The latent, weight and conditioning this step trains on (flip and caption variant
        drawn from the micro-batch generator, so a resumed run draws the same)."""
        latent, weight = self.latent, self.weight
        if self.flipped is not None and torch.rand((), generator=g) < 0.5:
            latent, weight = self.flipped
        cond = self.cond
        if self.cond_variants:
            cond = self.cond_variants[int(torch.randint(len(self.cond_variants), (), generator=g))]
        return latent, weight, cond


class Predictor(Protocol):
    family: object  # objective.Flow / Eps / VPred
    sigma_table: Tensor | None  # eps/v: σ of each training timestep
    device: torch.device

    def predict(self, noisy: Tensor, sigma: Tensor, conds: list) -> Tensor: ...


@dataclass(frozen=True)
class LoopConfig:
    steps: int
    batch_size: int = 1
    grad_accum: int = 1
    seed: int = 0
    max_grad_norm: float = 0.0  # 0: no clipping
    scale_weight_norms: float = 0.0  # 0: off
    loss: str = "mse"
    reduction: str = "normalized"
    huber_delta: float = 1.0
    unmasked_weight: float = 0.0
    snr: SnrWeighting = field(default_factory=SnrWeighting)
    flow_timesteps: FlowTimesteps = field(default_factory=lambda: FlowTimesteps("sigmoid"))  # resolved: no "auto"
    noise_offset: float = 0.0

    def validate(self, family) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, not {self.steps}")
        if self.grad_accum < 1:
            raise ValueError(f"gradient accumulation must be at least 1, not {self.grad_accum}")
        family.check(self.snr, self.noise_offset)


@dataclass(frozen=True)
class StepRecord:
    step: int
    epoch: int
    loss: float
    lr: float
    sigma: float  # mean σ (timestep) of the step's samples


@dataclass
class Outcome:
    step: int  # optimizer steps completed
    interrupted: bool = False


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, loss: float):
        super().__init__(f"the loss became {loss} at step {step}; training stopped there and the "
                         f"adapter keeps the weights of step {step - 1}")
        self.step = step


def _micro_generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + index + 7)


class Trainer:
    def __init__(self, predictor: Predictor, params: Sequence[torch.nn.Parameter], samples: Sequence[Sample],
                 config: LoopConfig, optimizer: torch.optim.Optimizer, scheduler, network=None):
        config.validate(predictor.family)
        self.predictor, self.params, self.samples, self.config = predictor, list(params), list(samples), config
        self.optimizer, self.scheduler, self.network = optimizer, scheduler, network
        self.order = MicroBatchOrder([OrderItem(tuple(s.latent.shape), s.repeats) for s in self.samples],
                                     config.batch_size, config.seed)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.order.batches_per_epoch / self.config.grad_accum)

    def micro_loss(self, index: int) -> tuple[Tensor, Tensor, int]:
        """Loss of the index-th micro-batch of the run, its σ, and its epoch."""
        cfg, family = self.config, self.predictor.family
        epoch, members = self.order.micro_batch(index)
        batch = [self.samples[i] for i in members]
        g = _micro_generator(cfg.seed, index)
        device = self.predictor.device
        views = [s.view(g) for s in batch]
        x0 = torch.stack([latent for latent, _, _ in views]).float()
        noise = torch.randn(x0.shape, generator=g)
        if isinstance(family, Flow):
            sigma = sample_flow_sigmas(cfg.flow_timesteps, len(batch), tuple(x0.shape[-2:]), g)
        else:
            sigma = sigmas_for(sample_discrete_timesteps(len(batch), g), self.predictor.sigma_table.cpu())
            noise = noise_offset(noise, cfg.noise_offset, g)
        x0, noise, sigma = x0.to(device), noise.to(device), sigma.float().to(device)
        weight = None
        if any(w is not None for _, w, _ in views):
            weight = torch.stack([w if w is not None else torch.ones(1, *x0.shape[2:]) for _, w, _ in views]).to(device)
        with torch.random.fork_rng(devices=[]):  # adapter dropout draws from the global RNG
            torch.manual_seed(cfg.seed * 1_000_003 + index)
            pred = self.predictor.predict(family.noisy(x0, noise, sigma), sigma, [c for _, _, c in views])
        per_sample = per_sample_loss(pred, family.target(x0, noise, sigma), weight, cfg.reduction, cfg.loss,
                                     cfg.huber_delta, cfg.unmasked_weight)
        return (per_sample * family.weight(sigma, cfg.snr).to(per_sample)).mean(), sigma, epoch

    def run(self, start_step: int = 0, on_step: Callable[[StepRecord], None] = lambda r: None,
            should_stop: Callable[[], bool] = lambda: False,
            interrupts: tuple[type[BaseException], ...] = ()) -> Outcome:
        """Optimizer steps from `start_step` to the end. A stop asked through `should_stop`, or
        an exception of `interrupts` raised anywhere inside a step (the host's Cancel may fire
        inside the model's forward, the backward or `on_step`), ends the run with the weights of
        the last completed step: a half-done step (accumulation, backward) is dropped."""
        cfg = self.config
        step = start_step
        while step < cfg.steps:
            try:
                record = self._step(step, should_stop)
                if record is None:
                    return Outcome(step, interrupted=True)
                step += 1
                on_step(record)
            except interrupts:
                self.optimizer.zero_grad(set_to_none=True)
                return Outcome(step, interrupted=True)
        return Outcome(step)

    def _step(self, step: int, should_stop: Callable[[], bool]) -> StepRecord | None:
        """One optimizer step (all its micro-batches); None when asked to stop before it ends."""
        cfg = self.config
        self.optimizer.zero_grad(set_to_none=True)
        losses, sigmas = [], []
        for k in range(cfg.grad_accum):
            if should_stop():
                self.optimizer.zero_grad(set_to_none=True)  # a partial accumulation is dropped
                return None
            loss, sigma, epoch = self.micro_loss(step * cfg.grad_accum + k)
            (loss / cfg.grad_accum).backward()
            losses.append(loss.item())
            sigmas.append(sigma.mean().item())
        mean_loss = sum(losses) / len(losses)
        if not math.isfinite(mean_loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLoss(step + 1, mean_loss)
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        if cfg.scale_weight_norms > 0 and self.network is not None:
            self.network.apply_max_norm(cfg.scale_weight_norms)
        return StepRecord(step + 1, epoch, mean_loss, lr, sum(sigmas) / len(sigmas))
