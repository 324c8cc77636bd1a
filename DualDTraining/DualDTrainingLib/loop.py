"""The training loop: data → (torchrun-aware) training → validation, checkpoints, bundles.

Output folder (only rank 0 writes):
``checkpoint-last.pt`` (every ``checkpoint_every`` steps, at each validation, on SIGINT/SIGTERM and at
the end), ``checkpoint-best.pt`` + ``model-best.safetensors`` (best validation ``best_metric``),
``model-final.safetensors``, ``metrics.jsonl``, ``tensorboard/``, ``samples/``, ``run.json``.

Stopping: SIGINT/SIGTERM set a flag that every rank checks (all-reduced) after each step; the state
after the last completed step is saved and :class:`TrainingStopped` carries exit code 130 (SIGINT) or
143 (SIGTERM); ``--resume`` continues from exactly there. A NaN/inf loss raises
``NonFiniteLossError``; the run stops with exit code 3 and a message naming the step and the loss term,
and *no* checkpoint is written, so ``checkpoint-last.pt`` stays the last good state (resume from it
with a lower learning rate). Single-process runs check finiteness on the device and read the checks
only when they read the losses (every ``log_every`` steps) and before every checkpoint, validation and
export (see ``step.py``: the in-memory weights may already hold a non-finite update, never a file);
under torchrun each update is checked before it is applied (the peers' gradient all-reduce carries
the failure). On CUDA the batches come from ``DeviceSliceSampler`` (slices resident on the GPU, its
generator state in the checkpoint); on the CPU from ``SliceSampler``. A SIGKILL (Slicer's Cancel)
cannot be caught: at most ``checkpoint_every`` steps are lost.

Beside this file: ``preparation.py`` (the subjects), ``resume.py`` (what a checkpoint carries and puts
back), ``run_folder.py`` (the output folder), ``distributed.on_main`` (rank 0's work handed to every rank).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import signal
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from DualDSynthesisLib.imaging.bundle import BundleMetadata, save_bundle
from DualDSynthesisLib.imaging.figures import write_png
from DualDSynthesisLib.imaging.fingerprint import fingerprint
from DualDSynthesisLib.imaging.preprocess import PreprocessingSpec

from . import checkpoint as ckpt
from .augment import SourceAugmentation
from .best_metric import is_better
from .config import RunConfig
from .dataset import PreparedSubject, SliceSampler, base_spec, finish_spec, shard_pairs
from .device_sampler import DeviceSliceSampler
from .discovery import DiscoveryError, discover
from .distributed import DistContext, PeerNonFiniteError, init_from_env, on_main, stop_together
from .errors import EXIT_NON_FINITE, TrainingError, TrainingStopped
from .finetune import Parent, fine_tuned_metadata, load_parent, parent_spec, start_from_parent
from .loss_window import LossWindow
from .option_values import parse_spacing
from .preparation import default_spacing, prepare_each, size_multiple
from .reporting import Progress, Reporter, sample_grid, say
from .resume import capture_streams, check_resume, restore_streams, set_learning_rates
from .run_folder import prepare_output, remove_if_only_logs
from .signals import StopSignals
from .site_calibration import LOSO, hold_out, leave_one_subject_out, split_subjects
from .step import DualDTrainer, NonFiniteLossError
from .validation import held_out_calibration, jsonable_metrics, sample_captions, validate

PARAM_DIGEST_ENV = "DUALD_TRAIN_PARAM_DIGEST_DIR"  # tests: each rank writes a digest of its parameters


# ----------------------------------------------------------------------------- helpers


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, encoding="utf-8", timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def use_device_sampler(device: torch.device) -> bool:
    """Slices resident on the device pay off only on a GPU; tests patch this to run that path on the CPU."""
    return device.type == "cuda"


def params_digest(trainer: DualDTrainer) -> str:
    h = hashlib.sha256()
    for name, module in trainer.networks().items():
        for key, t in module.state_dict().items():
            h.update(f"{name}.{key}".encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- the run


class Run:
    def __init__(self, cfg: RunConfig, ctx: DistContext) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.progress: Progress | None = None
        self.reporter: Reporter | None = None
        self.best: dict[str, Any] | None = None
        self.commit = _git_commit() if ctx.is_main else None
        self.parent: Parent | None = None
        self.site_method: str | None = None  # a fine-tune's --site-calibration, decided (site_calibration.py)
        self.held_out: dict[str, Any] | None = None  # its leave-one-subject-out evidence

    # -- messages (rank 0 only; stdout in Slicer, where anything on stderr marks the run as failed)
    def say(self, message: str) -> None:
        if not self.ctx.is_main:
            return
        if self.progress is not None:
            self.progress.write(message)
        else:
            say(message, self.cfg.slicer)

    def setup(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        if cfg.init_from:  # a broken parent is refused before the output folder exists
            self.parent = load_parent(cfg)
        on_main(ctx, lambda: prepare_output(cfg.output, cfg.resume, cfg.overwrite))
        self.state = on_main(ctx, lambda: ckpt.load_checkpoint(cfg.output / ckpt.LAST)) if cfg.resume else None
        if self.state is not None:
            check_resume(self.state["run"], cfg)

        def find() -> tuple:
            found = discover(cfg.data, cfg.source, cfg.target, cfg.required_sources or None)
            train, val, method = split_subjects(cfg, found.pairs)
            spacing = parse_spacing(cfg.spacing) or default_spacing(train)
            return found, train, val, spacing, method

        found, train, val, spacing, self.site_method = on_main(ctx, find)
        self.say(f"{found.summary()}: {len(train)} for training, {len(val)} for validation "
                 f"({', '.join(p.subject for p in val) or 'none'})")
        for note in found.notes:
            self.say(f"note: {note}")
        for r in found.rejected:
            self.say(f"rejected {r.subject}: {r.reason}")
        self.arch = cfg.architecture() if self.parent is None else self.parent.meta.architecture
        self.inputs = cfg.inputs() if self.parent is None else self.parent.meta.inputs  # model/inputs.py
        if self.state is not None:
            spec = PreprocessingSpec.from_dict(self.state["preprocessing"])
        elif self.parent is not None:
            spec = parent_spec(self.parent, spacing)
        else:
            spec = base_spec(cfg.resolved_target_kind(), spacing, size_multiple(self.arch),
                             source_norm=cfg.source_norm, context_slices=cfg.context_slices)
        t0 = time.time()
        subjects, train, shard_slices = self._prepare_training(train, spec)
        subjects, slabs, self.validation_note = hold_out(self.site_method, subjects, self.spec.context_slices)
        if self.site_method is not None:
            self.say(f"site calibration: {self.validation_note}")
        self._prepare_validation(val, slabs)
        self._make_samplers(subjects, shard_slices)
        del subjects
        self.train_names = [p.subject for p in train]
        self.say(f"prepared {len(train)} training subject(s) in {time.time() - t0:.1f} s: "
                 f"{len(self.sampler)} slices of {self.sampler.shape[0]}×{self.sampler.shape[1]} on rank 0 "
                 f"({self.sampler.foreground_slices} with foreground); spacing {self.spec.spacing} mm")
        if cfg.best_metric.endswith("_tumour") and self.val_subjects and not any(
                s.tumour is not None and s.tumour.any() for s in self.val_subjects):
            raise TrainingError(f"--best-metric {cfg.best_metric} needs a tumour mask in a validation subject; "
                                "none has one")

    def _prepare_training(self, train: list, spec: PreprocessingSpec) -> tuple[list[PreparedSubject], list, bool]:
        """(this rank's prepared subjects, the training pairs left, whether slices are sharded); sets the
        final ``spec`` (the target's reference from every rank's subjects) and the data's fingerprint."""
        ctx = self.ctx
        mine, shard_slices = shard_pairs(train, ctx.rank, ctx.world_size)
        subjects, dropped = prepare_each(mine, spec, self.cfg.workers, self.inputs.optional, self.say)
        rejected = dict(d for per_rank in ctx.gather_objects(dropped) for d in per_rank)
        for subject, reason in rejected.items():
            self.say(f"rejected {subject}: {reason}")
        if not all(ctx.gather_objects(bool(subjects))):
            raise TrainingError("no training subject could be prepared (see the rejected lines above)")
        train = [p for p in train if p.subject not in rejected]
        fitted = [p for per_rank in ctx.gather_objects([s.target_params for s in subjects]) for p in per_rank]
        stats = [s for per_rank in ctx.gather_objects([s.source_stats for s in subjects]) for s in per_rank]
        others = [o for per_rank in ctx.gather_objects([s.other_stats for s in subjects]) for o in per_rank]
        per_input = [(k, [o[k] for o in others[: len(train)] if k in o]) for k in self.inputs.names[1:]]
        self.fingerprint = fingerprint([s for s in stats[: len(train)] if s is not None],
                                       per_input).to_dict() if stats else {}
        if shard_slices:
            fitted = fitted[: len(train)]  # every rank prepared all subjects: count each once
        self.spec = spec if self.state is not None else finish_spec(spec, fitted)
        return subjects, train, shard_slices

    def _prepare_validation(self, val: list, slabs: list[PreparedSubject]) -> None:
        self.val_subjects = list(slabs) if self.ctx.is_main else []
        if self.ctx.is_main and val:  # only rank 0 validates; the volumes are not sent to the others
            self.val_subjects, dropped = prepare_each(val, self.spec, self.cfg.workers, self.inputs.optional, self.say)
            for subject, reason in dropped:
                self.say(f"rejected {subject} (validation): {reason}")
        self.has_validation = bool(self.ctx.broadcast_object(bool(self.val_subjects)))

    def _make_samplers(self, subjects: list[PreparedSubject], shard_slices: bool) -> None:
        """The slice sampler (on the device on CUDA) and the source augmentation, each with its own stream."""
        cfg, ctx = self.cfg, self.ctx
        self.sampler_rng = np.random.default_rng([cfg.seed, ctx.rank])
        shard = (ctx.rank, ctx.world_size) if shard_slices else (0, 1)
        if use_device_sampler(ctx.device):
            self.sampler: SliceSampler | DeviceSliceSampler = DeviceSliceSampler(
                subjects, ctx.device, cfg.seed * 1000 + ctx.rank, cfg.tumour_fraction, cfg.flip, shard,
                cfg.crop_size, self.spec.context_slices, inputs=self.inputs, input_dropout=cfg.input_dropout)
        else:
            self.sampler = SliceSampler(subjects, self.sampler_rng, cfg.tumour_fraction, cfg.flip, shard,
                                        cfg.crop_size, self.spec.context_slices, self.inputs, cfg.input_dropout)
        # each input's slices augmented on their own; a multi-input model's availability channels never
        self.augment = SourceAugmentation(cfg.augment, seed=cfg.seed * 7919 + ctx.rank, inputs=len(self.inputs),
                                          passthrough=len(self.inputs.optional))

    def build(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        torch.manual_seed(cfg.seed)
        grad_sync = ctx.grad_sync if ctx.active else None
        self.trainer = DualDTrainer(self.arch, cfg.training(), ctx.device, grad_sync=grad_sync, amp=cfg.amp,
                                    defer_checks=not ctx.active, freeze_encoder=cfg.freeze_encoder,
                                    d1_precision=cfg.d1_precision, d1_layout=cfg.d1_layout)
        if self.parent is not None and self.state is None:
            self.say(start_from_parent(self.trainer, self.parent))
        torch.manual_seed(cfg.seed * 1000 + ctx.rank + 1)  # the gradient penalty's noise differs per rank
        if self.state is not None:
            ckpt.apply_checkpoint(self.trainer, self.state)
            set_learning_rates(self.trainer, cfg)
            note = restore_streams(self.state["rng"], ctx.rank, ctx.world_size, self.sampler_rng, self.augment,
                                   self.sampler, [cfg.seed, ctx.rank, self.trainer.step_count])
            if note:
                self.say(note)
            self.best = self.state["best"]
            self.state = None  # free the copy of the weights
        for module in self.trainer.networks().values():
            ctx.broadcast_module(module)

    # -- files
    def _run_record(self) -> dict[str, Any]:
        d = asdict(self.cfg)
        d.update(data=str(self.cfg.data), output=str(self.cfg.output), world_size=self.ctx.world_size)
        return d

    def save_checkpoint(self, path: Path | None = None) -> None:
        self.trainer.check_finite()  # never write a state a non-finite update reached (deferred checks)
        rng = self.ctx.gather_objects(capture_streams(self.sampler_rng, self.augment, self.sampler))
        if self.ctx.is_main:
            ckpt.save_checkpoint(path or self.cfg.output / ckpt.LAST, self.trainer, rng, self.spec.to_dict(),
                                 self._run_record(), self.best)

    def export(self, name: str, validation: dict[str, Any] | None) -> Path:
        cfg, v = self.cfg, self.trainer.config.variant
        provenance = {
            "data": str(cfg.data.resolve()),
            "iterations": int(self.trainer.step_count),
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "commit": self.commit,
            "training_subjects": self.train_names,
            "validation_subjects": [s.name for s in self.val_subjects],
            "seed": cfg.seed,
            "world_size": self.ctx.world_size,
            "batch_size": cfg.batch_size,
            "training_config": self.trainer.config.to_dict(),
        }
        meta = BundleMetadata(
            architecture=self.arch.to_dict(), variant=v.value, source_modality=cfg.reference,
            target_modality=cfg.target, preprocessing=self.spec.to_dict(), has_local_discriminator=v.uses_local,
            provenance=provenance, metrics=validation or {}, inputs=self.inputs,
            name=f"DualD {cfg.source.replace(',', '+')}→{cfg.target} ({v.value})",
            fingerprint=self.fingerprint, error_calibration=held_out_calibration(validation),
            description=f"Trained with duald-train on {len(self.train_names)} subject(s) for "
                        f"{self.trainer.step_count} iterations.",
        )
        if self.parent is not None:
            meta = fine_tuned_metadata(meta, self.parent, cfg, validation, self.validation_note, self.held_out)
        local = self.trainer.local if v.uses_local else None
        return save_bundle(cfg.output / name, self.trainer.generator, local, meta, overwrite=True)

    # -- validation (rank 0; the others wait at the barrier)
    def run_validation(self, step: int) -> dict[str, Any] | None:
        self.trainer.check_finite()  # validation may export model-best: only from finite weights
        result = None
        if self.ctx.is_main and self.val_subjects:
            t0 = time.time()
            local = self.trainer.local if self.trainer.config.variant.uses_local else None
            mean, per_subject, rows = validate(self.trainer.generator, local, self.val_subjects, self.ctx.device,
                                               self.cfg.batch_size, self.cfg.amp, self.spec.context_slices,
                                               self.spec.target, self.inputs)
            self.reporter.log("validation", step, {**mean, "per_subject": per_subject,
                                                   "seconds": round(time.time() - t0, 2)})
            if rows:
                grid = sample_grid(rows, sample_captions(self.arch.g_error_head, local is not None))
                write_png(grid, self.cfg.output / "samples" / f"step-{step:07d}.png")
                self.reporter.image("samples", grid, step)
            metric = self.cfg.best_metric
            shown = ", ".join(f"{k} {mean[k]:.4g}" for k in ("psnr_foreground", "ssim_foreground", "mae_foreground")
                              if k in mean)
            self.say(f"step {step}: validation {shown}")
            result = {"step": step, "metrics": jsonable_metrics(mean),
                      "per_subject": {k: jsonable_metrics(m) for k, m in per_subject.items()},
                      "data_range": self.spec.target.data_range,
                      "units": "normalised intensities (see DualDTrainingLib.validation)",
                      "best_metric": metric}
            if is_better(mean.get(metric), None if self.best is None else self.best["value"], metric):
                self.best = {"metric": metric, "value": mean[metric], "step": step}
                self.export("model-best.safetensors", result)
                self.say(f"step {step}: new best {metric} {mean[metric]:.4g} → model-best.safetensors")
                result["new_best"] = True
        return self.ctx.broadcast_object(result)

    # -- the loop
    def train(self, signals: StopSignals) -> int:
        cfg, ctx, trainer = self.cfg, self.ctx, self.trainer
        start = trainer.step_count
        if ctx.is_main:
            self.reporter = Reporter(cfg.output)
            record = json.dumps(self._run_record(), indent=2, default=str) + "\n"
            (cfg.output / "run.json").write_text(record, encoding="utf-8")
            self.reporter.log("event", start, {"event": "resume" if start else "start", "world_size": ctx.world_size,
                                               "device": str(ctx.device)})
            self.progress = Progress(cfg.iterations, start, cfg.slicer)
            if start:
                self.say(f"resuming from step {start} of {cfg.iterations}")
        window = LossWindow()
        t_window = time.time()
        last_validation: dict[str, Any] | None = None
        nets = trainer.networks()
        if start and start >= cfg.iterations:  # a finished run resumed: nothing to train, nothing to re-export
            self.say(f"the checkpoint is already at step {start}, at or past --iterations {cfg.iterations}: "
                     "nothing to do (raise --iterations to train further)")
            return 0
        try:
            while trainer.step_count < cfg.iterations:
                if ctx.any_flag(signals.received is not None):
                    return self._stop_on_signal(signals.received or signal.SIGTERM)
                src, tgt = self.sampler.batch(cfg.batch_size)
                window.add(trainer.step(self.augment(src), tgt))
                for module in nets.values():
                    ctx.sync_buffers(module)
                step = trainer.step_count
                final = step == cfg.iterations
                mean: dict[str, float] = {}
                if step % cfg.log_every == 0 or final:
                    n = len(window)
                    mean = ctx.mean_dict(window.read(trainer))
                    elapsed = time.time() - t_window
                    if self.reporter is not None:
                        self.reporter.log("train", step, {**mean, "steps_per_s": round(n / elapsed, 3),
                                                          "slices_per_s": round(n * cfg.batch_size
                                                                                * ctx.world_size / elapsed, 2)})
                    t_window = time.time()
                if self.progress is not None:
                    self.progress.update(step, mean)
                validated = self.has_validation and (bool(cfg.val_every and step % cfg.val_every == 0) or final)
                if validated:
                    last_validation = self.run_validation(step)
                    ctx.barrier()
                if not final and (step % cfg.checkpoint_every == 0 or validated):
                    self.save_checkpoint()
                    if last_validation and last_validation.get("new_best"):
                        self.save_checkpoint(cfg.output / ckpt.BEST)
            return self._finish(last_validation)
        except NonFiniteLossError as exc:
            raise self._stopped_on_non_finite(exc) from None

    def _stopped_on_non_finite(self, exc: NonFiniteLossError) -> TrainingStopped:
        ctx, trainer = self.ctx, self.trainer
        stop_together(ctx, trainer.networks(), exc)
        peer = isinstance(exc, PeerNonFiniteError)
        where = "another rank" if peer else f"rank {ctx.rank}"
        value = "" if peer else f" ({exc.value})"
        step = exc.step if exc.step > 0 else trainer.step_count + 1  # a peer's failure: the step it stopped at
        kept = (f"{ckpt.LAST} still holds the last good state" if (self.cfg.output / ckpt.LAST).is_file()
                else "no checkpoint had been written yet (lower the learning rate and start again)")
        message = (f"loss term {exc.term} became non-finite{value} at step {step} on {where}; stopped without "
                   f"saving, {kept}")
        if self.reporter is not None:
            self.reporter.log("event", step, {"event": "non_finite", "term": exc.term})
        return TrainingStopped(message, EXIT_NON_FINITE)

    def _stop_on_signal(self, signum: int) -> int:
        self.save_checkpoint()
        name = signal.Signals(signum).name
        if self.reporter is not None:
            self.reporter.log("event", self.trainer.step_count, {"event": "stopped", "signal": name})
        raise TrainingStopped(f"{name} received: saved {ckpt.LAST} at step {self.trainer.step_count}; "
                              "continue with --resume", 128 + int(signum))

    def _finish(self, last_validation: dict[str, Any] | None) -> int:
        self.save_checkpoint()
        if last_validation and last_validation.get("new_best"):
            self.save_checkpoint(self.cfg.output / ckpt.BEST)
        if self.ctx.is_main:
            path = self.export("model-final.safetensors", last_validation)
            self.reporter.log("event", self.trainer.step_count, {"event": "finished", "bundle": str(path)})
            if self.progress is not None:
                self.progress.close()
            best = f"; best {self.best['metric']} {self.best['value']:.4g} at step {self.best['step']}" \
                if self.best else ""
            self.say(f"finished {self.trainer.step_count} iterations: {path}{best}")
        return 0

    def close(self) -> None:
        digest_dir = os.environ.get(PARAM_DIGEST_ENV)
        if digest_dir and hasattr(self, "trainer"):
            Path(digest_dir).mkdir(parents=True, exist_ok=True)
            digest = Path(digest_dir) / f"params-rank{self.ctx.rank}.txt"
            digest.write_text(params_digest(self.trainer) + "\n", encoding="utf-8")
        if self.progress is not None:
            self.progress.close()
        if self.reporter is not None:
            self.reporter.close()


def _fold(cfg: RunConfig, ctx: DistContext, signals: StopSignals) -> None:
    """One leave-one-subject-out fine-tune (``site_calibration.leave_one_subject_out``), in the caller's ranks."""
    run = Run(cfg, ctx)
    try:
        run.setup()
        run.build()
        run.train(signals)
    finally:
        run.close()


def run_training(cfg: RunConfig) -> int:
    """Train as ``cfg`` says; returns the exit code (0) or raises TrainingError/TrainingStopped."""
    cfg.check()
    try:
        ctx = init_from_env(cfg.device)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    run = Run(cfg, ctx)
    existed, failed = cfg.output.exists(), False
    try:
        with StopSignals() as signals:
            try:
                run.setup()
                if run.site_method == LOSO:
                    run.held_out = leave_one_subject_out(cfg, ctx, run.train_names,
                                                         lambda c: _fold(c, ctx, signals), run.say)
                run.build()
            except DiscoveryError as exc:
                raise TrainingError(str(exc)) from None
            return run.train(signals)
    except (TrainingError, TrainingStopped):
        failed = True
        raise
    finally:
        run.close()
        ctx.close()
        if failed and not existed and ctx.is_main:  # a run that failed before writing anything leaves no folder
            remove_if_only_logs(cfg.output)
