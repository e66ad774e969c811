"""5-D latents (B,C,frames,h,w), as video-style VAEs give them (Wan 2.1, Qwen-Image): masks pool
onto the latent grid with the frame axis, the loss and its mask reduce over every axis, noise
offset stays per channel, and the training loop batches masked and unmasked 5-D samples."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from comfyui_lora_lab.training import objective
from comfyui_lora_lab.training.loop import LoopConfig, Sample, Trainer
from comfyui_lora_lab.training.masked_loss import per_sample_loss, pool_to_latent
from comfyui_lora_lab.training.network import AdapterNetwork, NetworkConfig
from comfyui_lora_lab.training.optimizers import build_optimizer
from comfyui_lora_lab.training.schedulers import build_scheduler


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def left_mask(batch=2, size=64):
    mask = torch.zeros(batch, 1, size, size)
    mask[..., : size // 4] = 1  # the left quarter: not symmetric, so a flip shows
    return mask


def test_pooling_with_a_frame_axis_gives_every_frame_the_image_weights():
    mask = left_mask()
    pooled = pool_to_latent(mask, (3, 8, 8))
    assert pooled.shape == (2, 1, 3, 8, 8)
    flat = pool_to_latent(mask, (8, 8))
    for f in range(3):
        assert torch.equal(pooled[:, :, f], flat)
    assert torch.equal(pool_to_latent(mask[:, 0], (1, 8, 8))[:, :, 0], flat)  # (B,H,W) masks too


def test_pooling_refuses_a_size_that_is_not_a_latent_grid():
    with pytest.raises(ValueError, match=r"\(h, w\) or \(frames, h, w\)"):
        pool_to_latent(left_mask(), (1, 1, 8, 8))


def test_masked_loss_over_5d_latents_matches_the_4d_loss_and_masked_cells_get_no_gradient():
    g = gen()
    pred = torch.randn(2, 16, 1, 8, 8, generator=g).requires_grad_(True)
    target = torch.randn(2, 16, 1, 8, 8, generator=g)
    weight = pool_to_latent(left_mask(), (1, 8, 8))
    for reduction in ("normalized", "kohya"):
        five = per_sample_loss(pred, target, weight, reduction)
        four = per_sample_loss(pred[:, :, 0], target[:, :, 0], weight[:, :, 0], reduction)
        assert five.shape == (2,) and torch.allclose(five, four)
    (grad,) = torch.autograd.grad(per_sample_loss(pred, target, weight).sum(), pred)
    assert grad[..., 2:].abs().max() == 0 and grad[..., :2].abs().min() > 0
    # A weight per sample without its channel axis broadcasts the same way.
    assert torch.allclose(per_sample_loss(pred, target, weight[:, 0]), per_sample_loss(pred, target, weight))


def test_a_mask_of_the_wrong_grid_is_refused_for_5d_latents():
    pred = torch.zeros(2, 16, 1, 8, 8)
    with pytest.raises(ValueError, match="does not fit latent shape"):
        per_sample_loss(pred, pred, pool_to_latent(left_mask(), (1, 4, 4)))


def test_noise_offset_on_5d_noise_is_one_constant_per_sample_and_channel():
    noise = torch.zeros(2, 16, 3, 8, 8)
    shifted = objective.noise_offset(noise, 0.1, gen())
    assert shifted.shape == noise.shape
    assert torch.equal(shifted, shifted[:, :, :1, :1, :1].expand_as(shifted))
    assert shifted.abs().sum() > 0


class FramePredictor:
    """A frozen pointwise model applied frame by frame to (B,C,F,h,w) latents (or to (B,C,h,w))."""

    def __init__(self, family):
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Conv2d(4, 16, 1), nn.SiLU(), nn.Conv2d(16, 4, 1))
        self.model.requires_grad_(False)
        self.family, self.sigma_table, self.device = family, None, torch.device("cpu")
        self.shapes = []

    def predict(self, noisy, sigma, conds):
        self.shapes.append(tuple(noisy.shape))
        if noisy.ndim == 4:
            return self.model(noisy)
        b, c, f, h, w = noisy.shape
        out = self.model(noisy.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w))
        return out.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


def _run(samples, steps=12):
    predictor = FramePredictor(objective.Flow())
    network = AdapterNetwork({"lora_in": predictor.model[0], "lora_out": predictor.model[2]},
                             NetworkConfig(rank=4, alpha=4.0), seed=0)
    network.attach()
    config = LoopConfig(steps=steps, batch_size=2)
    optimizer = build_optimizer("AdamW", [{"params": list(network.parameters()), "lr": 3e-2}], 3e-2)
    trainer = Trainer(predictor, list(network.parameters()), samples, config, optimizer,
                      build_scheduler("constant", optimizer, config.steps, 0), network)
    records = []
    trainer.run(0, records.append)
    return predictor.shapes, [r.loss for r in records], [p.detach().clone() for p in network.parameters()]


def test_one_frame_5d_training_is_the_4d_training_with_masks_defaults_and_flips():
    """Masked and unmasked samples share a batch (the unmasked one gets a weight of ones on the
    5-D grid) and flips are drawn: with one frame, every step equals the 4-D run."""
    g = gen(1)
    lat, other = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
    weight = pool_to_latent(left_mask(1), (1, 8, 8))[0]
    five = [Sample(lat, weight, flipped=(lat.flip(-1), weight.flip(-1))), Sample(other)]
    four = [Sample(lat[:, 0], weight[:, 0], flipped=(lat[:, 0].flip(-1), weight[:, 0].flip(-1))), Sample(other[:, 0])]
    shapes5, losses5, params5 = _run(five)
    shapes4, losses4, params4 = _run(four)
    assert set(shapes5) == {(2, 4, 1, 8, 8)} and set(shapes4) == {(2, 4, 8, 8)}
    assert losses5 == pytest.approx(losses4, rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(params5, params4))
