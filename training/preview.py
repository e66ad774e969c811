"""A contact sheet of dataset samples: each image with its masked-out area tinted and its caption
underneath, so a user sees what will be learned before training."""

from __future__ import annotations

import math
import textwrap
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

TINT = np.array([200, 40, 40], dtype=np.float32)  # masked-out (ignored) pixels lean red


def tile(image: torch.Tensor, weight: torch.Tensor | None, caption: str, size: int = 192) -> Image.Image:
    rgb = image.clamp(0, 1).mul(255).numpy().astype(np.float32)
    if weight is not None:
        ignored = (1.0 - weight.clamp(0, 1).numpy().astype(np.float32))[..., None] * 0.6
        rgb = rgb * (1 - ignored) + TINT * ignored
    picture = Image.fromarray(rgb.round().astype(np.uint8))
    picture.thumbnail((size, size))
    card = Image.new("RGB", (size, size + 48), (32, 32, 36))
    card.paste(picture, ((size - picture.width) // 2, (size - picture.height) // 2))
    lines = textwrap.wrap(caption or "(no caption)", width=size // 6)[:3]
    ImageDraw.Draw(card).multiline_text((4, size + 2), "\n".join(lines), fill=(225, 225, 225), spacing=2)
    return card


def grid(tiles: Sequence[Image.Image], columns: int = 4) -> Image.Image:
    if not tiles:
        return Image.new("RGB", (64, 64), (32, 32, 36))
    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    w, h = tiles[0].size
    sheet = Image.new("RGB", (columns * w, rows * h), (20, 20, 24))
    for i, card in enumerate(tiles):
        sheet.paste(card, ((i % columns) * w, (i // columns) * h))
    return sheet
