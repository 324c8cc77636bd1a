"""Render the README screenshots offscreen through the DualD Synthesis module's own logic.

    .venv/bin/python docs/make_screenshots.py [--model BUNDLE] [--output docs/images]

What a desktop Slicer user sees after clicking **Synthesize**, without a GUI or OpenGL: the real
``DualDSynthesisLogic`` runs the synthesis engine on a real glioma subject's T1
(``../shared/data/brain-mri/BraTS-GLI-00001-000``), puts the synthetic volume and the D2 difficulty
heatmap in an MRML scene (slicer-core) with the module's display settings, and the Red (axial) slice
view is rendered at the slice with the largest tumour area (from the subject's segmentation) through
Slicer's own reslice-and-blend pipeline. Radiological view as in Slicer: anterior at the top, the
patient's left on the right.

Writes into ``--output``: ``source.png`` (T1), ``synthetic.png``, ``overlay.png`` (heatmap over the
synthetic at the module's default opacity and threshold), ``real_t2.png`` (the real T2, for
comparison, when the model's target is a T2) and ``readme_panel.png`` (source | synthetic | overlay).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from DualDSynthesisLib.imaging.defaults import DEFAULT_MODEL
from DualDSynthesisLib.imaging.io import read_volume
from DualDSynthesisLib.scene import display, mrml_io
from DualDSynthesisLib.scene.logic import DisplayOptions, DualDSynthesisLogic

REPO = Path(__file__).resolve().parents[1]

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SUBJECT = "BraTS-GLI-00001-000"
SUBJECT_DIR = DATA / "brain-mri" / SUBJECT
LAYOUT = "Red"
GAP = 8  # transparent pixels between the panel's images


def subject_file(suffix: str) -> Path:
    path = SUBJECT_DIR / f"{SUBJECT}-{suffix}.nii.gz"
    if not path.is_file():
        raise ValueError(f"{path} is missing: the screenshots need the shared BraTS data in {DATA}")
    return path


def largest_tumour_offset(seg: sitk.Image) -> tuple[float, int, int]:
    """(Red-view offset in mm, canonical axial index, tumour voxels) of the axial slice with most tumour.

    The offset is the slice's superior coordinate, which is the same in RAS and LPS, so it is what
    ``vtkMRMLSliceLogic.SetSliceOffset`` takes for an axial view.
    """
    canonical = sitk.DICOMOrient(seg, "LPS")
    area = (sitk.GetArrayViewFromImage(canonical) > 0).sum(axis=(1, 2))
    if area.max() == 0:
        raise ValueError(f"the segmentation of {SUBJECT} is empty, so no tumour slice can be chosen")
    k = int(np.argmax(area))
    return float(canonical.TransformIndexToPhysicalPoint((0, 0, k))[2]), k, int(area[k])


def compose_panel(images: list[np.ndarray], gap: int = GAP) -> np.ndarray:
    """RGBA images side by side (same height) with transparent gaps."""
    spacer = np.zeros((images[0].shape[0], gap, 4), np.uint8)
    parts: list[np.ndarray] = []
    for image in images:
        parts += [image, spacer]
    return np.hstack(parts[:-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model bundle (.safetensors)")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "images", help="folder for the PNGs")
    parser.add_argument("--size", type=int, default=320, help="rendered view size in pixels (square)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto, ...")
    args = parser.parse_args(argv)
    try:
        t1_path, seg_path = subject_file("t1n"), subject_file("seg")
        if not args.model.is_file():
            raise ValueError(f"model bundle {args.model} not found; train one or pass --model")
        run(args, t1_path, seg_path)
    except ValueError as exc:
        print(f"make_screenshots: error: {exc}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace, t1_path: Path, seg_path: Path) -> None:
    offset, k, voxels = largest_tumour_offset(read_volume(seg_path))
    print(f"Red slice: canonical axial index {k} ({voxels} tumour voxels), offset {offset:.1f} mm")

    slicer_app = display.create_headless_slicer()
    scene = slicer_app.scene
    logic = DualDSynthesisLogic(scene=scene, application_logic=slicer_app.application_logic)
    input_node = mrml_io.new_volume_node_from_image(scene, read_volume(t1_path), f"{SUBJECT} T1")

    t0 = time.perf_counter()
    engine = logic.load_engine(args.model, args.device)
    options = DisplayOptions(opacity=0.5, lower_threshold=0.2, background="synthetic")
    outputs = logic.synthesize(input_node, engine, display_options=options)
    print(f"synthesized with {args.model} in {time.perf_counter() - t0:.1f} s")
    for warning in outputs.warnings:
        print(f"engine warning: {warning}")
    if outputs.heatmap_node is None:
        raise ValueError(f"{args.model} has no trained local discriminator, so there is no heatmap to show")

    size = (args.size, args.size)

    def render(name: str, background, foreground=None) -> np.ndarray:
        display.set_slice_view_layers(scene, background, foreground, options.opacity, (LAYOUT,))
        rgba = display.render_slice(scene, LAYOUT, size, offset, slicer_app.application_logic)
        path = display.write_png(rgba, args.output / name)
        print(f"wrote {path}")
        return rgba

    source = render("source.png", input_node)
    synthetic = render("synthetic.png", outputs.synthetic_node)
    overlay = render("overlay.png", outputs.synthetic_node, outputs.heatmap_node)
    if "t2" in (engine.target_modality or "").lower():
        t2_path = SUBJECT_DIR / f"{SUBJECT}-t2w.nii.gz"
        if t2_path.is_file():
            t2_node = mrml_io.new_volume_node_from_image(scene, read_volume(t2_path), f"{SUBJECT} T2")
            render("real_t2.png", t2_node)
    path = display.write_png(compose_panel([source, synthetic, overlay]), args.output / "readme_panel.png")
    print(f"wrote {path} (source T1 | synthetic {engine.target_modality} | heatmap over the synthetic)")


if __name__ == "__main__":
    raise SystemExit(main())
