"""Paper-style ablation figure for docs: one axial tumour slice of the held-out subject, all five variants.

    .venv/bin/python experiments/ablation_figure.py [--runs /tmp/duald-ablation] [--output docs/images/ablation.png]

Layout (no titles in the image; this is the caption):

- row 1: source T1 | real T2 | synthetic T2 of unet | global | local | dual | dual_attention |
  difficulty heatmap 1 − M of dual_attention (inferno, [0, 1]);
- row 2: (empty) | real T2 with the tumour outline | |synthetic − real| of each variant in the same
  order (inferno, [0, ``--error-max``] normalised units) | the heatmap again — all with the tumour
  outline (segmentation > 0) in cyan.

The slice is the axial slice of BraTS-GLI-00001-000 (held out of training by
``experiments/ablation.sh``) with the largest tumour area. Each variant's bundle
``<runs>/<variant>/model-final.safetensors`` synthesises the whole volume through the same engine a
user runs, on the source's grid, exactly as ``duald-evaluate`` does. Errors are in the normalised
units of ``DualDTrainingLib.evaluation``: the real T2 scaled by its own foreground's robust percentile,
the synthetic one by the bundle's reference scale. Grey images are windowed at [p1, p99.5] of their
own values in the brain (the source's foreground mask). Radiological display from the volume
reoriented to LPS: anterior at the top, the patient's left on the right.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from DualDSynthesisLib.imaging.figures import inferno_rgb, write_png
from DualDSynthesisLib.imaging.preprocess import foreground_mask
from DualDSynthesisLib.imaging.scoring import comparable
from DualDSynthesisLib.inference.engine import SynthesisEngine, SynthesisError
from DualDTrainingLib.discovery import DiscoveryError, discover
from DualDTrainingLib.pair_files import load_pair
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "brain-mri"
SUBJECT = "BraTS-GLI-00001-000"
VARIANTS = ("unet", "global", "local", "dual", "dual_attention")
HEATMAP_VARIANT = "dual_attention"
GAP = 4  # pixels between panels
MARGIN = 6  # pixels of background kept around the brain's bounding box
CONTOUR_RGB = (0, 255, 255)
CAPTION = (
    "Row 1: source T1 | real T2 | synthetic T2 from unet | global | local | dual | dual_attention | "
    "difficulty heatmap 1 - M of dual_attention (inferno, 0-1). Row 2: (empty) | real T2 | |synthetic - real| of "
    "each variant in the same order (inferno, 0-{emax:g} normalised units) | the heatmap; tumour outline "
    "(segmentation > 0) in cyan. {subject}, axial slice {k} (largest tumour area), held out of training."
)


def canonical(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS"))


def grey(plane: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """RGB float image windowed at [p1, p99.5] of ``plane`` inside ``brain``."""
    values = plane[brain] if brain.any() else plane.ravel()
    lo, hi = np.percentile(values, (1.0, 99.5))
    g = np.clip((plane - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    return np.repeat(g[..., None], 3, axis=2)


def inferno(plane: np.ndarray, vmax: float) -> np.ndarray:
    lut = inferno_rgb(256)
    return lut[np.clip(np.rint(plane / vmax * 255), 0, 255).astype(np.int64)]


def to_panel(rgb: np.ndarray, box: tuple[slice, slice], zoom: int, outline: np.ndarray | None) -> np.ndarray:
    """Crop, enlarge (nearest neighbour) and mark ``outline`` pixels; uint8 RGB."""
    img = np.rint(rgb[box] * 255).astype(np.uint8)
    img = np.repeat(np.repeat(img, zoom, axis=0), zoom, axis=1)
    if outline is not None:
        img[outline] = CONTOUR_RGB
    return img


def tumour_outline(tumour: np.ndarray, box: tuple[slice, slice], zoom: int) -> np.ndarray:
    """Outline of the tumour mask, ``zoom`` pixels (one voxel) wide at the enlarged resolution."""
    mask = np.repeat(np.repeat(tumour[box], zoom, axis=0), zoom, axis=1)
    return mask & ~ndimage.binary_erosion(mask, iterations=zoom, border_value=0)


def brain_box(brain: np.ndarray) -> tuple[slice, slice]:
    rows, cols = np.flatnonzero(brain.any(axis=1)), np.flatnonzero(brain.any(axis=0))
    if rows.size == 0:
        return slice(None), slice(None)
    return (
        slice(max(0, rows[0] - MARGIN), min(brain.shape[0], rows[-1] + 1 + MARGIN)),
        slice(max(0, cols[0] - MARGIN), min(brain.shape[1], cols[-1] + 1 + MARGIN)),
    )


def compose(rows: list[list[np.ndarray | None]]) -> np.ndarray:
    """A grid of equal-size RGB panels (None = black) with white gaps."""
    h, w = next(p for row in rows for p in row if p is not None).shape[:2]
    out = np.full((len(rows) * (h + GAP) - GAP, len(rows[0]) * (w + GAP) - GAP, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            y, x = r * (h + GAP), c * (w + GAP)
            out[y : y + h, x : x + w] = 0 if panel is None else panel
    return out


def build(args: argparse.Namespace) -> tuple[np.ndarray, str]:
    bundles = {v: args.runs / v / "model-final.safetensors" for v in VARIANTS}
    missing = [str(p) for p in bundles.values() if not p.is_file()]
    if missing:
        raise ValueError(f"model bundle(s) not found: {', '.join(missing)}")
    if not args.data.is_dir():
        raise ValueError(f"{args.data} is missing: the figure needs the shared BraTS data")
    pairs = [p for p in discover(args.data, "t1", "t2").pairs if p.subject == SUBJECT]
    if not pairs:
        raise ValueError(f"no usable T1/T2 pair of {SUBJECT} in {args.data}")
    source_img, real_img, labels_img = load_pair(pairs[0])
    if labels_img is None:
        raise ValueError(f"{SUBJECT} has no segmentation in {args.data}, so no tumour slice can be chosen")

    source, real = canonical(source_img), canonical(real_img)
    tumour_vol = canonical(labels_img) > 0
    area = tumour_vol.sum(axis=(1, 2))
    if area.max() == 0:
        raise ValueError(f"the segmentation of {SUBJECT} is empty, so no tumour slice can be chosen")
    k = int(np.argmax(area))
    brain = foreground_mask(source, "mri_percentile")[k]
    spacing = sitk.DICOMOrient(source_img, "LPS").GetSpacing()
    if abs(spacing[0] - spacing[1]) > 1e-3 * spacing[0]:
        print(f"note: pixels are {spacing[1]:g} x {spacing[0]:g} mm but are drawn square", file=sys.stderr)
    box = brain_box(brain)
    outline = tumour_outline(tumour_vol[k], box, args.zoom)

    synthetic_panels, error_panels, heatmap = [], [], None
    for variant, path in bundles.items():
        t0 = time.perf_counter()
        engine = SynthesisEngine(path, device=args.device)
        result = engine.run(source_img, source_modality="t1", heatmap=variant == HEATMAP_VARIANT)
        synthetic = canonical(result.synthetic)
        pred, ref, *_ = comparable(synthetic, real, source, engine.spec)
        error = np.abs(pred[k] - ref[k])
        print(f"{variant}: {time.perf_counter() - t0:.1f} s, slice MAE in the brain {error[brain].mean():.4f}")
        synthetic_panels.append(to_panel(grey(synthetic[k], brain), box, args.zoom, None))
        error_panels.append(to_panel(inferno(error, args.error_max), box, args.zoom, outline))
        if variant == HEATMAP_VARIANT:
            if result.heatmap is None:
                raise ValueError(f"{path} has no trained local discriminator, so it gives no heatmap")
            heatmap = canonical(result.heatmap)[k]
    heat_rgb = inferno(heatmap, 1.0)
    row1 = [
        to_panel(grey(source[k], brain), box, args.zoom, None),
        to_panel(grey(real[k], brain), box, args.zoom, None),
        *synthetic_panels,
        to_panel(heat_rgb, box, args.zoom, None),
    ]
    row2 = [
        None,
        to_panel(grey(real[k], brain), box, args.zoom, outline),
        *error_panels,
        to_panel(heat_rgb, box, args.zoom, outline),
    ]
    return compose([row1, row2]), CAPTION.format(emax=args.error_max, subject=SUBJECT, k=k)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("/tmp/duald-ablation"), help="ablation.sh's output folder")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "images" / "ablation.png", help="PNG to write")
    parser.add_argument("--data", type=Path, default=DATA, help="BraTS-like folder holding the subject")
    parser.add_argument("--error-max", type=float, default=0.5, help="top of the error colour scale (normalised)")
    parser.add_argument("--zoom", type=int, default=2, help="integer enlargement of each panel")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto, ...")
    args = parser.parse_args(argv)
    try:
        if args.error_max <= 0 or args.zoom < 1:
            raise ValueError("--error-max must be positive and --zoom at least 1")
        figure, caption = build(args)
    except (ValueError, DiscoveryError, SynthesisError) as exc:
        print(f"ablation_figure: error: {exc}", file=sys.stderr)
        return 2
    write_png(figure, args.output)
    print(f"wrote {args.output}\n{caption}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
