"""Validation on held-out subjects: the generator over every slice, metrics in normalised units.

Metrics come from :mod:`DualDSynthesisLib.model.metrics` (PSNR, MAE, SSIM from scikit-image) and are
computed on the prepared volume with the slice padding cropped away, in the *normalised* intensity
space the networks see: PSNR uses the target mapping's ``data_range`` (``IntensityMapping.data_range``,
1.0 for every mapping: MRI is scaled so e.g. the foreground's 99.5th percentile is 1, CT maps
[-1024, 3071] HU to [0, 1]); MAE is in the same normalised units (×4095 gives HU for CT). Each metric
is reported over the whole volume (``_volume``), the foreground (``_foreground``: source ∪ target
foreground) and, when the subject has a label mask, inside the tumour (``_tumour``: label > 0). Masked
SSIM averages the full SSIM map inside the mask (one map per volume, shared by the regions).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from DualDSynthesisLib.imaging.calibration import CalibrationError, ErrorCalibration, error_ratio
from DualDSynthesisLib.model import metrics
from DualDSynthesisLib.model.inputs import InputDeclaration
from DualDSynthesisLib.model.intensity_base import IntensityMapping
from DualDSynthesisLib.model.losses import difficulty_from_logits, expected_error
from DualDSynthesisLib.model.slicestack import slice_stack

from .dataset import PreparedSubject
from .input_dropout import input_batch


@torch.no_grad()
def predict(generator: torch.nn.Module, source: np.ndarray, device: torch.device, batch_size: int,
            amp: bool = False, context: int = 0, others: Mapping[str, np.ndarray] | None = None,
            inputs: InputDeclaration | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """G over all slices of a prepared volume [K, H, W] (eval mode, as at inference) → (float32 [K, H, W],
    the expected |error| [K, H, W] in normalised units when G has that head, else None). A multi-input model
    (``inputs``) also reads ``others`` (contrast → volume on the same grid; an input not given is withheld)."""
    was_training = generator.training
    generator.eval()
    out = np.empty_like(source, dtype=np.float32)
    err = None
    try:
        for k0 in range(0, len(source), batch_size):
            idx = np.arange(k0, min(k0 + batch_size, len(source)))
            x = slice_stack(source, idx, context)
            if inputs is not None and len(inputs) > 1:
                extra = [None if others is None or n not in others else slice_stack(others[n], idx, context)
                         for n in inputs.names[1:]]
                x = input_batch(inputs, [x, *extra])
            x = torch.from_numpy(np.ascontiguousarray(x)).to(device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
                y = generator(x)
            out[idx] = y[:, 0].float().cpu().numpy()
            if y.shape[1] == 2:
                if err is None:
                    err = np.zeros_like(out)
                err[idx] = expected_error(y[:, 1:])[:, 0].cpu().numpy()
    finally:
        generator.train(was_training)
    return out, err


@torch.no_grad()
def difficulty(local: torch.nn.Module, synthetic: np.ndarray, device: torch.device) -> np.ndarray:
    """``1 − M`` for slices [N, H, W]: D2's confidence map on the slice grid (the engine's mapping)."""
    was_training = local.training
    local.eval()
    try:
        x = torch.from_numpy(np.ascontiguousarray(synthetic[:, None])).to(device)
        heat = difficulty_from_logits(local(x), tuple(x.shape[-2:]))
    finally:
        local.train(was_training)
    return heat[:, 0].cpu().numpy()


def subject_metrics(pred: np.ndarray, subject: PreparedSubject, data_range: float = 1.0,
                    err: np.ndarray | None = None) -> dict[str, float]:
    """PSNR/MAE/SSIM of ``pred`` against the subject's target, cropped to the unpadded slice region;
    ``data_range``: the target mapping's. With G's expected error ``err``, also its ``expected_error_ratio``
    (mean map / mean |error| in the foreground: the evidence the bundle's calibration is computed from)."""
    ys, xs = subject.crop
    p = pred[:, ys, xs]
    t = subject.target[:, ys, xs]
    out = {
        "psnr_volume": metrics.psnr(p, t, data_range),
        "mae_volume": metrics.mae(p, t),
    }
    smap = metrics.ssim_map(p, t, data_range)  # once; averaged inside each region
    out["ssim_volume"] = metrics.masked_mean(smap)
    regions = {"foreground": subject.foreground[:, ys, xs]}
    if subject.tumour is not None:
        regions["tumour"] = subject.tumour[:, ys, xs]
    for region, mask in regions.items():
        if not mask.any():
            continue
        out[f"psnr_{region}"] = metrics.psnr(p, t, data_range, mask)
        out[f"mae_{region}"] = metrics.mae(p, t, mask)
        out[f"ssim_{region}"] = metrics.masked_mean(smap, mask)
    if err is not None and regions["foreground"].any():
        out["expected_error_ratio"] = error_ratio(err[:, ys, xs], np.abs(p - t), regions["foreground"])
    return out


def average(per_subject: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean over subjects of each metric (a tumour metric over the subjects that have a tumour).
    PSNR is averaged in dB; an infinite PSNR (identical images) stays infinite."""
    keys = sorted({k for m in per_subject.values() for k in m})
    return {k: float(np.mean([m[k] for m in per_subject.values() if k in m])) for k in keys}


def sample_slices(subject: PreparedSubject, n: int = 3) -> list[int]:
    """Slices worth looking at: most tumour, most foreground, and the middle of the foreground range."""
    area = subject.foreground.sum(axis=(1, 2))
    picks: list[int] = []
    if subject.tumour is not None and subject.tumour.any():
        picks.append(int(subject.tumour.sum(axis=(1, 2)).argmax()))
    picks.append(int(area.argmax()))
    nonzero = np.flatnonzero(area)
    if len(nonzero):
        picks.append(int(nonzero[len(nonzero) // 3]))
    picks.append(len(area) // 2)
    unique = list(dict.fromkeys(picks))
    return unique[:n]


def sample_captions(has_error_head: bool, has_d2: bool) -> list[str]:
    """Captions of :func:`validate`'s sample columns, in order."""
    caps = ["source", "real", "synthetic", "|error| x4"]
    if has_error_head:
        caps.append("expected error x4")
    if has_d2:
        caps.append("D2 difficulty 1-M")
    return caps


def validate(
    generator: torch.nn.Module,
    local: torch.nn.Module | None,
    subjects: Sequence[PreparedSubject],
    device: torch.device,
    batch_size: int,
    amp: bool = False,
    context: int = 0,
    target: IntensityMapping | None = None,
    inputs: InputDeclaration | None = None,
) -> tuple[dict[str, float], dict[str, dict[str, float]], list[tuple[np.ndarray, ...]]]:
    """(mean metrics, per-subject metrics, sample rows source|real|synthetic|heatmap of the first subject).
    ``target``: the target mapping: the prediction is scored as the product writes it (clipped by its inverse),
    over its data range (1.0 without one). ``inputs``: a multi-input model's declaration (every input a subject
    has is given)."""
    data_range = 1.0 if target is None else target.data_range
    per_subject: dict[str, dict[str, float]] = {}
    rows: list[tuple[np.ndarray, ...]] = []
    for i, subject in enumerate(subjects):
        pred, err = predict(generator, subject.source, device, batch_size, amp, context, subject.others, inputs)
        if target is not None:
            pred = target.normalised_output(pred, subject.target_params)
        per_subject[subject.name] = subject_metrics(pred, subject, data_range, err)
        if inputs is not None and any(n in subject.others for n in inputs.optional):
            per_subject[subject.name].update(_required_only(generator, subject, device, batch_size, amp, context,
                                                            target, inputs))
        if i == 0:
            ks = sample_slices(subject)
            ys, xs = subject.crop
            fake = pred[ks]
            # Columns (captioned in the PNG): source | real | synthetic | |error| (×4) | G's expected error
            # (×4, when it has the head) | D2's difficulty 1 − M (when trained)
            real_err = np.clip(np.abs(fake - subject.target[ks]) * 4.0, 0.0, 1.0)
            maps = [real_err]
            if err is not None:
                maps.append(np.clip(err[ks] * 4.0, 0.0, 1.0))
            if local is not None:
                maps.append(difficulty(local, fake, device))
            rows = [(subject.source[k][ys, xs], subject.target[k][ys, xs], fake[j][ys, xs],
                     *(m[j][ys, xs] for m in maps)) for j, k in enumerate(ks)]
    return average(per_subject), per_subject, rows


def _required_only(generator: torch.nn.Module, subject: PreparedSubject, device: torch.device, batch_size: int,
                   amp: bool, context: int, target: IntensityMapping | None,
                   inputs: InputDeclaration) -> dict[str, float]:
    """A multi-input model's PSNR and MAE with every optional input withheld (``<metric>_required_only``): how
    much the optional inputs the subject has are worth, next to the metrics with all of them."""
    required = {n: v for n, v in subject.others.items() if n in inputs.required}
    pred, _ = predict(generator, subject.source, device, batch_size, amp, context, required, inputs)
    if target is not None:
        pred = target.normalised_output(pred, subject.target_params)
    found = subject_metrics(pred, subject, 1.0 if target is None else target.data_range)
    return {f"{k}_required_only": v for k, v in found.items() if k.startswith(("psnr", "mae"))}


def held_out_calibration(validation: dict[str, Any] | None, evidence: str | None = None) -> ErrorCalibration:
    """The expected-error calibration a validation result (``loop``'s record: per-subject metrics) supports:
    from its subjects' ``expected_error_ratio``; uncalibrated without validation or without the head.
    ``evidence``: where the subjects come from (default: duald-train's validation subjects)."""
    per_subject = (validation or {}).get("per_subject", {})
    # a NaN ratio was written as the string "nan" (jsonable_metrics); from_ratios leaves out the others
    ratios = {name: m["expected_error_ratio"] for name, m in per_subject.items()
              if isinstance(m.get("expected_error_ratio"), float)}
    if not ratios:  # no validation, or a generator without the head
        return ErrorCalibration()
    try:
        where = evidence or "duald-train validation subjects"
        step = f" at step {validation['step']}" if "step" in validation else ""
        return ErrorCalibration.from_ratios(ratios, where + step)
    except CalibrationError:  # only perfect predictions (NaN ratios): nothing to calibrate on
        return ErrorCalibration()


def jsonable_metrics(values: dict[str, Any]) -> dict[str, Any]:
    """Metrics for JSON metadata: infinite PSNR becomes the string 'inf'."""
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in values.items()}
