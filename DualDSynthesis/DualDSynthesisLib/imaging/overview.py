"""Overview figure: axial, coronal and sagittal rows of source | synthetic | heatmap over synthetic, under a
caption strip naming each column (the heatmap's with its units and the value at full colour), orientation
letters on the source panels, and the heatmap's colour bar (inferno, as the Slicer overlay) underneath.

Composed with numpy and returned as a SimpleITK 2-D RGB image (uint8 vector pixels), which
SimpleITK writes as PNG; no matplotlib, PIL or vtk needed. Radiological display: each slice is
taken from the volume reoriented to LPS, the patient's right on the left of the panel, anterior
(axial) or superior (coronal, sagittal) at the top, pixels stretched to the physical aspect.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from . import heatmap_kinds
from .figures import caption_strip, inferno_map, label_pixels
from .heatmap_file import ascii_text

PANEL_HEIGHT = 256
GAP = 4
COLOUR_BAR_HEIGHT = 24  # the heatmap's colour bar and its labels, under the panels
# Orientation letters at each panel's edges (left, right, top, bottom), radiological display (see _planes).
ORIENTATION = (("R", "L", "A", "P"), ("R", "L", "S", "I"), ("A", "P", "S", "I"))
ROW_NAMES = ("axial", "coronal", "sagittal")
CAPTION_HEIGHT = 14  # figures.caption_strip
MAX_SIDE = 2048  # the whole figure's width and height: a 1-slice or 2000×2000 input must not need gigabytes
MAX_PANEL_WIDTH = (MAX_SIDE - 2 * GAP) // 3
BLACK_LEVEL_CAP = 0.05  # the synthetic's black level rises to its background's level, at most this much of its window


def _window(arr: np.ndarray) -> tuple[float, float]:
    sample = arr.reshape(-1)[:: max(1, arr.size // 1_000_000)]
    sample = sample[np.isfinite(sample)]
    lo, hi = (np.percentile(sample, (0.5, 99.5)) if sample.size else (0.0, 1.0))
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _synthetic_window(syn: np.ndarray, src: np.ndarray) -> tuple[float, float]:
    """The synthetic's display window, its black level raised to the synthetic's background.

    Where the source is empty the synthetic is G's response to empty input: the engine's blank value (e.g.
    12.9 T2 units) in skipped slices and outside the processed box, but G's clipped output (0 to a few units)
    inside it. Shown from 0 those few units draw the processed box as grey rectangles; from the background's
    own level up they are one black. The rise is capped at BLACK_LEVEL_CAP of the window, so anatomy stays."""
    lo, hi = _window(syn)
    if syn.shape != src.shape:
        return lo, hi
    step = max(1, syn.size // 1_000_000)
    syn_sample, src_sample = syn.reshape(-1)[::step], src.reshape(-1)[::step]
    empty = syn_sample[(src_sample <= _window(src)[0]) & np.isfinite(syn_sample)]
    if not empty.size:
        return lo, hi
    level = min(float(np.percentile(empty, 99)), lo + BLACK_LEVEL_CAP * (hi - lo))
    return max(lo, level), hi


def _centre(arr: np.ndarray) -> tuple[int, int, int]:
    """Centroid of the bright voxels (the anatomy), falling back to the middle of the volume."""
    lo, hi = _window(arr)
    fg = arr > lo + 0.1 * (hi - lo)
    if not fg.any():
        return tuple(s // 2 for s in arr.shape)  # type: ignore[return-value]
    return tuple(int(c + 0.5) for c in ndimage.center_of_mass(fg))  # type: ignore[return-value]


def _panel(plane: np.ndarray, row_spacing: float, col_spacing: float, width: int | None = None) -> np.ndarray:
    """``plane`` resampled (bilinear) to PANEL_HEIGHT rows at the physical aspect ratio."""
    rows, cols = plane.shape
    if width is None:  # physical aspect, capped: a one-slice volume's coronal plane is 1 row by 240 columns
        width = min(MAX_PANEL_WIDTH, max(1, round(PANEL_HEIGHT * cols * col_spacing / (rows * row_spacing))))
    r = np.linspace(0, rows - 1, PANEL_HEIGHT)
    c = np.linspace(0, cols - 1, width)
    rr, cc = np.meshgrid(r, c, indexing="ij")
    return ndimage.map_coordinates(plane.astype(np.float32), [rr, cc], order=1, mode="nearest")


def _gray(panel: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    g = np.clip((panel - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    return np.repeat(g[..., None], 3, axis=2)


def _planes(arr: np.ndarray, centre: tuple[int, int, int], spacing: tuple[float, ...]) -> list[tuple]:
    """(plane, row spacing, column spacing) for axial, coronal, sagittal of an LPS ``[k, j, i]`` array."""
    k, j, i = centre
    sx, sy, sz = spacing
    return [
        (arr[k], sy, sx),
        (arr[::-1, j, :], sz, sx),
        (arr[::-1, :, i], sz, sy),
    ]


def heatmap_caption(units: str, source: str | None = None) -> str:
    """The heatmap column's caption: what the colours mean, the recorded ``units`` else the kind's legend (the
    colour bar under the column gives the range: 0 to ``high``)."""
    return f"heatmap: {ascii_text(heatmap_kinds.kind(source).legend(units))}"


def overview_image(source: sitk.Image, synthetic: sitk.Image, heatmap: sitk.Image | None,
                   heatmap_units: str = "", heatmap_source: str | None = None) -> sitk.Image:
    """The 3×3 overview as an RGB SimpleITK image (write it with ``sitk.WriteImage(img, "x.png")``).
    ``heatmap_units``/``heatmap_source``: the result's; the map is shown from 0 to its kind's
    ``display_max`` (a D2 map from 0 to 1)."""
    arrays, keep = [], []  # keep: the images the array views point into must stay alive
    for image in (source, synthetic, heatmap):
        if image is None:
            arrays.append(None)
            continue
        keep.append(sitk.DICOMOrient(sitk.Cast(image, sitk.sitkFloat32), "LPS"))
        arrays.append(sitk.GetArrayViewFromImage(keep[-1]))
        spacing = keep[-1].GetSpacing()
    src, syn, heat = arrays
    centre = _centre(src)
    windows = (_window(src), _synthetic_window(syn, src))
    kind = heatmap_kinds.kind(heatmap_source)
    high = kind.display_max(np.asarray(heat)) if heat is not None else 1.0
    panels = []  # per row: source, synthetic, overlay panels (RGB floats)
    for index, (plane, rs, cs) in enumerate(_planes(src, centre, spacing)):
        src_panel = _panel(plane, rs, cs)
        width = src_panel.shape[1]
        syn_rgb = _gray(_panel(_planes(syn, centre, spacing)[index][0], rs, cs, width), windows[1])
        over = syn_rgb
        if heat is not None:
            h = _panel(_planes(heat, centre, spacing)[index][0], rs, cs, width) / high
            alpha = (0.7 * np.clip(h, 0.0, 1.0))[..., None].astype(np.float32)
            over = (1 - alpha) * syn_rgb + alpha * inferno_map(h)
        panels.append((_gray(src_panel, windows[0]), syn_rgb, over))
    # Every panel centred in a cell as wide as the widest panel of its column, so the columns line up.
    cell = max(p.shape[1] for row in panels for p in row)
    width = 3 * cell + 2 * GAP
    height = len(panels) * (PANEL_HEIGHT + GAP) - GAP
    canvas = np.zeros((height + (COLOUR_BAR_HEIGHT if heat is not None else 0), width, 3), np.float32)
    labels: list[tuple[int, int, str]] = []
    for n, row in enumerate(panels):
        y = n * (PANEL_HEIGHT + GAP)
        for c, panel in enumerate(row):
            x = c * (cell + GAP) + (cell - panel.shape[1]) // 2
            canvas[y : y + PANEL_HEIGHT, x : x + panel.shape[1]] = panel
            if c == 0:  # orientation letters on the source panel, the row's plane in its corner
                left, right, top, bottom = ORIENTATION[n]
                mid_x, mid_y = x + panel.shape[1] // 2, y + PANEL_HEIGHT // 2
                labels += [(x + 2, mid_y - 5, left), (x + panel.shape[1] - 9, mid_y - 5, right),
                           (mid_x - 3, y + 2, top), (mid_x - 3, y + PANEL_HEIGHT - 13, bottom),
                           (c * (cell + GAP) + 2, y + 2, ROW_NAMES[n])]
    if heat is not None:  # colour bar under the heatmap column: 0 → the value at full colour
        x0, bar = 2 * (cell + GAP) + 30, max(16, cell - 90)
        canvas[height + 4 : height + 12, x0 : x0 + bar] = inferno_map(np.linspace(0, 1, bar))[None]
        labels += [(x0 - 12, height + 2, "0"), (x0 + bar + 4, height + 2, f"{high:.3g}")]
    figure = label_pixels(np.round(canvas * 255).astype(np.uint8), labels)
    third = "synthetic (no heatmap)" if heat is None else heatmap_caption(heatmap_units, heatmap_source)
    # The last caption may run past its cell, to the figure's right edge (the units are long, cells narrow).
    strip = caption_strip(["source", "synthetic", third], [cell, cell, cell], GAP, width)
    return sitk.GetImageFromArray(np.concatenate([strip, figure], axis=0), isVector=True)
