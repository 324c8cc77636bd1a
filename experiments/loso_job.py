"""One LOSO job (``loso.py job``, one process each): train a model on a fold's training subjects, score its
held-out subjects (the scoring every LOSO script shares: :func:`held_out`, :func:`evaluate`) and write its bundle.

Imported by ``loso.py`` after its path insert (DualDSynthesis, DualDTraining and experiments on ``sys.path``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from loso_data import Loaded, load_prepared, training_subject

CHECK_EVERY = 200  # GPU jobs read their deferred finiteness checks this often (one host sync)


@dataclass
class HeldOut:
    """G over one held-out subject, cropped to its unpadded region (``pred``: the whole slices, for D2)."""

    pred: np.ndarray
    synthetic: np.ndarray
    target: np.ndarray
    expected_error: np.ndarray | None
    foreground: np.ndarray
    spacing_kji: tuple[float, float, float]


def held_out(generator, subject, context: int, device, target, amp: bool = False, inputs=None) -> HeldOut:
    """The arrays every held-out score starts from (here and in the re-scoring scripts). ``target``: the
    target mapping; G's prediction is clipped by it as the product's written volume is. ``inputs``: a
    multi-input model's declaration (it reads the subject's ``others``; an input not among them is withheld)."""
    from DualDTrainingLib.validation import predict

    pred, err = predict(generator, subject.source, device, 16, amp, context, subject.others, inputs)
    pred = target.normalised_output(pred, subject.target_params)
    ys, xs = subject.crop
    return HeldOut(pred, pred[:, ys, xs], subject.target[:, ys, xs], None if err is None else err[:, ys, xs],
                   subject.foreground[:, ys, xs], (float(subject.context.prepared.spacing[2]), 1.0, 1.0))


def evaluate(trainer, subject, context: int, device, has_d2: bool, target, inputs=None) -> dict[str, Any]:
    import torch
    from DualDSynthesisLib.imaging.calibration import error_ratio
    from DualDSynthesisLib.imaging.scoring import gradient_magnitude, map_scores
    from DualDSynthesisLib.model import metrics
    from DualDTrainingLib.validation import difficulty

    h = held_out(trainer.generator, subject, context, device, target, trainer.amp, inputs)
    pred, p, t, fg = h.pred, h.synthetic, h.target, h.foreground
    ys, xs = subject.crop
    smap = metrics.ssim_map(p, t, 1.0)
    # psnr_constant: an image holding the real T2's own foreground mean everywhere (an oracle: it needs the
    # answer) scores this; a model has to beat it to show it learned more than the intensity level
    constant = np.full_like(t, float(t[fg].mean()))
    out: dict[str, Any] = {"foreground": {"psnr": metrics.psnr(p, t, 1.0, fg), "mae": metrics.mae(p, t, fg),
                                          "ssim": metrics.masked_mean(smap, fg),
                                          "psnr_constant": metrics.psnr(constant, t, 1.0, fg),
                                          # the prediction rescaled by its own 99.5th percentile instead
                                          "psnr_own_scale": metrics.psnr(
                                              np.clip(p / np.percentile(p[fg], 99.5), 0, 2), t, 1.0, fg)}}
    # detail (issue 24): the synthetic's in-plane edge content and lesion contrast, each over the real one's
    out["detail"] = {"gradient_ratio": metrics.gradient_ratio(p, t, fg, h.spacing_kji[1:])}
    if subject.tumour is not None and subject.tumour[:, ys, xs].any():
        m = subject.tumour[:, ys, xs]
        out["lesion"] = {"psnr": metrics.psnr(p, t, 1.0, m), "mae": metrics.mae(p, t, m),
                         "ssim": metrics.masked_mean(smap, m)}
        out["detail"]["lesion_contrast_ratio"] = metrics.lesion_contrast_ratio(p, t, m, fg)
    maps = {"edge": gradient_magnitude(p, h.spacing_kji)}
    if h.expected_error is not None:
        maps["expected_error"] = h.expected_error
        # calibration evidence: the map's mean against the real mean |error| (1 = right on average)
        out["expected_error_ratio"] = error_ratio(h.expected_error, np.abs(p - t), fg)
    if has_d2:
        with torch.no_grad():
            heat = np.concatenate([difficulty(trainer.local, pred[k : k + 16], device)
                                   for k in range(0, len(pred), 16)])
        maps["d2"] = heat[:, ys, xs]
    out["maps"] = map_scores(maps, np.abs(p - t), fg)
    return out


def _bundle(trainer, spec, job: dict, path: Path, half: bool, stats: list[tuple], inputs) -> None:
    """The job's model as a bundle; ``stats``: each training subject's (source, others) statistics."""
    import copy

    from DualDSynthesisLib.imaging.bundle import BundleMetadata, save_bundle
    from DualDSynthesisLib.imaging.fingerprint import fingerprint

    v = trainer.config.variant
    g = copy.deepcopy(trainer.generator).eval()
    d2 = copy.deepcopy(trainer.local).eval() if v.uses_local else None
    if half:  # fold bundles travel back from the GPU machine; they load into float32 networks
        g = g.half()
        d2 = d2.half() if d2 is not None else None
    target = job.get("target", "t2")
    per_input = [(c, [others[c] for _, others in stats if c in others]) for c in inputs.names[1:]]
    meta = BundleMetadata(
        architecture=trainer.architecture.to_dict(), variant=v.value, source_modality=inputs.reference,
        target_modality=target, preprocessing=spec.to_dict(), has_local_discriminator=v.uses_local,
        provenance={"experiment": "experiments/loso.py", "job": job, "steps": trainer.step_count,
                    "training_config": trainer.config.to_dict()},
        name=f"DualD {'+'.join(inputs.names)}→{target} ({v.value}, {job['recipe']}, {job['fold']})",
        fingerprint=fingerprint([source for source, _ in stats], per_input).to_dict(), inputs=inputs,
        description=f"LOSO job {job['id']}: trained on {', '.join(job['train'])}.")
    save_bundle(path, g, d2, meta, overwrite=True)


def run_job(job: dict, prepared: str, out: Path, device_name: str) -> dict:
    import torch
    from DualDSynthesisLib.model.inputs import InputDeclaration
    from DualDSynthesisLib.model.networks import ArchitectureConfig
    from DualDTrainingLib.augment import SourceAugmentation
    from DualDTrainingLib.dataset import base_spec, finish_spec
    from DualDTrainingLib.step import DualDTrainer, TrainingConfig

    torch.set_num_threads(1)
    t_start = time.time()
    r = job["recipe_settings"]
    # On CUDA no step waits for the host: slices resident on the device (as duald-train does there) and the
    # finiteness checks read every CHECK_EVERY steps. The CPU keeps the host sampler its earlier runs used.
    on_gpu = job.get("device_path", torch.device(device_name).type == "cuda")  # forced on the CPU in smoke tests
    # Training subjects one at a time, float16 on the host when they go to the device anyway: a pool of ~50
    # jobs on one machine must not hold ~2.5 GB of float32 copies each.
    # A multi-input job (issue 23) names its inputs (T1 first), the required ones, its target and the input
    # dropout; a job without them is the one-input t1 → t2 of every earlier run, sampled exactly as before.
    inputs = InputDeclaration.parse(job.get("inputs", ["t1"]), job.get("required"))
    target = job.get("target", "t2")
    train = [training_subject(load_prepared(prepared, [n])[n], r["source_norm"], on_gpu, inputs.names, target)
             for n in job["train"]]
    stats = [(s.source_stats, s.other_stats) for s in train]  # the bundle's fingerprint
    spec = finish_spec(base_spec("mri", (1.0, 1.0), 16, source_norm=r["source_norm"],
                                 context_slices=r["context"]), [s.target_params for s in train])
    arch = ArchitectureConfig(in_channels=inputs.channels(r["context"]), g_base_width=r["width"], g_depth=4,
                              d2_base_width=r.get("d2_width", 32), g_error_head=True,
                              d2_head=job.get("d2_head", "patch"))
    cfg = TrainingConfig(variant=job["variant"], d2_target=job.get("d2_target", "binary"),
                         **({"lr_g": job["lr_g"]} if "lr_g" in job else {}))
    device = torch.device(device_name)
    torch.manual_seed(job["seed"])
    trainer = DualDTrainer(arch, cfg, device, amp=device.type == "cuda", defer_checks=on_gpu)
    if job.get("init_from"):  # a model with fewer inputs (the fold's one-input model): its G, widened
        _start_from(trainer, job["init_from"], inputs, r["context"])
    sampler = _sampler(train, job, device, on_gpu, inputs)
    del train  # on a GPU the slices live on the device now
    # each input augmented on its own (its own contrast curve); the availability channels never
    augment = SourceAugmentation(r["augment"], seed=job["seed"], inputs=len(inputs),
                                 passthrough=len(inputs.optional))
    losses: list[torch.Tensor] = []
    t0 = time.time()
    while trainer.step_count < job["steps"] and time.time() - t0 < job["seconds"]:
        src, tgt = sampler.batch(job["batch"])
        src = augment(src.to(device, non_blocking=True))
        values = trainer.step(src, tgt.to(device, non_blocking=True))
        losses.append(values["l1"])  # a device tensor: read once at the end, not per step
        if trainer.step_count % CHECK_EVERY == 0:
            trainer.check_finite()
    trainer.check_finite()
    train_seconds = time.time() - t0
    result = {**job, "steps_done": trainer.step_count, "train_seconds": round(train_seconds, 1),
              "final_l1": float(torch.stack(losses[-50:]).mean()) if losses else None,
              "reference_scale": spec.target.reference_scale, "per_subject": {}}
    for name, loaded in load_prepared(prepared, list(job["test"])).items():
        result["per_subject"][name] = _scores(trainer, loaded, job, inputs, spec, device)
    if job.get("bundle"):
        _bundle(trainer, spec, job, out / job["bundle"], job.get("half", True), stats, inputs)
    result["wall_seconds"] = round(time.time() - t_start, 1)
    return result


def _sampler(train: list, job: dict, device, on_gpu: bool, inputs):
    """The job's slice sampler: on the device on a GPU, the host sampler its CPU runs always used otherwise."""
    from DualDTrainingLib.dataset import SliceSampler
    from DualDTrainingLib.device_sampler import DeviceSliceSampler

    r, dropout = job["recipe_settings"], job.get("input_dropout", 0.0)
    if on_gpu:
        return DeviceSliceSampler(train, device, seed=job["seed"], tumour_fraction=0.3, context=r["context"],
                                  crop=r.get("crop", 0), inputs=inputs, input_dropout=dropout)
    return SliceSampler(train, np.random.default_rng(job["seed"]), tumour_fraction=0.3, context=r["context"],
                        crop=r.get("crop", 0), inputs=inputs, input_dropout=dropout)


