"""The dataset value that flows between nodes: immutable, cheap to pass, one entry per image.

Masks are loss weights (1 = learn this pixel, 0 = ignore). In-memory images are (H,W,3) float
tensors in [0,1], the layout of ComfyUI's IMAGE; masks (H,W) in [0,1]. Folder datasets keep
paths and read the files when training encodes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


@dataclass(frozen=True)
class DatasetSample:
    caption: str
    concept: str
    image: torch.Tensor | None = None  # (H,W,3) float in [0,1], when held in memory
    path: str | None = None  # or the image file, read when needed
    mask: torch.Tensor | None = None  # (H,W) loss weight, 1 = learn, when held in memory
    mask_path: str | None = None  # or a sidecar mask file (white = learn)
    alpha_mask: bool = False  # or the image file's own alpha channel is the loss weight
    size: tuple[int, int] | None = None  # (width, height) as loaded (after any load-time downscale)
    repeats: int = 1
    flip_allowed: bool = True  # composites: never (a flip swaps left and right against the caption)
    # Composites: the caption in parts (header, left side's tags, right side's tags), joined by ", " to
    # `caption`. Tag clean-up and de-duplication work within each part: both sides keep a shared tag.
    caption_parts: tuple[str, ...] = ()

    def __post_init__(self):
        if (self.image is None) == (self.path is None):
            raise ValueError(f"a sample of {self.concept!r} needs exactly one of an image tensor or an image path")
        if self.image is not None and (self.image.ndim != 3 or self.image.shape[-1] != 3):
            raise ValueError(f"image of {self.concept!r} must be (H,W,3), got {tuple(self.image.shape)}")
        if self.mask is not None and self.image is not None and tuple(self.mask.shape) != tuple(self.image.shape[:2]):
            raise ValueError(f"mask of {self.concept!r} is {tuple(self.mask.shape)} but its image is "
                             f"{tuple(self.image.shape[:2])}")
        if self.repeats < 1:
            raise ValueError(f"repeats of {self.concept!r} must be at least 1, not {self.repeats}")

    @property
    def name(self) -> str:
        """How summaries and errors refer to the sample: its file with the folder it is in (not the
        server's full path), or its concept."""
        if self.path is None:
            return f"{self.concept} (in-memory image)"
        parts = self.path.replace("\\", "/").split("/")
        return "/".join(parts[-2:])

    @property
    def pixel_size(self) -> tuple[int, int] | None:
        if self.image is not None:
            return int(self.image.shape[1]), int(self.image.shape[0])
        return self.size


@dataclass(frozen=True)
class Dataset:
    samples: tuple[DatasetSample, ...]
    trigger: str = ""  # the word the captions and sample prompts call the subject by
    notes: tuple[str, ...] = field(default=())  # warnings and skips gathered while building, for the summary
    buckets: object | None = None  # buckets.BucketSettings; None: each image keeps its size (cropped to /16)
    flip: bool = False  # horizontal-flip augmentation for samples that allow it
    caption_policy: object | None = None  # captions.CaptionPolicy, resolved per sample and step in training
    masked_fill: tuple[float, float, float] | None = None  # RGB put under masked-out pixels; None: keep the image

    def __post_init__(self):
        if not self.samples:
            raise ValueError("the dataset is empty: it needs at least one image")

    def with_samples(self, samples) -> "Dataset":
        return replace(self, samples=tuple(samples))

    def with_changes(self, **changes) -> "Dataset":
        return replace(self, **changes)

    @property
    def images_per_epoch(self) -> int:
        return sum(s.repeats for s in self.samples)

    def concepts(self) -> dict[str, list[DatasetSample]]:
        out: dict[str, list[DatasetSample]] = {}
        for sample in self.samples:
            out.setdefault(sample.concept, []).append(sample)
        return out


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
