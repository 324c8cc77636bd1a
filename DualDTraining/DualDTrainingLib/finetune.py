"""Fine-tuning from a parent bundle (``--init-from``), the torch side: the parent's weights and preprocessing,
one subject's held-out slab, and what the fine-tuned bundle records (its parent, the site, a fingerprint of
the parent's data and the site's, the expected error recalibrated on the site's held-out scans).

The options were checked against the parent before (``init_from.resolve``); here the parent's weights are
loaded, so NaN or truncated weights and an architecture this code cannot build are refused by
``bundle.load_bundle``'s own checks, before the output folder is created.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from DualDSynthesisLib.imaging.bundle import BundleError, BundleMetadata, ModelBundle, load_bundle
from DualDSynthesisLib.imaging.calibration import ErrorCalibration
from DualDSynthesisLib.imaging.fingerprint import FingerprintError, TrainingFingerprint
from DualDSynthesisLib.imaging.preprocess import PreprocessingSpec

from .config import RunConfig
from .dataset import FOREGROUND_MIN_FRACTION, PreparedSubject
from .errors import TrainingError
from .init_from import check_output, parent_record, read_parent, site_name
from .step import DualDTrainer
from .validation import held_out_calibration

SLAB_FRACTION = 0.2  # of one subject's foreground slices, held out for validation and recalibration
SLAB_MIN_SLICES = 3  # the volume SSIM's least depth


@dataclass
class Parent:
    path: Path
    bundle: ModelBundle
    record: dict[str, Any]  # name, file and sha256, for the provenance

    @property
    def meta(self) -> BundleMetadata:
        return self.bundle.metadata


def load_parent(cfg: RunConfig) -> Parent:
    """The parent bundle with its weights (on the CPU); any problem is one TrainingError sentence."""
    path = Path(cfg.init_from).expanduser()
    meta = read_parent(path)
    check_output(cfg, path)
    try:
        bundle = load_bundle(path)
    except BundleError as exc:
        raise TrainingError(f"--init-from: {str(exc).rstrip('.')}") from None
    except (ValueError, RuntimeError) as exc:  # an architecture whose networks this code cannot build
        raise TrainingError(f"--init-from {path.name}: this DualD cannot build the bundle's architecture "
                            f"({str(exc).strip().splitlines()[0]})") from None
    return Parent(path, bundle, parent_record(path, meta))


def parent_spec(parent: Parent, spacing: tuple[float, float]) -> PreprocessingSpec:
    """The parent's preprocessing (its target reference is re-fitted on the site's targets by finish_spec)."""
    return dataclasses.replace(parent.meta.preprocessing, spacing=spacing)


def start_from_parent(trainer: DualDTrainer, parent: Parent) -> str:
    """Copy the parent's G (and D2 when it has one and the variant trains D2) into ``trainer``; a message."""
    trainer.generator.load_state_dict(parent.bundle.generator.state_dict())
    started = ["G"]
    d2 = parent.bundle.local_discriminator
    uses_local = trainer.config.variant.uses_local
    if d2 is not None and uses_local:
        trainer.local.load_state_dict(d2.state_dict())
        started.append("D2")
    fresh = [name for name, used in (("D1", trainer.config.variant.uses_global),
                                     ("D2", uses_local and d2 is None)) if used]
    tail = f"; {' and '.join(fresh)} start afresh (bundles hold no D1)" if fresh else ""
    return f"fine-tuning from {parent.path.name} ({parent.meta.name}): {' and '.join(started)} from it{tail}"


def hold_out_slab(subject: PreparedSubject, context: int) -> tuple[list[PreparedSubject], PreparedSubject | None]:
    """One subject: a contiguous slab in the middle of its foreground slices (``SLAB_FRACTION``) becomes the
    validation subject; the slices below and above it train (as two pieces, so no 2.5-D stack reaches into
    the slab). ``(pieces, None)`` when the subject is too thin to spare a slab."""
    area = subject.foreground.mean(axis=(1, 2))
    rows = np.flatnonzero(area >= FOREGROUND_MIN_FRACTION)
    n = max(SLAB_MIN_SLICES, round(SLAB_FRACTION * len(rows)))
    if len(rows) < n + 2:
        return [subject], None
    a = int(rows[(len(rows) - n) // 2])
    b = a + n

    def part(lo: int, hi: int, name: str) -> PreparedSubject:
        tumour = None if subject.tumour is None else subject.tumour[lo:hi]
        return dataclasses.replace(subject, name=name, source=subject.source[lo:hi], target=subject.target[lo:hi],
                                   foreground=subject.foreground[lo:hi], tumour=tumour,
                                   others={k: v[lo:hi] for k, v in subject.others.items()})

    # the slices next to the slab are left out of training too when 2.5-D stacks would read them
    pieces = [part(lo, hi, subject.name) for lo, hi in ((0, a - context), (b + context, len(area))) if hi > lo]
    if not pieces:
        return [subject], None
    return pieces, part(a, b, f"{subject.name} slices {a}-{b - 1}")


def site_fingerprint(parent: Parent, site: dict[str, Any]) -> dict[str, Any]:
    """The parent's training-data fingerprint merged with the site's (so the out-of-distribution warning
    knows both); {} when the parent recorded none (the site alone would call the parent's own data foreign)."""
    if not parent.meta.fingerprint or not site:
        return {}
    try:
        merged = TrainingFingerprint.from_dict(parent.meta.fingerprint).merged(TrainingFingerprint.from_dict(site))
    except FingerprintError:
        return {}
    return merged.to_dict()


def site_calibration(validation: dict[str, Any] | None, site: str, how: str) -> ErrorCalibration:
    """The expected-error factor from the site's held-out scans (uncalibrated without them)."""
    n = len((validation or {}).get("per_subject", {}))
    return held_out_calibration(validation, f"site recalibration on {n} scan(s) of {site}: {how}")


def calibration_record(calibration: ErrorCalibration, how: str, **more: Any) -> dict[str, Any]:
    """What a site bundle's provenance says about its recalibration: the method and each scan's ratio."""
    return {"method": how, "ratios": dict(calibration.held_out_ratios), **more}


def fine_tuned_metadata(meta: BundleMetadata, parent: Parent, cfg: RunConfig, validation: dict[str, Any] | None,
                        how: str, held_out: dict[str, Any] | None = None) -> BundleMetadata:
    """A run's bundle metadata as a fine-tune of ``parent`` at the site records it. ``held_out``: the
    leave-one-subject-out record (``site_calibration.leave_one_subject_out``), which then is the evidence and
    the metrics, instead of ``validation``."""
    site = site_name(cfg)
    if held_out is not None:
        validation, how = held_out, held_out["method"]
    calibration = site_calibration(validation, site, how)
    models = {"held_out_models": held_out["held_out_models"]} if held_out is not None else {}
    provenance = {**meta.provenance, "parent": parent.record, "site": site,
                  "fine_tuning": {"freeze_encoder": cfg.freeze_encoder, "validation": how},
                  "site_calibration": calibration_record(calibration, how, **models)}
    steps = meta.provenance.get("iterations")
    return dataclasses.replace(
        meta, name=f"{parent.meta.name}, fine-tuned at {site}", provenance=provenance,
        fingerprint=site_fingerprint(parent, meta.fingerprint), error_calibration=calibration,
        metrics=validation or {},
        description=f"Fine-tuned from {parent.record['file']} ({parent.meta.name}) with duald-train on "
                    f"{len(meta.provenance.get('training_subjects', []))} subject(s) of {site} for {steps} "
                    "iterations.")
