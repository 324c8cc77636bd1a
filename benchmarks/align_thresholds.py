"""Measurement (not a test): the input alignment's thresholds and speed on the real brain MRI of ../shared/data.

    .venv/bin/python benchmarks/align_thresholds.py               # every subject; prints one line per pair
    .venv/bin/python benchmarks/align_thresholds.py --json out.json

For each subject, its T1 is the reference and its FLAIR and T2 the inputs:
- ``coregistered``: the input as shipped (the data set's contrasts share one grid): the quick check's
  misalignment score and the similarity at the identity (these must pass without a registration);
- ``moved``: the input moved by a known rigid transform (3–6 mm, 2–5°, seeded) and resampled onto a
  0.9×0.9×3 mm axial grid, as a clinical 2-D series comes: the quick check's score, the registration's time,
  its residual (the centroid's error and the rotation error against the known transform) and the similarity
  after it;
- ``other_patient``: the reference against another subject's FLAIR, registered as if from another frame of
  reference (centroids superposed first): the similarity after registration, which the quality check must refuse.
The thresholds in ``input_alignment`` and ``rigid_registration`` quote these distributions.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "DualDSynthesis")]

from DualDSynthesisLib.imaging import rigid_registration as rr  # noqa: E402
from DualDSynthesisLib.imaging.input_alignment import InputAlignmentError, align_inputs  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "brain-mri"
T1 = ("_t1.", "-t1n.", "-t1.", "_t1_bet.")
FLAIR = ("_flair.", "-t2f.", "-flair.", "_fla_bet.")
T2 = ("_t2.", "-t2w.", "-t2.", "_t2_bet.")


def _find(subject: Path, suffixes: tuple[str, ...]) -> Path:
    return next(p for p in sorted(subject.iterdir()) if any(s in p.name for s in suffixes))


def _clinical_grid(image: sitk.Image) -> sitk.Image:
    """A 0.9×0.9×3 mm grid over ``image``'s field, in its orientation (an empty image to resample onto)."""
    spacing = (0.9, 0.9, 3.0)
    size = [max(1, math.floor(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing, strict=True)]
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing(spacing)
    grid.SetOrigin(image.GetOrigin())
    grid.SetDirection(image.GetDirection())
    return grid


def _known_motion(center: tuple[float, float, float], rng: np.random.Generator) -> sitk.Euler3DTransform:
    t = sitk.Euler3DTransform()
    t.SetCenter(center)
    direction = rng.normal(size=3)
    t.SetTranslation(tuple(direction / np.linalg.norm(direction) * rng.uniform(3, 6)))
    axis = rng.normal(size=3)
    t.SetRotation(*(axis / np.linalg.norm(axis) * math.radians(rng.uniform(2, 5))))
    return t


def residual(found: sitk.Euler3DTransform, truth: sitk.Euler3DTransform) -> tuple[float, float]:
    """The centroid's error (mm) and the rotation angle between ``found`` and ``truth`` (degrees)."""
    center = found.GetCenter()
    shift = float(np.linalg.norm(np.subtract(found.TransformPoint(center), truth.TransformPoint(center))))
    r = np.array(truth.GetMatrix()).reshape(3, 3).T @ np.array(found.GetMatrix()).reshape(3, 3)
    return shift, math.degrees(math.acos(float(np.clip((np.trace(r) - 1) / 2, -1, 1))))


def _coregistered(name: str, ref: sitk.Image, moving: sitk.Image) -> dict:
    start = time.perf_counter()
    pair = rr.Pair(ref, moving)
    score = rr.misalignment(pair)
    check_s = time.perf_counter() - start
    sim = rr.similarity(pair, None)
    optimum = rr.motion(rr.register(pair))  # where mutual information peaks: the pair's own residual
    return {"case": "coregistered", "pair": name, "misalignment": score, "check_s": check_s,
            "optimum_mm": optimum.shift_mm, "optimum_deg": optimum.rotation_deg, **vars(sim), **_outcome(ref, moving)}


def _moved(name: str, ref: sitk.Image, moving: sitk.Image, rng: np.random.Generator) -> dict:
    truth = _known_motion(rr.Pair(ref, moving).center, rng)
    clinical = sitk.Resample(moving, _clinical_grid(moving), truth.GetInverse(), sitk.sitkLinear, 0.0,
                             sitk.sitkFloat32)
    start = time.perf_counter()
    pair = rr.Pair(ref, clinical)
    score = rr.misalignment(pair)
    found = rr.register(pair)
    seconds = time.perf_counter() - start
    shift, angle = residual(found, truth)
    sim = rr.similarity(pair, found)
    return {"case": "moved", "pair": name, "misalignment": score, "register_s": seconds, "residual_mm": shift,
            "residual_deg": angle, **vars(sim), **_outcome(ref, clinical)}


def _other(name: str, ref: sitk.Image, moving: sitk.Image) -> dict:
    start = time.perf_counter()
    pair = rr.Pair(ref, moving)
    found = rr.register(pair, same_frame=False)
    seconds = time.perf_counter() - start
    sim = rr.similarity(pair, found)
    return {"case": "other_patient", "pair": name, "register_s": seconds, **vars(sim), **_outcome(ref, moving)}


def _outcome(ref: sitk.Image, moving: sitk.Image) -> dict:
    """What ``align_inputs`` does with the pair (NIfTI: no frames of reference), and its time."""
    start, cpu = time.perf_counter(), time.process_time()
    try:
        note = align_inputs("t1", {"t1": ref, "input": moving})["input"].note
    except InputAlignmentError as exc:
        note = f"refused: {exc}"
    # CPU time (both ITK threads) is less disturbed than wall time by other work on a shared machine
    return {"align_inputs_s": time.perf_counter() - start, "align_inputs_cpu_s": time.process_time() - cpu,
            "note": note}


def summary(rows: list[dict]) -> None:
    """Each measure's range per case, and how many pairs align_inputs refused."""
    for case in ("coregistered", "moved", "other_patient"):
        picked = [r for r in rows if r["case"] == case]
        ranges = {k: (min(r[k] for r in picked), float(np.median([r[k] for r in picked])), max(r[k] for r in picked))
                  for k, v in picked[0].items() if isinstance(v, float)}
        refused = sum(r["note"].startswith("refused") for r in picked)
        print(f"{case} ({len(picked)} pairs, {refused} refused): " + ", ".join(
            f"{k} {lo:.3f}–{hi:.3f} (median {mid:.3f})" for k, (lo, mid, hi) in ranges.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--summary", type=Path, help="only print the summary of an earlier --json")
    args = parser.parse_args()
    if args.summary:
        summary(json.loads(args.summary.read_text()))
        return
    if not DATA.is_dir():
        sys.exit(f"no data at {DATA}")
    rng = np.random.default_rng(7)
    subjects = sorted(p for p in DATA.iterdir() if p.is_dir())
    read = lambda p: sitk.ReadImage(str(p), sitk.sitkFloat32)  # noqa: E731
    rows = []
    for s in subjects:
        ref = read(_find(s, T1))
        for suffixes, label in ((FLAIR, "flair"), (T2, "t2")):
            moving = read(_find(s, suffixes))
            rows.append(_coregistered(f"{s.name} t1/{label}", ref, moving))
            rows.append(_moved(f"{s.name} t1/{label}", ref, moving, rng))
            print(json.dumps(rows[-2]), json.dumps(rows[-1]), sep="\n", flush=True)
        for other in subjects:
            if other != s:
                rows.append(_other(f"{s.name} t1/{other.name} flair", ref, read(_find(other, FLAIR))))
                print(json.dumps(rows[-1]), flush=True)
    summary(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
