"""Resolution and aspect-ratio buckets with kohya's semantics: each image goes to the bucket of about
resolution² pixels whose aspect ratio is closest to its own, is scaled to cover it and centre-cropped,
so the images of one bucket share a size and can share a batch without squashing anyone."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class BucketSettings:
    resolution: int = 512  # a bucket holds at most resolution² pixels
    min_side: int = 256
    max_side: int = 1024
    step: int = 64  # every bucket side is a multiple of this
    no_upscale: bool = False  # images smaller than resolution² get a bucket of their own size

    def __post_init__(self):
        for name in ("step", "resolution", "min_side", "max_side"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"bucket {name} must be a positive whole number, not {value!r}")
            if value % self.step:
                raise ValueError(f"bucket {name} ({value}) must be a multiple of step ({self.step})")
        if self.min_side > self.resolution:
            raise ValueError(f"bucket min_side ({self.min_side}) must not exceed resolution ({self.resolution})")
        if self.max_side < self.resolution:
            raise ValueError(f"bucket max_side ({self.max_side}) must be at least resolution ({self.resolution})")


def bucket_sizes(settings: BucketSettings) -> list[tuple[int, int]]:
    """(width, height) of every bucket, sorted: kohya's make_bucket_resolutions. For each width in
    [min_side, max_side] the tallest height (a multiple of step, at most max_side) keeping the area
    within resolution², its transpose, and the square."""
    s = settings
    max_area = s.resolution ** 2
    sizes = {(s.resolution, s.resolution)}
    for width in range(s.min_side, s.max_side + 1, s.step):
        height = min(s.max_side, max_area // width // s.step * s.step)
        if height >= s.min_side:
            sizes |= {(width, height), (height, width)}
    return sorted(sizes)


def assign_bucket(size: tuple[int, int], settings: BucketSettings) -> tuple[int, int]:
    """The bucket for an image of size (width, height): the one with the closest aspect ratio, as
    distance between log ratios (so 2:1 and 1:2 are equally far from 1:1). With no_upscale, an image
    below resolution² pixels gets a bucket cut from its own size instead, so it is never enlarged."""
    width, height = size
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, not {width}x{height}")
    if settings.no_upscale and width * height < settings.resolution ** 2:
        return _own_bucket(width, height, settings)
    # ties (equal ratios) go to the larger bucket, which keeps more detail
    return min(bucket_sizes(settings),
               key=lambda b: (abs(math.log(b[0] * height / (b[1] * width))), -b[0] * b[1]))


def _own_bucket(width: int, height: int, s: BucketSettings) -> tuple[int, int]:
    """kohya's bucket_no_upscale: the image's sides floored to multiples of step, after scaling down
    only as far as max_side needs."""
    scale = min(1.0, s.max_side / max(width, height))

    def side(original: int) -> int:
        # max_side's scaling may not push a side below min_side the image itself reaches
        wanted = max(original * scale, min(original, s.min_side))
        # one step is the smallest bucket: only an image side below step gets enlarged, to it
        return max(s.step, int(wanted // s.step) * s.step)

    return side(width), side(height)


def fit_to_bucket(image: torch.Tensor, mask: torch.Tensor | None,
                  bucket: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale image (H,W,3) and its mask (H,W) keeping the aspect ratio until they cover the bucket
    (width, height), then centre-crop to exactly (height, width). Float32; the image clamped to
    [0,1] (bicubic overshoots at edges), the mask too, as a loss weight."""
    bucket_w, bucket_h = bucket
    height, width = image.shape[:2]
    if mask is not None and tuple(mask.shape) != (height, width):
        raise ValueError(f"mask is {tuple(mask.shape)} but its image is {(height, width)}")
    scale = max(bucket_w / width, bucket_h / height)
    # rounding must never leave the resized image a pixel short of the bucket
    size = (max(bucket_h, int(height * scale + 0.5)), max(bucket_w, int(width * scale + 0.5)))
    top, left = (size[0] - bucket_h) // 2, (size[1] - bucket_w) // 2

    def fit(planes: torch.Tensor, mode: str) -> torch.Tensor:
        if tuple(planes.shape[-2:]) != size:
            planes = F.interpolate(planes[None], size=size, mode=mode, antialias=True, align_corners=False)[0]
        return planes[:, top:top + bucket_h, left:left + bucket_w].clamp(0, 1)

    fitted = fit(image.float().permute(2, 0, 1), "bicubic").permute(1, 2, 0).contiguous()
    return fitted, None if mask is None else fit(mask.float()[None], "bilinear")[0].contiguous()


def cropped_width(size: tuple[int, int], bucket: tuple[int, int]) -> float:
    """The share of the image's width that fit_to_bucket crops away (left and right)."""
    width, height = size
    bucket_w, bucket_h = bucket
    return max(0.0, 1 - bucket_w / (width * max(bucket_w / width, bucket_h / height)))


def bucket_report(sizes: list[tuple[int, int]], settings: BucketSettings) -> dict[tuple[int, int], int]:
    """How many of the images of sizes (width, height) land in each bucket, by bucket size."""
    counts: dict[tuple[int, int], int] = {}
    for size in sizes:
        bucket = assign_bucket(size, settings)
        counts[bucket] = counts.get(bucket, 0) + 1
    return dict(sorted(counts.items()))


def format_buckets(report: dict[tuple[int, int], int]) -> str:
    """"512x512: 3, 576x448: 2": fullest buckets first."""
    if not report:
        return "no images"
    ordered = sorted(report.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{w}x{h}: {count}" for (w, h), count in ordered)