def _start_from(trainer, path: str, inputs, context: int) -> None:
    from DualDSynthesisLib.imaging.bundle import load_bundle
    from DualDSynthesisLib.model.input_widening import widened_state

    parent = load_bundle(path)
    state = widened_state(parent.generator.state_dict(), parent.metadata.inputs, trainer.generator.state_dict(),
                          inputs, context)
    trainer.generator.load_state_dict(state)


def _scores(trainer, loaded: Loaded, job: dict, inputs, spec, device) -> dict[str, Any]:
    """One held-out subject's scores with every input it has, and (a multi-input job's ``eval_inputs``) with
    each listed subset of them under ``by_inputs`` (``"t1+flair"``; a subset the subject lacks is skipped)."""
    r, target = job["recipe_settings"], job.get("target", "t2")
    has_d2 = trainer.config.variant.uses_local
    subject = training_subject(loaded, r["source_norm"], False, inputs.names, target)
    out = evaluate(trainer, subject, r["context"], device, has_d2, spec.target, inputs)
    out["inputs"] = "+".join(["t1", *subject.others])
    subsets = [subset for subset in job.get("eval_inputs", []) if set(subset[1:]) <= set(subject.others)]
    by_inputs = {}
    for subset in subsets:  # the subset of every input the subject has is the evaluation above
        by_inputs["+".join(subset)] = {k: v for k, v in out.items() if k != "inputs"} if set(subset[1:]) == set(
            subject.others) else evaluate(trainer, training_subject(loaded, r["source_norm"], False, subset, target),
                                          r["context"], device, has_d2, spec.target, inputs)
    if by_inputs:
        out["by_inputs"] = by_inputs
    return out


def evaluate_bundle(bundle, loaded: Loaded, norm: str) -> dict[str, Any]:
    """:func:`evaluate` of a saved bundle on one prepared subject (CPU): the scores a job gives its trainer."""
    import types

    import torch

    spec = bundle.metadata.preprocessing
    trainer = types.SimpleNamespace(generator=bundle.generator, local=bundle.local_discriminator, amp=False)
    return evaluate(trainer, training_subject(loaded, norm), spec.context_slices, torch.device("cpu"),
                    bundle.local_discriminator is not None, spec.target)

