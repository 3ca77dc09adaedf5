"""Text labels drawn onto rendered images (PIL; Open3D's offscreen renderer draws no text)."""
from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np

__all__ = ["draw_labels"]


def draw_labels(
    image: np.ndarray, uv: np.ndarray, texts: Sequence[str], colors: np.ndarray, width_chars: int = 40
) -> np.ndarray:
    """Draw each text in a small box anchored at pixel ``uv[i]``; returns a new (H, W, 3) uint8."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray(image)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    H, W = image.shape[:2]
    for (u, v), text, color in zip(np.asarray(uv).reshape(-1, 2), texts, np.asarray(colors).reshape(-1, 3)):
        lines = textwrap.wrap(text or "", width_chars)[:3]
        if not (0 <= u < W and 0 <= v < H) or not lines:
            continue  # outside the image, or nothing but whitespace to write
        x0, y0 = int(u) + 3, int(v) - 12 * len(lines) - 3
        fill = tuple(int(255 * c) for c in color)
        tw = max(draw.textlength(ln, font=font) for ln in lines)
        draw.rectangle([x0 - 2, y0 - 2, x0 + tw + 2, y0 + 12 * len(lines)], fill=(255, 255, 255), outline=fill)
        for k, ln in enumerate(lines):
            draw.text((x0, y0 + 12 * k), ln, fill=fill, font=font)
    return np.asarray(img)
