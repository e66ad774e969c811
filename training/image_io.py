"""Reading dataset files: images (with their transparency), captions, and a sample's pixels.

Every failure to read a file is an UnreadableFile (a ValueError) naming the file and what is
wrong with it, so a folder scan can skip it with a note or stop with a clear message. Files are
always closed before returning.
"""

from __future__ import annotations

import codecs
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..masking.alpha import SIXTEEN_BIT_MODES, alpha_weight, grey_levels, read_mask_file, resize_weight

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
DEFAULT_MAX_SIDE = 3072
MIN_SIDE = 16  # pixels on the short side: below, an image is refused (one 2x2 patch of an 8x latent)
# Pillow's own decompression-bomb error threshold (2 × its default MAX_IMAGE_PIXELS), fixed here so
# that a host or another node pack changing Image.MAX_IMAGE_PIXELS cannot lift it.
MAX_PIXELS = 178_956_970
MAX_CAPTION_CHARS = 10_000
_ORIENTATION_TAG = 0x0112
_SWAPS_SIDES = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 degrees


class UnreadableFile(ValueError):
    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class LoadedImage:
    rgb: torch.Tensor  # (H,W,3) float32 in [0,1]
    alpha_weight: torch.Tensor | None  # (H,W) loss weight from the image's transparency, or None
    warnings: tuple[str, ...]
    source_size: tuple[int, int]  # (width, height) in the file, after EXIF orientation, before downscaling

    @property
    def size(self) -> tuple[int, int]:
        return int(self.rgb.shape[1]), int(self.rgb.shape[0])


@dataclass(frozen=True)
class ImageProbe:
    size: tuple[int, int]  # (width, height) as open_image will return it
    source_size: tuple[int, int]  # (width, height) in the file, after EXIF orientation
    has_alpha: bool  # some pixel is transparent
    frames: int
    alpha_empty: bool = False  # every pixel is transparent: a loss weight of zero everywhere


def fitted_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(width, height) shrunk so that the long side is at most max_side, keeping the aspect."""
    width, height = size
    if max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


@contextmanager
def _named_errors(path):
    """Pillow's errors for a bad file as one UnreadableFile naming it and saying what is wrong."""
    try:
        yield
    except UnreadableFile:
        raise
    except FileNotFoundError:
        raise UnreadableFile(path, "file not found") from None
    except Image.DecompressionBombError as e:
        raise UnreadableFile(path, f"refused as a possible decompression bomb ({e})") from None
    except UnidentifiedImageError:
        empty = Path(path).is_file() and Path(path).stat().st_size == 0
        raise UnreadableFile(path, "the file is empty" if empty else
                             "not an image Pillow can read (unknown format or corrupt header)") from None
    except (OSError, SyntaxError, EOFError, ValueError) as e:
        raise UnreadableFile(path, f"corrupt or truncated image data ({e})") from None


@contextmanager
def _open(path):
    """The opened image, refused before decoding when it has more than MAX_PIXELS pixels."""
    with _named_errors(path), warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PIXELS decides instead
        with Image.open(path) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise UnreadableFile(path, f"{width}x{height} is more than {MAX_PIXELS} pixels; refused as a "
                                           f"possible decompression bomb")
            yield img


