"""The mask is a loss weight on the latent grid: masked-out cells give no gradient, reductions
match their formulas, and pooling keeps thin parts."""

import pytest
import torch
import torch.nn.functional as F

from comfyui_lora_lab.training.masked_loss import per_sample_loss, pool_to_latent


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def pred_target(shape=(3, 4, 8, 8), seed=0):
    g = gen(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def half_mask(batch=3, size=64):
    """Pixel mask learning the left half (aligned to 8×8 cells) of each image."""
    mask = torch.zeros(batch, 1, size, size)
    mask[..., : size // 2] = 1
    return mask


def test_masked_out_cells_get_exactly_zero_gradient_and_ignore_the_target():
    pred, target = pred_target()
    pred.requires_grad_(True)
    weight = pool_to_latent(half_mask(), (8, 8))
    for reduction in ("normalized", "kohya"):
        for loss in ("mse", "huber"):
            pred.grad = None
            value = per_sample_loss(pred, target, weight, reduction=reduction, loss=loss).sum()
            value.backward()
            assert torch.all(pred.grad[..., 4:] == 0)
            assert torch.all(pred.grad[..., :4] != 0)

            perturbed = target.clone()
            perturbed[..., 4:] += 100.0
            again = per_sample_loss(pred, perturbed, weight, reduction=reduction, loss=loss).sum()
            assert torch.equal(again, value)


def test_all_ones_mask_equals_no_mask():
    pred, target = pred_target()
    ones = pool_to_latent(torch.ones(3, 64, 64), (8, 8))
    plain = per_sample_loss(pred, target)
    assert torch.allclose(per_sample_loss(pred, target, ones), plain, rtol=1e-6)
    assert torch.equal(per_sample_loss(pred, target, ones, reduction="kohya"), plain)


def test_normalized_reduction_is_weighted_sum_over_weight_sum():
    pred, target = pred_target()
    weight = torch.rand(3, 1, 8, 8, generator=gen(7))
    error = (pred - target) ** 2
    w = weight.expand_as(error)
    expected = torch.stack([(w[i] * error[i]).sum() / w[i].sum() for i in range(3)])
    assert torch.allclose(per_sample_loss(pred, target, weight), expected, rtol=1e-5)


def test_kohya_reduction_is_mean_of_weighted_error():
    pred, target = pred_target()
    weight = torch.rand(3, 8, 8, generator=gen(7))  # (B,h,w) is accepted too
    error = (pred - target) ** 2
    expected = (weight.unsqueeze(1) * error).mean(dim=(1, 2, 3))
    assert torch.allclose(per_sample_loss(pred, target, weight, reduction="kohya"), expected, rtol=1e-5)


def test_small_subject_keeps_full_strength_only_when_normalized():
    pred, target = pred_target()
    weight = torch.zeros(3, 1, 8, 8)
    weight[..., 3:5, 3:5] = 1  # 4 of 64 cells
    normalized = per_sample_loss(pred, target, weight)
    kohya = per_sample_loss(pred, target, weight, reduction="kohya")
    assert torch.allclose(kohya * 16, normalized, rtol=1e-5)


def test_unmasked_weight_floor():
    pred, target = pred_target()
    weight = pool_to_latent(half_mask(), (8, 8))
    plain = per_sample_loss(pred, target)
    assert torch.equal(per_sample_loss(pred, target, weight, unmasked_weight=1.0),
                       per_sample_loss(pred, target, torch.ones_like(weight)))
    assert torch.allclose(per_sample_loss(pred, target, weight, unmasked_weight=1.0), plain, rtol=1e-6)

    error = (pred - target) ** 2
    floored = torch.where(torch.arange(8) < 4, 1.0, 0.25).expand_as(error)
    expected = (floored * error).sum(dim=(1, 2, 3)) / floored.sum(dim=(1, 2, 3))
    assert torch.allclose(per_sample_loss(pred, target, weight, unmasked_weight=0.25), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="unmasked_weight"):
        per_sample_loss(pred, target, weight, unmasked_weight=1.5)


def test_area_pooling_keeps_a_one_pixel_line_that_nearest_loses():
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 13] = 1  # a vertical line, one pixel wide, inside latent column 1
    pooled = pool_to_latent(mask, (8, 8))
    assert pooled.shape == (1, 1, 8, 8) and pooled.dtype == torch.float32
    assert torch.allclose(pooled[..., 1], torch.full((1, 1, 8), 1 / 8))
    assert torch.all(pooled[..., [0, 2, 3, 4, 5, 6, 7]] == 0)
    assert torch.all(F.interpolate(mask, size=(8, 8), mode="nearest") == 0)


def test_area_pooling_equals_an_8x8_average_pool():
    mask = torch.rand(2, 64, 48, generator=gen(2))
    assert torch.allclose(pool_to_latent(mask, (8, 6)), F.avg_pool2d(mask.unsqueeze(1), 8), atol=1e-6)


def test_all_zero_mask_sample_gives_zero_loss_without_nan():
    pred, target = pred_target()
    pred.requires_grad_(True)
    weight = torch.ones(3, 1, 8, 8)
    weight[1] = 0
    losses = per_sample_loss(pred, target, weight)
    assert losses[1].item() == 0 and losses[0] > 0 and losses[2] > 0
    losses.sum().backward()
    assert torch.isfinite(pred.grad).all() and torch.all(pred.grad[1] == 0)


def test_huber_pulls_less_than_mse_on_large_errors():
    pred = torch.full((2, 4, 8, 8), 10.0)
    target = torch.zeros_like(pred)
    mse = per_sample_loss(pred, target)
    huber = per_sample_loss(pred, target, loss="huber", huber_delta=1.0)
    assert torch.allclose(mse, torch.full((2,), 100.0))
    assert torch.allclose(huber, torch.full((2,), 9.5))  # delta·(|d| − delta/2)
    small = per_sample_loss(pred * 0.01, target, loss="huber")  # below delta: 0.5·d²
    assert torch.allclose(small, 0.5 * per_sample_loss(pred * 0.01, target))


def test_bf16_inputs_give_a_float32_loss():
    pred, target = pred_target()
    loss = per_sample_loss(pred.bfloat16(), target.bfloat16(), torch.ones(3, 1, 8, 8))
    assert loss.dtype == torch.float32
    expected = per_sample_loss(pred.bfloat16().float(), target.bfloat16().float())
    assert torch.allclose(loss, expected, rtol=1e-6)


def test_five_d_latents_take_a_mask_per_frame():
    pred, target = pred_target((2, 16, 3, 8, 8))
    weight = torch.rand(2, 1, 3, 8, 8, generator=gen(1))
    error = (pred - target) ** 2
    expected = (weight * error).sum(dim=(1, 2, 3, 4)) / weight.expand_as(error).sum(dim=(1, 2, 3, 4))
    assert torch.allclose(per_sample_loss(pred, target, weight), expected, rtol=1e-5)


def test_batch_size_mismatch_names_both_shapes():
    pred, target = pred_target()
    with pytest.raises(ValueError, match=r"\(2, 1, 8, 8\).*\(3, 4, 8, 8\)"):
        per_sample_loss(pred, target, torch.ones(2, 1, 8, 8))


def test_mask_not_on_the_latent_grid_is_rejected():
    pred, target = pred_target()
    with pytest.raises(ValueError, match=r"\(3, 1, 64, 64\).*pool_to_latent"):
        per_sample_loss(pred, target, torch.ones(3, 1, 64, 64))
    with pytest.raises(ValueError, match="mask must be"):
        pool_to_latent(torch.ones(3, 3, 64, 64), (8, 8))


@pytest.mark.parametrize("kwargs, valid", [({"reduction": "sum"}, "normalized, kohya"),
                                           ({"loss": "l1"}, "mse, huber")])
def test_unknown_choice_names_the_valid_values(kwargs, valid):
    pred, target = pred_target()
    with pytest.raises(ValueError, match=valid):
        per_sample_loss(pred, target, **kwargs)
