"""What a checkpoint carries so that a resumed run continues exactly, and putting it back: the options
that must not change, the learning rates (the command line's win) and every random stream (the host
sampler's, the augmentation's and the device sampler's) of each rank."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import checkpoint as ckpt
from .augment import SourceAugmentation
from .config import RunConfig
from .dataset import SliceSampler
from .device_sampler import DeviceSliceSampler
from .errors import TrainingError
from .step import DualDTrainer

# Options a checkpoint fixes: its weights or its prepared data would not fit other values.
FIXED_ON_RESUME = ("variant", "base_width", "depth", "d2_base_width", "source", "required_sources", "target",
                   "source_norm", "context_slices", "error_head", "d2_head", "freeze_encoder", "site_calibration")


def check_resume(saved: dict[str, Any], cfg: RunConfig) -> None:
    """Refuse to resume a checkpoint (its ``run`` record ``saved``) with other values of ``FIXED_ON_RESUME``."""
    for key in FIXED_ON_RESUME:
        if key in saved and saved[key] != getattr(cfg, key):
            raise TrainingError(f"cannot resume: the checkpoint was trained with --{key.replace('_', '-')} "
                                f"{saved[key]}, not {getattr(cfg, key)}")


def set_learning_rates(trainer: DualDTrainer, cfg: RunConfig) -> None:
    """The command line's rates win over the checkpoint's (e.g. lower after a NaN)."""
    lrs = {"generator": cfg.lr_g, "critic": cfg.lr_d1, "local": cfg.lr_d2}
    for name, opt in trainer.optimizers().items():
        for group in opt.param_groups:
            group["lr"] = lrs[name]


def capture_streams(sampler_rng: np.random.Generator, augment: SourceAugmentation,
                    sampler: SliceSampler | DeviceSliceSampler) -> dict[str, Any]:
    """This rank's random streams, for the checkpoint."""
    state = {**ckpt.capture_rng(sampler_rng), "augment": augment.rng_state()}
    if isinstance(sampler, DeviceSliceSampler):
        state["device_sampler"] = sampler.rng_state().cpu()
    return state


def restore_streams(saved: list[dict[str, Any]], rank: int, world_size: int, sampler_rng: np.random.Generator,
                    augment: SourceAugmentation, sampler: SliceSampler | DeviceSliceSampler,
                    reseed: list[int]) -> str | None:
    """Put back rank ``rank``'s streams of ``saved`` (every rank's, as :func:`capture_streams` gave them);
    with another number of ranks the host sampler is re-seeded from ``reseed``. Returns a note for the
    user when a stream could not be restored, else None."""
    if len(saved) != world_size:
        sampler_rng.bit_generator.state = np.random.default_rng(reseed).bit_generator.state
        return (f"note: the checkpoint was written by {len(saved)} rank(s), this run has {world_size}: "
                "sampling is re-seeded")
    mine = saved[rank]
    ckpt.restore_rng(mine, sampler_rng)
    if "augment" in mine:
        augment.set_rng_state(mine["augment"])
    if isinstance(sampler, DeviceSliceSampler):
        if "device_sampler" not in mine:
            return "note: the checkpoint was written with the host sampler: device sampling is re-seeded"
        sampler.set_rng_state(mine["device_sampler"])
    return None
