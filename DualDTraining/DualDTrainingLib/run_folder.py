"""A run's output folder: never clobbered without ``--overwrite``, and gone again when a run that created
it fails before writing a checkpoint or bundle (only rank 0 calls these)."""

from __future__ import annotations

import shutil
from pathlib import Path

from DualDSynthesisLib.imaging.atomic import remove_stale_partials

from . import checkpoint as ckpt
from .errors import TrainingError
from .init_from import OUTPUT_BUNDLES

# What a run writes: --overwrite removes these and nothing else.
ARTEFACTS = ("checkpoint-last.pt", "checkpoint-best.pt", *OUTPUT_BUNDLES, "metrics.jsonl", "run.json")
SITE_CALIBRATION_DIR = "site-calibration"  # a fine-tune's leave-one-subject-out runs (site_calibration.py)
ARTEFACT_DIRS = ("tensorboard", "samples", SITE_CALIBRATION_DIR)


def prepare_output(output: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber a non-empty folder without ``overwrite``; with it, remove only our artefacts."""
    if output.exists() and not output.is_dir():
        raise TrainingError(f"output {output} exists and is not a folder")
    if resume:
        if not (output / ckpt.LAST).is_file():
            raise TrainingError(f"--resume was given but {output} holds no {ckpt.LAST} to resume from")
        remove_stale_partials(output)  # left by a kill during a write; never read
        return
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise TrainingError(f"output folder {output} is not empty; pass --overwrite to replace its training "
                                "files or --resume to continue the run in it")
        for name in ARTEFACTS:
            (output / name).unlink(missing_ok=True)
        for name in ARTEFACT_DIRS:
            shutil.rmtree(output / name, ignore_errors=True)
    output.mkdir(parents=True, exist_ok=True)


def remove_if_only_logs(output: Path) -> None:
    """Remove ``output`` (which this run created) when it holds no checkpoint or bundle: only the run
    record, the log, empty folders — what a run that failed early leaves."""
    if not output.is_dir():
        return
    keep = ("checkpoint-", "model-")
    if any(p.name.startswith(keep) for p in output.iterdir()):
        return
    shutil.rmtree(output, ignore_errors=True)
