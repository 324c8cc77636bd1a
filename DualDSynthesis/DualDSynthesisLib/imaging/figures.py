"""Colour maps and PNG output for figures, with numpy and SimpleITK only (no matplotlib, no vtk), so the
training reports, the overview figure and the Slicer-side renders share one implementation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_write, png_problem

# Samples of matplotlib's perceptually uniform "inferno" (dark purple → pale yellow).
_INFERNO_ANCHORS = np.array(
    [
        (0.001, 0.000, 0.014), (0.014, 0.011, 0.072), (0.042, 0.028, 0.141), (0.082, 0.043, 0.215),
        (0.129, 0.047, 0.291), (0.183, 0.040, 0.355), (0.238, 0.037, 0.396), (0.291, 0.046, 0.419),
        (0.342, 0.062, 0.429), (0.391, 0.081, 0.433), (0.441, 0.099, 0.432), (0.491, 0.117, 0.426),
        (0.541, 0.135, 0.415), (0.591, 0.153, 0.400), (0.640, 0.171, 0.381), (0.689, 0.192, 0.358),
        (0.736, 0.216, 0.330), (0.781, 0.243, 0.300), (0.822, 0.275, 0.266), (0.861, 0.312, 0.231),
        (0.894, 0.353, 0.194), (0.923, 0.399, 0.155), (0.947, 0.449, 0.115), (0.965, 0.502, 0.074),
        (0.978, 0.558, 0.035), (0.986, 0.616, 0.026), (0.988, 0.675, 0.065), (0.984, 0.736, 0.130),
        (0.975, 0.798, 0.206), (0.961, 0.859, 0.298), (0.948, 0.917, 0.411), (0.955, 0.966, 0.540),
        (0.988, 0.998, 0.645),
    ]
)


def inferno_rgb(n: int = 256) -> np.ndarray:
    """``n`` inferno colours, ``[n, 3]`` floats in [0, 1], dark purple → pale yellow."""
    x = np.linspace(0.0, 1.0, n)
    xp = np.linspace(0.0, 1.0, len(_INFERNO_ANCHORS))
    return np.stack([np.interp(x, xp, _INFERNO_ANCHORS[:, c]) for c in range(3)], axis=1)


def inferno_map(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] → inferno colours ``[..., 3]`` in [0, 1]: the colour map of the Slicer overlay, so the
    overview PNG and the slice views read the same."""
    lut = inferno_rgb(256).astype(np.float32)
    return lut[np.clip(np.round(np.nan_to_num(x) * 255), 0, 255).astype(np.int64)]


def label_pixels(pixels: np.ndarray, labels: Sequence[tuple[int, int, str]]) -> np.ndarray:
    """``pixels`` (uint8 ``[rows, cols, 3]``) with each ``(x, y, text)`` written in light grey (Pillow's
    built-in bitmap font)."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    for x, y, text in labels:
        draw.text((x, y), text, fill=(220, 220, 220))
    return np.asarray(image, dtype=np.uint8)


def hot_rgb(x: np.ndarray) -> np.ndarray:
    """Black → red → yellow → white for values in [0, 1]: ``[..., 3]`` floats in [0, 1]."""
    x = np.clip(x, 0.0, 1.0)
    return np.stack([np.clip(3 * x, 0, 1), np.clip(3 * x - 1, 0, 1), np.clip(3 * x - 2, 0, 1)], axis=-1)


def caption_strip(captions: Sequence[str], widths: Sequence[int], gap: int, total: int | None = None) -> np.ndarray:
    """A dark 14-pixel strip, ``[14, total, 3]`` uint8, with each column's caption at its left edge (Pillow's
    built-in bitmap font: no font file needed). ``total``: the strip's width (default: the columns')."""
    from PIL import Image, ImageDraw

    width = total if total is not None else sum(widths) + gap * (len(widths) - 1)
    strip = Image.new("RGB", (width, 14), (40, 40, 40))
    draw = ImageDraw.Draw(strip)
    x = 0
    for text, w in zip(captions, widths, strict=True):
        draw.text((x + 2, 1), text, fill=(235, 235, 235))
        x += w + gap
    return np.asarray(strip, dtype=np.uint8)


def write_png(pixels: np.ndarray, path: str | Path) -> Path:
    """Write a ``[rows, cols, 3|4]`` uint8 array (top row first) as an RGB(A) PNG."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(pixels, dtype=np.uint8), isVector=True)
    return atomic_write(Path(path), lambda tmp: sitk.WriteImage(image, str(tmp)), png_problem)
