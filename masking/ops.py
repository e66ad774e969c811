"""Post-processing for loss-weight masks: threshold, fill holes, grow/shrink, invert, feather.

A mask here is an (H,W) float tensor in [0,1], 1 = learn this pixel. The shape operations work on
the region where the weight is >= 0.5: growing or shrinking draws a new edge, so the old soft edge
has no meaning afterwards; `feather` is the op that makes an edge soft again.

Distances come from scipy's exact Euclidean distance transform, so grow/shrink use a true disk as
structuring element (grow then shrink by the same radius gives back a convex shape) and cost the
same at any radius. Distances are measured to the region's own edge, never to the frame: a subject
cut off by the frame is not shrunk or feathered along the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ..training.dataset import mask_from_comfy

NEARLY_EMPTY = 0.01  # coverage below this: nothing to learn
NEARLY_FULL = 0.95   # coverage above this: probably inverted, or the background was kept


def _as_weight(mask) -> torch.Tensor:
    mask = torch.as_tensor(mask).detach().to("cpu", torch.float32)
    if mask.ndim != 2:
        raise ValueError(f"a mask is (H,W), got shape {tuple(mask.shape)}")
    return mask


def _region(mask) -> np.ndarray:
    """The pixels a shape operation treats as inside: weight >= 0.5."""
    return _as_weight(mask).numpy() >= 0.5


def _has_edge(inside: np.ndarray) -> bool:
    # The distance transform needs both inside and outside pixels: without an edge there is
    # nothing to grow, shrink or feather.
    return bool(inside.any()) and not bool(inside.all())


def threshold(mask, value: float) -> torch.Tensor:
    """1 where the weight is >= value, else 0."""
    return (_as_weight(mask) >= value).float()


def grow(mask, pixels: int) -> torch.Tensor:
    """The >= 0.5 region grown by `pixels` (negative: shrunk) with a disk, as a 0/1 mask."""
    if pixels == 0:
        return _as_weight(mask)
    inside = _region(mask)
    if _has_edge(inside):
        if pixels > 0:  # outside pixels within reach of the region join it
            inside = ndimage.distance_transform_edt(~inside) <= pixels
        else:  # inside pixels within reach of the outside leave it
            inside = ndimage.distance_transform_edt(inside) > -pixels
    return torch.from_numpy(inside.astype(np.float32))


def feather(mask, pixels: int) -> torch.Tensor:
    """A linear ramp `pixels` wide centred on the edge of the >= 0.5 region: 0.5 on the edge,
    exactly 1 deeper than pixels/2 inside, exactly 0 further than pixels/2 outside.

    A distance ramp rather than a Gaussian blur: its width is exact, the interior stays exactly 1,
    and the mask's area is kept (the ramp is symmetric about the edge).
    """
    if pixels <= 0:
        return _as_weight(mask)
    inside = _region(mask)
    if not _has_edge(inside):
        return torch.from_numpy(inside.astype(np.float32))
    # Signed distance to the edge, which lies half a pixel beyond the outermost pixel centres.
    signed = np.where(inside, ndimage.distance_transform_edt(inside) - 0.5,
                      0.5 - ndimage.distance_transform_edt(~inside))
    return torch.from_numpy(np.clip(0.5 + signed / pixels, 0.0, 1.0).astype(np.float32))


def fill_holes(mask) -> torch.Tensor:
    """Sets to 1 the pixels enclosed by the >= 0.5 region (holes not connected to the frame's
    border); every other pixel keeps its weight."""
    weight = _as_weight(mask).clone()
    inside = _region(weight)
    holes = ndimage.binary_fill_holes(inside) & ~inside
    weight[torch.from_numpy(holes)] = 1.0
    return weight


def invert(mask) -> torch.Tensor:
    return 1.0 - _as_weight(mask)


@dataclass(frozen=True)
class MaskOps:
    """Which post-processing to apply; `apply` runs them in this order:

    threshold -> fill_holes -> grow (shrink when negative) -> invert -> feather

    Threshold first, so the later shape ops see a clean region. Holes are filled on the subject's
    own shape, before a shrink could widen them. Grow acts on the mask's region as it came in (the
    subject, for Remove Background), then invert flips what is learned. Feather comes last: it is
    the only op that leaves soft values, and every op before it would re-harden them.
    """
    threshold: float | None = None
    grow: int = 0
    feather: int = 0
    fill_holes: bool = False
    invert: bool = False

    def __post_init__(self):
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], not {self.threshold}")
        if self.feather < 0:
            raise ValueError(f"feather must be >= 0 pixels, not {self.feather}")


def apply(mask, ops: MaskOps) -> torch.Tensor:
    """`mask` post-processed by `ops`, in the order documented on MaskOps."""
    mask = _as_weight(mask)
    if ops.threshold is not None:
        mask = threshold(mask, ops.threshold)
    if ops.fill_holes:
        mask = fill_holes(mask)
    mask = grow(mask, ops.grow)
    if ops.invert:
        mask = invert(mask)
    return feather(mask, ops.feather)


def coverage(mask) -> float:
    """The fraction of the frame the mask selects (weight >= 0.5).

    Counted by area, not by mean weight: a faint haze over the whole frame (what background
    removal returns for an image without a subject) selects nothing, yet has a mean of several
    percent.
    """
    return float(_region(mask).mean())


def coverage_warning(mask, name: str) -> str | None:
    """A warning when the mask selects almost nothing or almost everything, else None."""
    share = coverage(mask)
    if share < NEARLY_EMPTY:
        return f"{name}: the mask is nearly empty ({share:.1%} of the frame): nothing to learn"
    if share > NEARLY_FULL:
        return (f"{name}: the mask is nearly full ({share:.1%} of the frame): the mask may be "
                "inverted or the background was kept")
    return None


def _fill_original(image: torch.Tensor, weight: torch.Tensor, colour) -> torch.Tensor:
    return image


def _fill_colour(image: torch.Tensor, weight: torch.Tensor, colour) -> torch.Tensor:
    fill = torch.tensor(colour, dtype=image.dtype)
    w = weight[..., None]
    return image * w + fill * (1.0 - w)


# What the training pixels under the masked-out area contain. "original" keeps the context the
# model sees there (masked pixels still reach the prediction through attention and convolution).
BACKGROUND_FILLS = {"original": _fill_original, "colour": _fill_colour}


def fill_background(image, weight, mode: str = "original",
                    colour: tuple[float, float, float] = (0.5, 0.5, 0.5)) -> torch.Tensor:
    """The (H,W,3) image in [0,1] with its masked-out area filled: "original" leaves it unchanged,
    "colour" blends each pixel towards `colour` (RGB in [0,1]) by 1 - weight."""
    if mode not in BACKGROUND_FILLS:
        raise ValueError(f"background fill must be one of {sorted(BACKGROUND_FILLS)}, not {mode!r}")
    image = torch.as_tensor(image).detach().to("cpu", torch.float32)
    weight = _as_weight(weight)
    if image.ndim != 3 or image.shape[-1] != 3 or image.shape[:2] != weight.shape:
        raise ValueError(f"an (H,W,3) image and its (H,W) mask are needed, got "
                         f"{tuple(image.shape)} and {tuple(weight.shape)}")
    return BACKGROUND_FILLS[mode](image, weight, colour)


def weight_to_comfy_mask(weight, meaning: str) -> torch.Tensor:
    """A loss weight as a ComfyUI MASK of the given meaning, the inverse of
    training.dataset.mask_from_comfy. Both of its mappings (identity, 1 - x) are their own
    inverse, so the same conversion serves both directions."""
    return mask_from_comfy(_as_weight(weight), meaning)
