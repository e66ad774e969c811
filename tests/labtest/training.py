"""Training helpers for the ComfyUI tier: demo models built the way a loader node builds them
(inside inference mode, as the executor runs nodes), small synthetic datasets, and evaluation of
a MODEL's loss at fixed noise and timesteps."""

from __future__ import annotations

import torch


def build_in_executor_mode(host, family: str, weight_dtype: str = "fp32", seed: int = 0):
    """Loader nodes run under torch.inference_mode(): their tensors are inference tensors."""
    with torch.inference_mode():
        return host.build_demo_model(family, weight_dtype, seed)


def pattern_image(size: int = 64, seed: int = 0) -> torch.Tensor:
    """(H,W,3) in [0,1]: a smooth random pattern (learnable, not constant)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, size // 16, size // 16, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")[0].permute(1, 2, 0).contiguous()


def square_mask(size: int = 64, start: int = 16, end: int = 48) -> torch.Tensor:
    mask = torch.zeros(size, size)
    mask[start:end, start:end] = 1.0
    return mask


def eval_loss(host, model, samples, count: int = 8, seed: int = 1234) -> float:
    """Mean loss of `model` (raw prediction, the family's target) on every sample at `count`
    fixed (noise, σ) draws: the same numbers for any model of the family."""
    from comfyui_lora_lab.training.masked_loss import per_sample_loss
    from comfyui_lora_lab.training.objective import Flow, FlowTimesteps, sample_flow_sigmas

    total, n = 0.0, 0
    with torch.inference_mode(False), torch.no_grad(), host.TrainingModel(model, None, False, 1.0) as tm:
        family = tm.family
        for sample in samples:
            g = torch.Generator().manual_seed(seed)
            x0 = sample.latent.unsqueeze(0).repeat(count, *[1] * sample.latent.ndim).float()  # 4-D or 5-D
            noise = torch.randn(x0.shape, generator=g)
            if isinstance(family, Flow):
                sigma = sample_flow_sigmas(FlowTimesteps("uniform"), count, tuple(x0.shape[-2:]), g).clamp(0.05, 0.95)
            else:
                sigma = tm.sigma_table[torch.randint(50, 950, (count,), generator=g)]
            pred = tm.predict(family.noisy(x0, noise, sigma), sigma, [sample.cond] * count)
            total += float(per_sample_loss(pred, family.target(x0, noise, sigma)).mean())
            n += 1
    return total / n


def make_request(demo, dataset, steps=30, lr=2e-3, name="test_lora", **overrides):
    """A Train node's request on `demo` with the config nodes' defaults (fp32 saves)."""
    from comfyui_lora_lab.nodes.train_run import RunRequest
    from comfyui_lora_lab.training.settings import (NetworkSettings, ObjectiveSettings, OptimizerSettings,
                                                    SaveSettings)

    fields = dict(model=demo.model, clip=demo.clip, vae=demo.vae, dataset=dataset, steps=steps, learning_rate=lr,
                  seed=0, output_name=name, network=NetworkSettings(), optimizer=OptimizerSettings(),
                  objective=ObjectiveSettings(), save=SaveSettings(precision="fp32"))
    fields.update(overrides)
    return RunRequest(**fields)


def one_image_dataset(mask=None, caption="a photo of sks", image=None):
    """One image (the pattern unless given) of concept `sks`, with an optional loss mask."""
    from comfyui_lora_lab.training.dataset import Dataset, DatasetSample

    image = pattern_image() if image is None else image
    return Dataset(samples=(DatasetSample(image=image, caption=caption, concept="sks", mask=mask),), trigger="sks")


def train(request):
    """The Train node's run, outside inference mode as the node runs it."""
    from comfyui_lora_lab.nodes import train_run

    with torch.inference_mode(False):
        return train_run.run(request)


def saved_file(path) -> tuple[dict, set[str]]:
    """(metadata, tensor names) of a saved LoRA file."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata(), set(f.keys())
