"""Loss weights from an image's own transparency and from sidecar mask files.

A loss weight is (H,W) float32 in [0,1]: 1 = learn this pixel (opaque, or white in a mask file),
0 = ignore it. Pillow traps handled here: RGBA always "has transparency" even when fully opaque;
palette/grey/RGB images carry transparency as a tRNS key in `img.info`; `convert` clips 16-bit
values at 255, so 16-bit grey is scaled by 65535 here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

SIDECAR_SUFFIXES = ("_mask", "-masklabel")  # kohya-style `_mask`, OneTrainer's `-masklabel`
SIDECAR_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit PNG/TIFF grey ("I": older Pillow)


def _alpha(img: Image.Image) -> np.ndarray | None:
    """Opacity in [0,1] from an alpha band or a tRNS key, or None when the image has neither."""
    if "A" in img.getbands():  # RGBA, LA, PA
        return np.asarray(img.getchannel("A"), dtype=np.float32) / 255.0
    key = img.info.get("transparency")
    if key is None:
        return None
    if img.mode == "P":  # per-palette-entry alpha (an index or a tRNS table): let Pillow expand it
        return np.asarray(img.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0
    pixels = np.asarray(img)  # grey, 16-bit grey or RGB with one colour keyed out
    opaque = pixels != np.asarray(key)
    if opaque.ndim == 3:
        opaque = opaque.any(axis=-1)
    return opaque.astype(np.float32)


def alpha_weight(img: Image.Image) -> torch.Tensor | None:
    """The loss weight from the image's transparency, or None when nothing in it is transparent
    (no alpha at all, or an alpha that is opaque everywhere)."""
    alpha = _alpha(img)
    if alpha is None or alpha.min() >= 1.0:
        return None
    return torch.from_numpy(alpha)


def grey_levels(img: Image.Image) -> np.ndarray:
    """(H,W) float32 grey in [0,1]: luminance for colour modes, 16-bit grey scaled by 65535."""
    if img.mode in SIXTEEN_BIT_MODES:
        return np.clip(np.asarray(img, dtype=np.float32) / 65535.0, 0.0, 1.0)
    return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def resize_weight(weight: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A weight resized to (width, height) with Pillow's bilinear filter (antialiased when
    shrinking, no overshoot past [0,1])."""
    if (weight.shape[1], weight.shape[0]) == tuple(size):
        return weight
    as_float_image = Image.fromarray(weight.float().contiguous().numpy())  # float32 -> mode "F"
    resized = as_float_image.resize(tuple(size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0))


def read_mask_file(path, size: tuple[int, int],
                   source_size: tuple[int, int] | None = None) -> tuple[torch.Tensor, str | None]:
    """A sidecar mask as a loss weight of `size` (width, height), and a warning when the file's
    size did not match its image.

    White = learn. Colour masks count by luminance. Transparent pixels of a mask count as black
    (the mask is composited over black): a mask painted as white strokes on a transparent layer
    means the strokes, and an opaque mask is its grey value alone. EXIF orientation is applied.
    `source_size` is the image's size before any load-time downscale: a mask matching it is
    resized to `size` without a warning. Pillow's errors for an unreadable file propagate
    (training.image_io names the file).
    """
    with Image.open(path) as img:
        img.load()
        img = ImageOps.exif_transpose(img)
    weight = grey_levels(img)
    alpha = _alpha(img)
    if alpha is not None:
        weight = weight * alpha
    expected = tuple(source_size or size)
    warning = None
    if img.size not in (tuple(size), expected):
        warning = (f"mask {path} is {img.size[0]}x{img.size[1]} but its image is "
                   f"{expected[0]}x{expected[1]}: resized to fit")
    return resize_weight(torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32)), size), warning


def find_sidecar(image_path) -> Path | None:
    """`<stem>_mask.png` or `<stem>-masklabel.png` (also .jpg/.jpeg/.webp, lower or upper case
    extension) next to the image, or None."""
    image_path = Path(image_path)
    for suffix in SIDECAR_SUFFIXES:
        for ext in SIDECAR_EXTENSIONS:
            for variant in (ext, ext.upper()):
                candidate = image_path.with_name(f"{image_path.stem}{suffix}{variant}")
                if candidate.is_file():
                    return candidate
    return None


def looks_like_sidecar(path) -> bool:
    """Whether a file's name marks it as a mask (its stem ends with a sidecar suffix)."""
    path = Path(path)
    return path.suffix.lower() in SIDECAR_EXTENSIONS and path.stem.endswith(SIDECAR_SUFFIXES)
