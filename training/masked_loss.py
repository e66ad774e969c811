"""Per-sample loss with an optional loss-weight mask.

A mask here is a loss WEIGHT: 1 = learn this pixel, 0 = ignore it; (B,1,H,W) or (B,H,W) in pixel
space, values in [0,1]. A zero weight removes a cell from the loss, not from the model's input:
masked-out pixels still reach the prediction through attention and convolution, which is intended
(the model keeps seeing the context it will be sampled in). Latents are (B,C,h,w) or, from
video-style VAEs (Wan), (B,C,frames,h,w): the weight then has the frame axis too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pool_to_latent(mask: Tensor, latent_size: tuple[int, ...]) -> Tensor:
    """(B,1,h,w) float32 weights on the latent grid by area averaging (an 8×8 average pool for
    8× VAEs): a cell keeps the share of its pixels that are learned, so a thin part that nearest
    sampling would skip still counts. `latent_size` is the latent's spatial shape: (h, w), or
    (frames, h, w) for video-style latents (Wan VAE), where every frame gets the image's weights:
    (B,1,frames,h,w)."""
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be (B,H,W) or (B,1,H,W), got shape {tuple(mask.shape)}")
    size = tuple(int(s) for s in latent_size)
    if len(size) not in (2, 3):
        raise ValueError(f"latent size must be (h, w) or (frames, h, w), got {size}")
    pooled = F.interpolate(mask.float(), size=size[-2:], mode="area")
    if len(size) == 3:
        pooled = pooled.unsqueeze(2).expand(-1, -1, size[0], -1, -1).contiguous()
    return pooled


def _squared(pred: Tensor, target: Tensor, delta: float) -> Tensor:
    return (pred - target).square()


def _huber(pred: Tensor, target: Tensor, delta: float) -> Tensor:
    # Quadratic (0.5·d²) below delta, linear above: large errors pull less than under MSE.
    return F.huber_loss(pred, target, reduction="none", delta=delta)


def _normalized(weighted: Tensor, weight: Tensor, dims: tuple[int, ...]) -> Tensor:
    # Σ(w·e)/Σw: a small subject gets a full-strength gradient. Σw = 0 means Σ(w·e) = 0, and
    # dividing by 1 there gives exactly 0 with no NaN in the loss or its gradient.
    total = weight.sum(dims)
    return weighted.sum(dims) / torch.where(total > 0, total, torch.ones_like(total))


def _kohya(weighted: Tensor, weight: Tensor, dims: tuple[int, ...]) -> Tensor:
    # mean(w·e) over the whole latent: a small subject gets a proportionally small gradient.
    return weighted.mean(dims)


ERRORS = {"mse": _squared, "huber": _huber}
REDUCTIONS = {"normalized": _normalized, "kohya": _kohya}


def _check_choice(kind: str, value: str, valid: dict) -> None:
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid: {', '.join(valid)}")


def _latent_weight(weight: Tensor, error: Tensor, unmasked_weight: float) -> Tensor:
    """The mask as (B,1,*spatial), floored at `unmasked_weight`, ready to broadcast over channels."""
    if weight.ndim == error.ndim - 1:
        weight = weight.unsqueeze(1)
    if weight.shape[0] != error.shape[0]:
        raise ValueError(f"mask batch size {weight.shape[0]} differs from the latents' "
                         f"{error.shape[0]}: mask shape {tuple(weight.shape)}, latent shape "
                         f"{tuple(error.shape)}")
    if weight.ndim != error.ndim or weight.shape[1] != 1 or weight.shape[2:] != error.shape[2:]:
        raise ValueError(f"mask shape {tuple(weight.shape)} does not fit latent shape "
                         f"{tuple(error.shape)}: pool it with pool_to_latent first")
    return unmasked_weight + (1 - unmasked_weight) * weight.float()


def per_sample_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None,
                    reduction: str = "normalized", loss: str = "mse", huber_delta: float = 1.0,
                    unmasked_weight: float = 0.0) -> Tensor:
    """(B,) float32 loss per sample. `weight` is a latent-grid mask (see pool_to_latent);
    `unmasked_weight` is the floor the masked-out area keeps (1.0 = the mask has no effect)."""
    _check_choice("loss", loss, ERRORS)
    _check_choice("reduction", reduction, REDUCTIONS)
    if not 0.0 <= unmasked_weight <= 1.0:
        raise ValueError(f"unmasked_weight must be in [0, 1], got {unmasked_weight}")
    error = ERRORS[loss](pred.float(), target.float(), huber_delta)  # float32 even for bf16 inputs
    dims = tuple(range(1, error.ndim))
    if weight is None:
        return error.mean(dims)
    w = _latent_weight(weight, error, unmasked_weight)
    return REDUCTIONS[reduction](w * error, w.expand_as(error), dims)
