"""Tiny generated BraTS-like subjects for the training tests (a few KB each, written as .nii.gz)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
TINY_ARCH_FLAGS = ["--base-width", "4", "--depth", "2", "--d2-base-width", "4"]


def _volume(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t1, t2, seg) arrays [k, j, i]: an ellipsoidal 'head' with smooth texture and a lesion."""
    k, j, i = shape
    zz, yy, xx = np.meshgrid(np.linspace(-1, 1, k), np.linspace(-1, 1, j), np.linspace(-1, 1, i), indexing="ij")
    cx, cy = rng.uniform(-0.1, 0.1, 2)
    head = ((xx - cx) ** 2 / 0.7 + (yy - cy) ** 2 / 0.8 + zz**2 / 1.6) < 1.0
    tissue = 0.55 + 0.3 * np.sin(4 * xx + 3 * yy + rng.uniform(0, 3)) * np.cos(2 * zz)
    lx, ly = rng.uniform(-0.3, 0.3, 2)
    lesion = (((xx - lx) ** 2 + (yy - ly) ** 2 + zz**2 / 2) < 0.06) & head
    t1 = np.where(head, tissue * (1 - 0.5 * lesion), 0.0) * 800
    t2 = np.where(head, (1.1 - tissue) ** 2 + 0.7 * lesion, 0.0) * 1500
    seg = lesion.astype(np.uint8) * 2
    return t1.astype(np.float32), t2.astype(np.float32), seg


def _write(arr: np.ndarray, path: Path, direction: tuple[float, ...] | None = None,
           dtype: int = sitk.sitkInt16) -> None:
    img = sitk.Cast(sitk.GetImageFromArray(arr), dtype)
    img.SetSpacing((1.0, 1.0, 2.0))
    if direction is not None:
        img.SetDirection(direction)
    sitk.WriteImage(img, str(path))


def write_subjects(root: Path, n: int = 3, shape: tuple[int, int, int] = (8, 36, 40), seed: int = 0) -> Path:
    """``n`` subjects in ``root``: alternating BraTS-2023 (``-t1n``/``-t2w``) and TCGA (``_t1_bet``) names,
    a label map for every other subject, and one subject with direction (-1, -1, 1)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for s in range(n):
        t1, t2, seg = _volume(rng, shape)
        if s % 2 == 0:
            name = f"BraTS-GLI-{s:05d}-000"
            files = {"t1": f"{name}-t1n.nii.gz", "t2": f"{name}-t2w.nii.gz", "seg": f"{name}-seg.nii.gz"}
        else:
            name = f"TCGA-DU-{7000 + s}"
            files = {"t1": f"{name}_t1_bet.nii.gz", "t2": f"{name}_t2_bet.nii.gz", "seg": f"{name}_seg_fusion.nii.gz"}
        folder = root / name
        folder.mkdir(exist_ok=True)
        direction = (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0) if s == 1 else None
        _write(t1, folder / files["t1"], direction)
        _write(t2, folder / files["t2"], direction)
        if s % 2 == 0:
            _write(seg, folder / files["seg"], direction, sitk.sitkUInt8)
    return root


def cli_env() -> dict[str, str]:
    """Environment for running the CLI in a subprocess from the source tree."""
    env = dict(os.environ)
    paths = [str(ROOT / "DualDSynthesis"), str(ROOT / "DualDTraining")]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


PYTHON = sys.executable
