"""The prepared arrays of the LOSO experiments: ``loso.py prepare`` writes them, every LOSO script reads them.

Every subject is read and prepared exactly as ``duald-train`` does (canonical orientation, 1 mm in-plane, T1
and T2 normalised by their foreground 99.5th percentile), then stored quantised to uint8 in one compressed
``.npz`` (~15 MB for 8 subjects), so the GPU machine needs no NIfTI reading and no ../shared data.
``training_subject`` turns a loaded subject into the ``PreparedSubject`` the trainer and the scoring take, under
any ``--source-norm`` (recomputed through raw units).

For the multi-input models (issue 23) every further contrast a subject has is stored too, on the T1's
prepared grid as ``duald-train --source t1,…`` resamples it: T1c, FLAIR and T2 as inputs (normalised like a
source) and FLAIR as a second target (normalised like a target, with its own foreground), so one file serves
``t1[,t1c,flair] → t2`` and ``t1[,t1c,t2] → flair``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
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
# (inputs, target) of the two preparations per subject: T1 is the reference grid of both
SIDES = (("t1,t1c,flair", "t2"), ("t1,t2", "flair"))


def _quantise(a: np.ndarray) -> np.ndarray:
    return np.round(np.clip(a, 0, Q_RANGE) * (255 / Q_RANGE)).astype(np.uint8)


def prepare(args: argparse.Namespace) -> None:
    from DualDTrainingLib.dataset import base_spec, prepare_subject
    from DualDTrainingLib.discovery import discover

    sources = read_sources(args.sources)
    spec = base_spec("mri", (args.spacing, args.spacing), 16)
    t2_side, flair_side = ({p.subject: p for p in discover(Path(args.data), *side).pairs} for side in SIDES)
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {"subjects": {}, "spacing": args.spacing}
    for name, pair in t2_side.items():
        if name not in sources:
            print(f"skip {name}: not in {Path(args.sources).name}", file=sys.stderr)
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
            "stats": dataclasses.asdict(s.source_stats), "others": {}, "targets": {},
        }
        _store_others(s, arrays, meta["subjects"][s.name])
        if name in flair_side:
            f = prepare_subject(flair_side[name], spec)
            if f.source.shape != s.source.shape:
                raise SystemExit(f"{name}: the FLAIR-target preparation has another grid ({f.source.shape})")
            _store_others(f, arrays, meta["subjects"][s.name])
            arrays[f"{s.name}/target.flair"] = _quantise(f.target)
            arrays[f"{s.name}/foreground.flair"] = np.packbits(f.foreground)
            meta["subjects"][s.name]["targets"]["flair"] = {"scale": f.target_params.scale}
        print(f"{s.name}: {s.source.shape}, inputs t1 {' '.join(meta['subjects'][s.name]['others'])} "
              f"in {time.time() - t0:.1f} s", file=sys.stderr)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.1f} MB)", file=sys.stderr)


def _store_others(s, arrays: dict[str, np.ndarray], info: dict[str, Any]) -> None:
    """A prepared subject's further inputs (source-normalised, on its T1's grid) and their statistics."""
    for contrast, slices in s.others.items():
        arrays[f"{s.name}/input.{contrast}"] = _quantise(slices)
        info["others"][contrast] = dataclasses.asdict(s.other_stats[contrast])


@dataclass
class Loaded:
    name: str
    source: np.ndarray  # float32 [K, H, W], p99.5-normalised
    target: np.ndarray
    foreground: np.ndarray
    tumour: np.ndarray | None
    info: dict
    # further inputs (contrast → source-normalised [K, H, W]) and targets (contrast → (target, foreground))
    others: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    targets: dict[str, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)


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
        others = {c: _unquantise(data[f"{name}/input.{c}"]) for c in info.get("others", {})}
        targets = {c: (_unquantise(data[f"{name}/target.{c}"]), _unpack(data[f"{name}/foreground.{c}"], shape))
                   for c in info.get("targets", {})}
        out[name] = Loaded(name, _unquantise(data[f"{name}/source"]), _unquantise(data[f"{name}/target"]),
                           _unpack(data[f"{name}/foreground"], shape), tumour, info, others, targets)
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


def training_subject(loaded: Loaded, norm: str, half: bool = False, inputs: Sequence[str] = ("t1",),
                     target: str = "t2"):
    """A prepared subject for training or scoring; ``half``: its slices as float16 (a device sampler's input).
    ``inputs``: a multi-input model's contrasts (T1 first; the subject's others it has are attached) and
    ``target`` its target contrast (``t2`` or one stored by ``prepare`` as a target)."""
    from DualDSynthesisLib.imaging.fingerprint import VolumeStats
    from DualDSynthesisLib.imaging.preprocess import Grid, RestoreContext
    from DualDSynthesisLib.model.intensity import ScaleParams
    from DualDTrainingLib.dataset import PreparedSubject

    if inputs[0] != "t1":
        raise ValueError(f"the prepared arrays' reference input is t1, not {inputs[0]}")
    k, h, w = loaded.source.shape
    grid = Grid((w, h, k), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    context = RestoreContext(grid, "LPS", "float", grid, grid, (False,) * 3, (0, 1, 2),
                             tuple(loaded.info["crop"]), (k, h, w))
    source, source_params = _renormalise(loaded.source, loaded.info["source_scale"], norm)
    # The further inputs are renormalised from their p99.5-normalised values: every source mapping is
    # invariant to a volume's scale (its foreground threshold too), so their raw scale is not needed.
    others = {c: _renormalise(loaded.others[c], 1.0, norm)[0] for c in inputs[1:] if c in loaded.others}
    other_stats = {c: _stats(VolumeStats, loaded.info["others"][c]) for c in others}
    if target == "t2":
        tgt, foreground, scale = loaded.target, loaded.foreground, loaded.info["target_scale"]
    else:
        if target not in loaded.targets:
            raise ValueError(f"{loaded.name}: no {target} target in the prepared arrays")
        (tgt, foreground), scale = loaded.targets[target], loaded.info["targets"][target]["scale"]
    if half:
        source, tgt = source.astype(np.float16), tgt.astype(np.float16)
        others = {c: v.astype(np.float16) for c, v in others.items()}
    return PreparedSubject(loaded.name, source, tgt, foreground, loaded.tumour, source_params, ScaleParams(scale),
                           context, _stats(VolumeStats, loaded.info["stats"]), others, other_stats)


def _stats(cls, d: dict[str, Any]):
    """A stored ``VolumeStats`` (JSON lists back to tuples)."""
    return cls(**{k: tuple(x) if isinstance(x, list) else x for k, x in d.items()})
