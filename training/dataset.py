"""The dataset value that flows between nodes: immutable, cheap to pass, one entry per image.

Masks are loss weights (1 = learn this pixel, 0 = ignore). Images are held as (H,W,3) float
tensors in [0,1], the layout of ComfyUI's IMAGE; masks as (H,W) in [0,1].
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


@dataclass(frozen=True)
class DatasetSample:
    image: torch.Tensor  # (H,W,3) float in [0,1]
    caption: str
    concept: str
    mask: torch.Tensor | None = None  # (H,W) loss weight, 1 = learn
    repeats: int = 1
    flip_allowed: bool = True

    def __post_init__(self):
        if self.image.ndim != 3 or self.image.shape[-1] != 3:
            raise ValueError(f"image of {self.concept!r} must be (H,W,3), got {tuple(self.image.shape)}")
        if self.mask is not None and tuple(self.mask.shape) != tuple(self.image.shape[:2]):
            raise ValueError(f"mask of {self.concept!r} is {tuple(self.mask.shape)} but its image is "
                             f"{tuple(self.image.shape[:2])}")
        if self.repeats < 1:
            raise ValueError(f"repeats of {self.concept!r} must be at least 1, not {self.repeats}")


@dataclass(frozen=True)
class Dataset:
    samples: tuple[DatasetSample, ...]
    trigger: str = ""  # the word the captions and sample prompts call the subject by
    notes: tuple[str, ...] = field(default=())  # warnings gathered while building, for the summary

    def __post_init__(self):
        if not self.samples:
            raise ValueError("the dataset is empty: it needs at least one image")

    def with_samples(self, samples) -> "Dataset":
        return replace(self, samples=tuple(samples))

    @property
    def images_per_epoch(self) -> int:
        return sum(s.repeats for s in self.samples)


def mask_from_comfy(mask: torch.Tensor, meaning: str) -> torch.Tensor:
    """A ComfyUI MASK as a loss weight. "white = subject/train": segmentation nodes and Remove
    Background (1 = subject). "LoadImage alpha": LoadImage's mask is 1 - alpha (1 = transparent)."""
    if meaning == "white = subject/train":
        return mask.float().clamp(0, 1)
    if meaning == "LoadImage alpha":
        return (1.0 - mask.float()).clamp(0, 1)
    raise ValueError(f"mask_meaning must be 'white = subject/train' or 'LoadImage alpha', not {meaning!r}")


MASK_MEANINGS = ("white = subject/train", "LoadImage alpha")


def looks_inverted(weight: torch.Tensor) -> bool:
    """A loss weight covering more than 90% of the frame is probably the background."""
    return float(weight.float().mean()) > 0.9
