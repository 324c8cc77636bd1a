"""The prepared arrays of the LOSO experiments: ``loso.py prepare`` writes them, every LOSO script reads them.

Every subject is read and prepared exactly as ``duald-train`` does (canonical orientation, 1 mm in-plane, T1
and T2 normalised by their foreground 99.5th percentile), then stored quantised to uint8 in one compressed
``.npz`` (~15 MB for 8 subjects), so the GPU machine needs no NIfTI reading and no ../shared data.
``training_subject`` turns a loaded subject into the ``PreparedSubject`` the trainer and the scoring take, under
any ``--source-norm`` (recomputed through raw units).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "DualDSynthesis"), str(ROOT / "DualDTraining"), str(ROOT / "experiments")]
import sitk_stub  # noqa: E402

sitk_stub.install_if_missing()

from folds import read_sources  # noqa: E402

Q_RANGE = 2.0  # normalised intensities are stored as uint8 over [0, 2] (the p99.5 mapping's clip range)


def _quantise(a: np.ndarray) -> np.ndarray:
    return np.round(np.clip(a, 0, Q_RANGE) * (255 / Q_RANGE)).astype(np.uint8)


def prepare(args: argparse.Namespace) -> None:
    from DualDTrainingLib.dataset import base_spec, prepare_subject
    from DualDTrainingLib.discovery import discover

    sources = read_sources(args.sources)
    found = discover(Path(args.data), "t1", "t2")
    spec = base_spec("mri", (args.spacing, args.spacing), 16)
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {"subjects": {}, "spacing": args.spacing}
    for pair in found.pairs:
        if pair.subject not in sources:
            print(f"skip {pair.subject}: not in {Path(args.sources).name}", file=sys.stderr)
            continue
        t0 = time.time()
        s = prepare_subject(pair, spec)
        arrays[f"{s.name}/source"] = _quantise(s.source)
        arrays[f"{s.name}/target"] = _quantise(s.target)
        arrays[f"{s.name}/foreground"] = np.packbits(s.foreground)
        if s.tumour is not None:
            arrays[f"{s.name}/tumour"] = np.packbits(s.tumour)
        meta["subjects"][s.name] = {
            "source": sources[s.name], "shape": list(s.source.shape), "crop": list(s.context.crop),
            "source_scale": s.source_params.scale, "target_scale": s.target_params.scale,
            "slice_spacing": s.context.prepared.spacing[2], "tumour": s.tumour is not None,
            "stats": dataclasses.asdict(s.source_stats),
        }
        print(f"{s.name}: {s.source.shape} in {time.time() - t0:.1f} s", file=sys.stderr)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.1f} MB)", file=sys.stderr)


@dataclass
class Loaded:
    name: str
    source: np.ndarray  # float32 [K, H, W], p99.5-normalised
    target: np.ndarray
    foreground: np.ndarray
    tumour: np.ndarray | None
    info: dict


def _unquantise(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32) * np.float32(Q_RANGE / 255)


def _unpack(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.unpackbits(a, count=int(np.prod(shape))).reshape(shape).astype(bool)


def prepared_meta(path: str | Path) -> dict[str, Any]:
    """The prepared file's metadata (subjects, their sources, shapes and statistics) without its arrays."""
    return json.loads(bytes(np.load(path)["meta"]).decode())


def load_prepared(path: str | Path, names: list[str] | None = None) -> dict[str, Loaded]:
    data = np.load(path)
    meta = json.loads(bytes(data["meta"]).decode())
    out = {}
    for name, info in meta["subjects"].items():
        if names is not None and name not in names:
            continue
        shape = tuple(info["shape"])
        tumour = _unpack(data[f"{name}/tumour"], shape) if info["tumour"] else None
        out[name] = Loaded(name, _unquantise(data[f"{name}/source"]), _unquantise(data[f"{name}/target"]),
                           _unpack(data[f"{name}/foreground"], shape), tumour, info)
    return out


def _renormalise(source: np.ndarray, scale: float, norm: str):
    """The stored p99.5-normalised source under another ``--source-norm`` (through raw units), and the
    source mapping's parameters for it."""
    from DualDSynthesisLib.model.intensity import ScaleParams, source_mapping

    if norm == "p99.5":
        return source, ScaleParams(scale)
    mapping = source_mapping(norm)
    raw = source * np.float32(scale)
    params = mapping.fit(raw)
    return mapping.forward(raw, params), params


def training_subject(loaded: Loaded, norm: str, half: bool = False):
    """A prepared subject for training or scoring; ``half``: its slices as float16 (a device sampler's input)."""
    from DualDSynthesisLib.imaging.preprocess import Grid, RestoreContext
    from DualDSynthesisLib.model.intensity import ScaleParams
    from DualDTrainingLib.dataset import PreparedSubject

    k, h, w = loaded.source.shape
    grid = Grid((w, h, k), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    context = RestoreContext(grid, "LPS", "float", grid, grid, (False,) * 3, (0, 1, 2),
                             tuple(loaded.info["crop"]), (k, h, w))
    source, source_params = _renormalise(loaded.source, loaded.info["source_scale"], norm)
    target = loaded.target
    if half:
        source, target = source.astype(np.float16), target.astype(np.float16)
    return PreparedSubject(loaded.name, source, target, loaded.foreground, loaded.tumour, source_params,
                           ScaleParams(loaded.info["target_scale"]), context)