def _oriented(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    return (size[1], size[0]) if orientation in _SWAPS_SIDES else size


def _decode(path, draft: bool = False) -> tuple[Image.Image, int, tuple[int, int]]:
    """The first frame decoded (so a truncated file shows) with EXIF orientation applied, the
    file's frame count, and its oriented (width, height). draft: a JPEG decodes at reduced scale,
    which still reads all its data."""
    with _open(path) as img:
        frames = getattr(img, "n_frames", 1)
        source_size = _oriented(img.size, img.getexif().get(_ORIENTATION_TAG, 1))
        if draft:
            img.draft(img.mode, (1, 1))
        img.load()
        return ImageOps.exif_transpose(img), frames, source_size


def _rgb_array(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """(H,W,3) float32 in [0,1] at `size` (LANCZOS when it differs)."""
    if img.mode in SIXTEEN_BIT_MODES:  # Pillow's convert("RGB") would clip them at 255: resize as float
        grey = Image.fromarray(grey_levels(img)).resize(size, Image.Resampling.LANCZOS)
        return np.repeat(np.clip(np.asarray(grey, dtype=np.float32), 0.0, 1.0)[..., None], 3, axis=-1)
    return np.asarray(img.convert("RGB").resize(size, Image.Resampling.LANCZOS), dtype=np.float32) / 255.0


def open_image(path, max_side: int = DEFAULT_MAX_SIDE) -> LoadedImage:
    """An image file as (H,W,3) float32 RGB in [0,1] plus the loss weight from its transparency.

    EXIF orientation applied; CMYK, palette, grey, LA and 16-bit files converted; animated files
    give their first frame (with a warning); a long side above max_side is downscaled (LANCZOS for
    the image, bilinear for the weight) with a warning. The RGB under transparent pixels is kept.
    """
    img, frames, source_size = _decode(path)
    notes = []
    if frames > 1:
        notes.append(f"{path}: animated ({frames} frames), using the first frame")
    size = fitted_size(source_size, max_side)
    if size != source_size:
        notes.append(f"{path}: {source_size[0]}x{source_size[1]} downscaled to {size[0]}x{size[1]} "
                     f"(longest side {max_side})")
    weight = alpha_weight(img)
    weight = None if weight is None else resize_weight(weight, size)
    return LoadedImage(torch.from_numpy(_rgb_array(img, size)), weight, tuple(notes), source_size)


def probe_image(path, max_side: int = DEFAULT_MAX_SIDE) -> ImageProbe:
    """Checks that an image decodes and reports its size and whether it is transparent anywhere,
    for a folder scan: JPEGs decode at reduced scale, others fully (transparency needs pixels)."""
    img, frames, source_size = _decode(path, draft=True)
    weight = alpha_weight(img)
    return ImageProbe(fitted_size(source_size, max_side), source_size, weight is not None, frames,
                      alpha_empty=weight is not None and float(weight.max()) == 0.0)


def image_size(path, max_side: int = DEFAULT_MAX_SIDE) -> tuple[int, int]:
    """(width, height) as open_image will return it, read from the header without decoding pixels.
    A PNG's eXIf chunk stored after its pixel data (rare) is only seen by decoding: probe_image."""
    with _open(path) as img:
        # PNG's getexif decodes the whole image to look for a late eXIf chunk: use only the header's
        orientation = 1 if img.format == "PNG" and "exif" not in img.info else img.getexif().get(_ORIENTATION_TAG, 1)
        return fitted_size(_oriented(img.size, orientation), max_side)


_BYTE_ORDER_MARKS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def read_caption(path) -> str:
    """A caption file's text: UTF-8 (with or without a BOM) or UTF-16 with a BOM.

    All whitespace, line breaks included, collapses to single spaces: a caption is one prompt, so
    a multi-line file reads as one natural-language caption (kohya reads only the first line; its
    wildcard mode picks one line per step). Undecodable or binary content, or more than
    MAX_CAPTION_CHARS characters, is an UnreadableFile.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UnreadableFile(path, f"cannot read the caption ({e.strerror or e})") from None
    encoding = next((enc for bom, enc in _BYTE_ORDER_MARKS if data.startswith(bom)), "utf-8")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        text = "\x00"  # reported below as not text
    if "\x00" in text:
        raise UnreadableFile(path, "caption is not text (expected UTF-8, or UTF-16 with a byte-order mark)")
    caption = " ".join(text.split())
    if len(caption) > MAX_CAPTION_CHARS:
        raise UnreadableFile(path, f"caption is {len(caption)} characters long; at most {MAX_CAPTION_CHARS} "
                                   f"are accepted")
    return caption


def load_sample_pixels(sample, max_side: int | None = None):
    """(image (H,W,3), loss weight (H,W) or None, warnings) for a dataset.DatasetSample.

    In-memory samples come back as they are. A file is loaded at the size the scan recorded
    (`sample.size`, i.e. with the same load-time downscale), unless `max_side` says otherwise. A file-backed sample's weight comes from, in order:
    its mask tensor, its sidecar mask file, or the image's own alpha when alpha_mask is set; a mask
    of the image's original size follows the load-time downscale silently, any other size is
    resized with a warning.
    """
    if sample.image is not None:
        return sample.image, sample.mask, ()
    if max_side is None:
        max_side = max(sample.size) if sample.size else DEFAULT_MAX_SIDE
    loaded = open_image(sample.path, max_side)
    notes = list(loaded.warnings)
    weight = None
    if sample.mask is not None:
        mask_size = (int(sample.mask.shape[1]), int(sample.mask.shape[0]))
        if mask_size not in (loaded.size, loaded.source_size):
            notes.append(f"mask of {sample.path} is {mask_size[0]}x{mask_size[1]} but its image is "
                         f"{loaded.source_size[0]}x{loaded.source_size[1]}: resized to fit")
        weight = resize_weight(sample.mask.float(), loaded.size)
    elif sample.mask_path is not None:
        with _named_errors(sample.mask_path):
            weight, warning = read_mask_file(sample.mask_path, loaded.size, loaded.source_size)
        notes += [warning] if warning else []
    elif sample.alpha_mask:
        weight = loaded.alpha_weight
        if weight is None:
            notes.append(f"{sample.path}: no transparent pixels to use as a mask; the whole image is learned")
    return loaded.rgb, weight, tuple(notes)
