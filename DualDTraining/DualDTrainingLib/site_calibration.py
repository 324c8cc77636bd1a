"""Which site scans a fine-tune (``--init-from``) re-fits its expected-error factor on (``--site-calibration``),
and the leave-one-subject-out fine-tunes that give that evidence.

- ``slab`` (auto with one site subject): a contiguous slab of each subject's slices is held out of training
  (``finetune.hold_out_slab``) and the factor is fitted on the slabs.
- ``loso`` (auto with 2 to ``LOSO_MOST_SUBJECTS`` site subjects): for each site subject one more fine-tune, with
  the run's settings, on the others predicts it; the held-out subjects' ratios are fitted with the one fit
  (``calibration.ErrorCalibration.from_ratios`` through ``validation.held_out_calibration``), and the final
  model, trained on every site subject, gets that factor. The fold runs live in ``OUTPUT/site-calibration/``
  (each its bundle, log and samples: the evidence can be re-scored); ``--resume`` reuses the ones that
  finished with the same ``--iterations``.
- ``validation``: the validation subjects (``--val-subjects``, the data's split, else the last) are held out of
  fine-tuning, as in a run from scratch.

``--recalibrate-only`` trains nothing, so it needs none of these: every site subject is evidence
(``recalibration.py``, :data:`DIRECT`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from DualDSynthesisLib.imaging.bundle import read_metadata

from .config import LOSO_MOST_SUBJECTS, RunConfig
from .dataset import TEST_SPLITS, VAL_SPLITS, PreparedSubject, choose_splits
from .distributed import DistContext, on_main
from .errors import TrainingError, TrainingStopped
from .finetune import hold_out_slab
from .run_folder import SITE_CALIBRATION_DIR
from .validation import average, jsonable_metrics

LOSO, VALIDATION, SLAB = "loso", "validation", "slab"
FOLD_LEFTOVERS = ("checkpoint-last.pt", "checkpoint-best.pt", "model-best.safetensors")  # removed after a fold
DIRECT = "every site subject directly (the weights never saw them, so none needs holding out; no training)"
VALIDATION_NOTE = "the validation subject(s), held out of fine-tuning (not leave-one-subject-out)"


def loso_note(n: int) -> str:
    """How a leave-one-subject-out factor was found, for the evidence and the provenance."""
    return f"leave-one-subject-out over {n} site subjects, each predicted by a fine-tune on the others"


def _usable(pairs: Sequence[Any]) -> list[Any]:
    return [p for p in pairs if (p.split or "").lower() not in TEST_SPLITS]


def site_method(cfg: RunConfig, pairs: Sequence[Any]) -> str | None:
    """``cfg.site_calibration`` with auto decided for these site pairs; None when ``cfg`` is no fine-tune. A
    method the data cannot support is refused in one sentence."""
    if not cfg.init_from:
        return None
    usable = _usable(pairs)
    n, method = len(usable), cfg.site_calibration
    if method == "auto":
        named = cfg.val_subjects or any((p.split or "").lower() in VAL_SPLITS for p in usable)
        method = VALIDATION if named or n > LOSO_MOST_SUBJECTS else SLAB if n <= 1 else LOSO
    if method in (LOSO, VALIDATION) and n < 2:
        raise TrainingError(f"--site-calibration {method} needs two or more site subjects, found {n}: with one, "
                            "use slab (a slab of its slices is held out)")
    if method in (LOSO, SLAB) and cfg.val_subjects:
        raise TrainingError(f"--val-subjects holds subjects out of fine-tuning, but --site-calibration {method} "
                            "trains on every site subject: leave --val-subjects out or use --site-calibration "
                            "validation")
    return method


def split_subjects(cfg: RunConfig, pairs: Sequence[Any]) -> tuple[list[Any], list[Any], str | None]:
    """(training pairs, validation pairs, the site calibration method or None): loso and slab train on every
    usable site subject; otherwise ``dataset.choose_splits``."""
    method = site_method(cfg, pairs)
    if method in (LOSO, SLAB):
        if not _usable(pairs):
            raise TrainingError("every site subject is in the test split; nothing is left to fine-tune on")
        return _usable(pairs), [], method
    train, val = choose_splits(pairs, cfg.val_subjects)
    return train, val, method


def hold_out(method: str | None, subjects: list[PreparedSubject],
             context: int) -> tuple[list[PreparedSubject], list[PreparedSubject], str]:
    """(training pieces, held-out slabs, how the held-out scans were chosen) for ``method``: only slab
    changes the subjects. ``context``: the 2.5-D context slices (kept off the slab's edges)."""
    if method is None:
        return subjects, [], "validation subjects"
    if method == LOSO:
        return subjects, [], loso_note(len(subjects))
    if method == VALIDATION:
        return subjects, [], VALIDATION_NOTE
    pieces: list[PreparedSubject] = []
    slabs: list[PreparedSubject] = []
    for subject in subjects:
        kept, slab = hold_out_slab(subject, context)
        pieces += kept
        slabs += [slab] if slab is not None else []
    whose = "the one subject" if len(subjects) == 1 else "each subject"
    if not slabs:
        return pieces, [], f"none: {whose} is too thin to spare slices"
    return pieces, slabs, f"held-out slices of {whose} ({', '.join(s.name for s in slabs)}), never sampled for training"


def fold_config(cfg: RunConfig, i: int, held_out: str) -> RunConfig:
    """The ``i``-th fine-tune, which holds out site subject ``held_out``: the run's settings, the others for
    training, in ``OUTPUT/site-calibration/<i>-<subject>`` (a manifest's subject id may hold any character)."""
    folder = f"{i}-{re.sub(r'[^A-Za-z0-9._-]+', '_', held_out)}"
    return dataclasses.replace(cfg, output=cfg.output / SITE_CALIBRATION_DIR / folder, val_subjects=[held_out],
                               site_calibration=VALIDATION, overwrite=True, resume=False)


def plan_text(cfg: RunConfig, names: Sequence[str]) -> str:
    n = len(names)
    return (f"leave-one-subject-out: {n} extra fine-tunes of {cfg.iterations} steps (each on {n - 1} subject(s), "
            f"about as long as the final one) before the final one on all {n}; --site-calibration validation "
            "skips them (and holds a subject out of training instead)")


def leave_one_subject_out(cfg: RunConfig, ctx: DistContext, names: Sequence[str],
                          run_fold: Callable[[RunConfig], None], say: Callable[[str], None]) -> dict[str, Any]:
    """Run (or, with ``--resume``, reuse) one fold per site subject in ``names``; the held-out record: each
    subject's metrics from the fine-tune that never saw it (``per_subject``, with its expected-error ratio),
    their mean, the method and where the fold models are. ``run_fold``: trains one fold's RunConfig in every
    rank of ``ctx``; only rank 0 reads and writes the fold folders."""
    if len(names) < 2:
        raise TrainingError(f"leave-one-subject-out needs two or more site subjects, but only {len(names)} could "
                            "be prepared (see the rejected lines above): use --site-calibration slab")
    say(plan_text(cfg, names))
    per_subject: dict[str, Any] = {}
    models: dict[str, str] = {}
    for i, name in enumerate(names, 1):
        fold = fold_config(cfg, i, name)
        bundle = fold.output / "model-final.safetensors"
        if not on_main(ctx, lambda b=bundle: _reusable(b, cfg)):
            say(f"leave-one-subject-out {i}/{len(names)}: fine-tuning without {name}, then predicting it")
            _run_one(fold, name, run_fold, ctx.is_main)
        per_subject[name] = on_main(ctx, lambda b=bundle, n=name: _held_out_metrics(b, n))
        models[name] = bundle.relative_to(cfg.output).as_posix()
    mean = average({k: {m: v for m, v in d.items() if isinstance(v, float)} for k, d in per_subject.items()})
    return {"method": loso_note(len(names)), "per_subject": per_subject, "metrics": jsonable_metrics(mean),
            "held_out_models": models}


def _run_one(fold: RunConfig, name: str, run_fold: Callable[[RunConfig], None], main: bool) -> None:
    try:
        run_fold(fold)
    except TrainingStopped as exc:
        raise TrainingStopped(f"stopped during the leave-one-subject-out fine-tune without {name} ({exc}); the "
                              "final model was not trained yet: run the command again with --overwrite",
                              exc.exit_code) from None
    for leftover in FOLD_LEFTOVERS if main else ():  # the fold's bundle is the evidence; the rest is bulk
        (fold.output / leftover).unlink(missing_ok=True)


def _reusable(bundle: Path, cfg: RunConfig) -> bool:
    """With --resume, a fold that finished with this run's --iterations is not trained again."""
    return cfg.resume and bundle.is_file() and read_metadata(bundle).provenance.get("iterations") == cfg.iterations


def _held_out_metrics(bundle: Path, name: str) -> dict[str, Any]:
    held = read_metadata(bundle).metrics.get("per_subject", {})
    if name not in held:
        raise TrainingError(f"the leave-one-subject-out model {bundle} holds no validation of {name}: run again "
                            "with --overwrite")
    return held[name]
