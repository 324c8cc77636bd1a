"""Training checkpoints: the full state, written atomically, read back with ``weights_only=True``.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python values (dicts, lists,
str, int, float, bool, None) so ``torch.load(..., weights_only=True)`` accepts it and never runs
pickled code: network and optimiser state dicts, the step, the RNG states of python/numpy/torch/CUDA
(of every rank, so each rank resumes its own sampling stream), the preprocessing spec and the run's
settings as JSON strings, and the best validation result so far.

Writes go through ``atomic.atomic_write`` (temporary file in the same folder, fsync, read-back of the
zip directory, rename): a crash, SIGKILL or full disk mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from DualDSynthesisLib.core.errors import DualDError
from DualDSynthesisLib.imaging.atomic import atomic_write, zip_problem

from .step import DualDTrainer

CHECKPOINT_FORMAT = 1
LAST = "checkpoint-last.pt"
BEST = "checkpoint-best.pt"


class CheckpointError(DualDError):
    """A checkpoint that cannot be used to resume (the message is one sentence)."""


# ----------------------------------------------------------------------------- RNG states


def capture_rng(sampler: np.random.Generator) -> dict[str, Any]:
    """RNG states as tensors/plain types. Big integers (PCG64 state) travel as decimal strings."""
    version, mt, gauss = random.getstate()
    legacy = np.random.get_state()
    state: dict[str, Any] = {
        "python": [int(version), torch.tensor(mt, dtype=torch.int64), gauss],
        "numpy_legacy": [legacy[0], torch.from_numpy(np.asarray(legacy[1], dtype=np.int64)), int(legacy[2]),
                         int(legacy[3]), float(legacy[4])],
        "sampler": json.dumps(sampler.bit_generator.state, default=str),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any], sampler: np.random.Generator) -> None:
    version, mt, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in mt.tolist()), gauss))
    name, keys, pos, has_gauss, cached = state["numpy_legacy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    bit_state = json.loads(state["sampler"])
    inner = bit_state.get("state", {})
    for key in ("state", "inc"):
        if key in inner:
            inner[key] = int(inner[key])
    sampler.bit_generator.state = bit_state
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ----------------------------------------------------------------------------- save / load


def _cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu")
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def save_checkpoint(
    path: Path,
    trainer: DualDTrainer,
    rng_states: list[dict[str, Any]],
    preprocessing: dict[str, Any],
    run: dict[str, Any],
    best: dict[str, Any] | None,
) -> Path:
    """Write the full training state to ``path`` atomically; returns ``path``."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "step": int(trainer.step_count),
        "networks": {k: _cpu(m.state_dict()) for k, m in trainer.networks().items()},
        "optimizers": {k: _cpu(o.state_dict()) for k, o in trainer.optimizers().items()},
        "rng": rng_states,
        "preprocessing": json.dumps(preprocessing),
        "run": json.dumps(run, default=str),
        "best": json.dumps(best),
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp), zip_problem)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint (``weights_only=True``) and decode its JSON parts."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint to resume from at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises several types for damaged/unsafe files
        # torch's own message advises weights_only=False, the unsafe path: never quote it.
        raise CheckpointError(f"{path} is not a training checkpoint of this project (or it is damaged)") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a training checkpoint of this project (or it is damaged)")
    state["preprocessing"] = json.loads(state["preprocessing"])
    state["run"] = json.loads(state["run"])
    state["best"] = json.loads(state["best"])
    return state


def apply_checkpoint(trainer: DualDTrainer, state: dict[str, Any]) -> None:
    """Load networks and optimisers into ``trainer`` and set its step count."""
    for name, module in trainer.networks().items():
        module.load_state_dict(state["networks"][name])
    optimizers = trainer.optimizers()
    missing = sorted(set(optimizers) - set(state["optimizers"]))
    if missing:
        raise CheckpointError(f"the checkpoint has no optimiser state for {', '.join(missing)}")
    for name, opt in optimizers.items():
        opt.load_state_dict(state["optimizers"][name])
    trainer.step_count = int(state["step"])
