"""The loss history as a picture (PIL): raw loss, an exponential moving average, and markers at
saved checkpoints. Used as the train node's live preview and by the loss-chart node."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw


def smoothed(values: Sequence[float], beta: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (as TensorBoard's smoothing); NaN/inf skipped."""
    out, avg, weight = [], 0.0, 0.0
    for v in values:
        if math.isfinite(v):
            avg = beta * avg + (1 - beta) * v
            weight = beta * weight + (1 - beta)
        out.append(avg / weight if weight else float("nan"))
    return out


def render(losses: Sequence[float], saves: Sequence[int] = (), width: int = 512, height: int = 256,
           title: str = "loss", log_scale: bool = False) -> Image.Image:
    image = Image.new("RGB", (width, height), (24, 24, 28))
    draw = ImageDraw.Draw(image)
    finite = [v for v in losses if math.isfinite(v)]
    draw.text((8, 6), f"{title}: {len(losses)} steps" + (f", last {finite[-1]:.4g}, min {min(finite):.4g}" if finite else ""),
              fill=(220, 220, 220))
    if len(finite) < 1:
        return image
    left, top, right, bottom = 8, 24, width - 8, height - 8
    scale = (lambda v: math.log10(v) if v > 0 else float("nan")) if log_scale else (lambda v: v)
    scaled = [scale(v) for v in finite if math.isfinite(scale(v))] or [0.0]
    low, high = min(scaled), max(scaled)
    span = (high - low) or 1.0
    n = len(losses)

    def point(i: int, v: float) -> tuple[float, float]:
        x = left + (right - left) * (i / max(1, n - 1))
        return x, bottom - (bottom - top) * (scale(v) - low) / span

    for step in saves:
        if 1 <= step <= n:
            x = left + (right - left) * ((step - 1) / max(1, n - 1))
            draw.line([(x, top), (x, bottom)], fill=(70, 110, 70))
    for series, colour in ((losses, (110, 110, 150)), (smoothed(losses), (250, 190, 80))):
        pts = [p for p in (point(i, v) for i, v in enumerate(series) if math.isfinite(v)) if math.isfinite(p[1])]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=1 if series is losses else 2)
        elif pts:
            draw.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=colour)
    return image


def as_image_batch(image: Image.Image) -> torch.Tensor:
    """A PIL image as a one-image batch in ComfyUI's IMAGE layout: (1,H,W,3) float in [0,1]."""
    return torch.from_numpy(np.array(image.convert("RGB"))).float().div(255).unsqueeze(0)  # a writable copy
