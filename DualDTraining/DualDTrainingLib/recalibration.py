"""``duald-train --init-from BUNDLE --recalibrate-only``: the parent's weights unchanged, its expected-error
factor re-fitted on the site's scans, written as a NEW bundle (``OUTPUT/model-recalibrated.safetensors``).

Every subject of ``--data`` is used directly: the weights never saw any of them, so none needs holding out
(``--site-calibration`` does not apply). Each one's ratio of the expected-error map's foreground mean to its
real mean |error| is evidence, and the factor is their geometric mean
(``calibration.ErrorCalibration.from_ratios``), exactly as at the end of a training run. The parent is
loaded, the data read and scored before the output folder is created: a refusal writes nothing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import torch
from DualDSynthesisLib.imaging.bundle import save_bundle

from .config import RunConfig
from .dataset import PreparedSubject
from .discovery import DiscoveryError, discover
from .distributed import resolve_device
from .errors import TrainingError
from .finetune import Parent, calibration_record, load_parent, site_calibration
from .init_from import site_name
from .preparation import prepare_each
from .reporting import say as log_line
from .run_folder import prepare_output
from .site_calibration import DIRECT
from .validation import jsonable_metrics, validate

OUTPUT_NAME = "model-recalibrated.safetensors"


def site_ratios(parent: Parent, subjects: list[PreparedSubject], device: torch.device,
                batch_size: int) -> dict[str, Any]:
    """The parent scored on the site's subjects, as a validation record (per-subject metrics and ratios)."""
    generator = parent.bundle.generator.to(device)
    spec = parent.meta.preprocessing
    mean, per_subject, _ = validate(generator, None, subjects, device, batch_size, False, spec.context_slices,
                                    spec.target, parent.meta.inputs)
    return {"metrics": jsonable_metrics(mean),
            "per_subject": {k: jsonable_metrics(m) for k, m in per_subject.items()}}


def recalibrate_only(cfg: RunConfig, say: Callable[[str], None] | None = None) -> int:
    """Write the parent with its expected-error factor re-fitted on every subject of ``cfg.data``; messages
    go where duald-train's go (stdout in Slicer, else stderr)."""
    say = say or (lambda m: log_line(m, cfg.slicer))
    cfg.check()
    if not cfg.init_from:
        raise TrainingError("--recalibrate-only needs --init-from BUNDLE (the model to recalibrate)")
    parent = load_parent(cfg)
    if not parent.meta.architecture.g_error_head:
        raise TrainingError(f"--init-from {parent.path.name} has no expected-error head, so there is no factor "
                            "to recalibrate")
    try:
        found = discover(cfg.data, cfg.source, cfg.target, cfg.required_sources or None)
    except DiscoveryError as exc:
        raise TrainingError(str(exc)) from None
    for note in found.notes:  # e.g. an optional input left out of a subject
        say(note)
    t0 = time.time()
    subjects, dropped = prepare_each(found.pairs, parent.meta.preprocessing, cfg.workers, parent.meta.inputs.optional,
                                     say)
    for subject, reason in [*((r.subject, r.reason) for r in found.rejected), *dropped]:
        say(f"rejected {subject}: {reason}")
    if not subjects:
        raise TrainingError("no site subject could be prepared (see the rejected lines above)")
    validation = site_ratios(parent, subjects, resolve_device(cfg.device), cfg.batch_size)
    site = site_name(cfg)
    calibration = site_calibration(validation, site, DIRECT)
    if not calibration.calibrated:
        raise TrainingError("no site subject gave a usable expected-error ratio (perfect predictions?), so "
                            "nothing was recalibrated")
    meta = parent.meta
    provenance = {**meta.provenance, "parent": parent.record, "site": site,
                  "recalibration": {"subjects": [s.name for s in subjects], "metrics": validation["metrics"],
                                    "date": time.strftime("%Y-%m-%d")},
                  "site_calibration": calibration_record(calibration, DIRECT)}
    meta = dataclasses.replace(meta, name=f"{meta.name}, recalibrated at {site}", provenance=provenance,
                               error_calibration=calibration, metrics=validation,
                               description=f"{meta.description} Expected error recalibrated at {site} "
                                           f"({calibration.describe()}).".strip())
    prepare_output(cfg.output, False, cfg.overwrite)
    path = save_bundle(cfg.output / OUTPUT_NAME, parent.bundle.generator.cpu(), parent.bundle.local_discriminator,
                       meta, overwrite=True)
    say(f"{calibration.describe()}; in {time.time() - t0:.0f} s: {path}")
    return 0
