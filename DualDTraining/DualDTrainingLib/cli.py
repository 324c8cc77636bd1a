"""``duald-train``: train a DualD model on your own paired volumes.

Three ways to run the same entry point (:func:`main`):

1. Console script::

       duald-train --data /data/brats --source t1 --target t2 --variant dual_attention \\
           --iterations 20000 --output runs/t1-t2

2. Slicer: the scripted CLI module ``DualDTraining`` (``DualDTraining.py`` + ``DualDTraining.xml``)
   calls ``main(argv, slicer=True)``; Slicer builds the panel from the XML, runs it in a background
   process and shows the ``<filter-progress>`` lines. Slicer's Cancel kills the process (SIGKILL):
   the last checkpoint (every ``--checkpoint-every`` steps) survives; tick *resume* to continue.

3. Several GPUs/processes with ``torchrun`` (one process per GPU, NCCL; gloo on CPU)::

       torchrun --nproc_per_node=4 --no-python duald-train --data ... --output ...
       torchrun --nproc_per_node=4 -m DualDTrainingLib.cli --data ... --output ...

   Several machines (run on every node; ``--node_rank`` 0..N-1, same rendezvous endpoint)::

       torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d --rdzv_id=duald-t1t2 \\
           --rdzv_endpoint=node0.example.org:29500 --no-python duald-train --data ... --output ...

   ``--batch-size`` is per process; every rank reads the data (the same path on every node) and
   samples its own shard; only rank 0 writes to ``--output``.

Flags are written with dashes (``--val-subjects``); the underscore spelling (``--val_subjects``) is
accepted too because Slicer's XML descriptors allow only letters, digits and underscores in flags.

Exit codes: 0 done; 2 bad options or data (one line on stderr); 3 a loss became NaN/inf (the last
checkpoint is untouched); 130/143 stopped by SIGINT/SIGTERM after saving a checkpoint; 1 unexpected
error (``DUALD_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from DualDSynthesisLib.core.console import HelpFormatter, safe_console
from DualDSynthesisLib.core.errors import DualDError
from DualDSynthesisLib.core.vocabulary import D2_TARGETS, VARIANTS, known_contrasts_text
from DualDSynthesisLib.model.architecture import D2_HEADS
from DualDSynthesisLib.model.intensity import SOURCE_NORMS

from .config import FINETUNE_DEFAULTS, LOSO_MOST_SUBJECTS, SITE_CALIBRATIONS, TARGET_KINDS, RunConfig
from .errors import EXIT_NON_FINITE, TrainingStopped
from .init_from import RECIPE, flag, resolve
from .training_config import D1_LAYOUTS, D1_PRECISIONS

PROG = "duald-train"
EXAMPLES = """examples:
  # a first look on a CPU (minutes): small generator, 500 steps
  duald-train --data /data/brats --source t1 --target t2 --variant unet --iterations 500 --output runs/try

  # the shipped default's recipe (docs/models.md) on a GPU
  duald-train --data /data/brats --source t1 --target t2 --variant unet --base-width 16 --context-slices 1 \\
      --source-norm rank --augment 1 --crop-size 160 --batch-size 16 --iterations 20000 --amp --output runs/t1t2

  # the paper's full method (dual discriminators + difficulty-aware attention)
  duald-train --data /data/brats --source t1 --target t2 --variant dual_attention --output runs/paper

  # commissioning at a site: fine-tune the shipped model on one or two local paired scans
  duald-train --data /data/site --source t1 --target t2 --site "St Elsewhere" \\
      --init-from DualDSynthesis/Resources/Models/t1_to_t2.safetensors --output runs/site

  # ... or only re-fit its expected-error factor on the site's scans (no training)
  duald-train --data /data/site --source t1 --target t2 --recalibrate-only \\
      --init-from DualDSynthesis/Resources/Models/t1_to_t2.safetensors --output runs/site-recal

The default --iterations (20000) is meant for a GPU: on a 2-core CPU it takes days."""
DEFAULTS = RunConfig.defaults()  # every default comes from RunConfig (torch-free), never repeated here
# Store-true flags that switch a RunConfig field off: --no-flip → flip=False.
NEGATED = {"no_flip": "flip", "no_error_head": "error_head"}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option as one line (no usage block), like the other errors."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add(group: argparse._ActionsContainer, flag: str, **kwargs: object) -> None:
    """Add ``--a-b`` with its Slicer-compatible alias ``--a_b``."""
    names = [flag] if "-" not in flag[2:] else [flag, "--" + flag[2:].replace("-", "_")]
    group.add_argument(*names, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Train a DualD cross-modality synthesis model (T1 → T2, MRI → CT, ...) "
                "and export it as a DualD model bundle.", allow_abbrev=False, formatter_class=HelpFormatter,
                epilog=EXAMPLES)
    io = p.add_argument_group("data and output")
    _add(io, "--data", required=True, metavar="FOLDER_OR_CSV",
         help="a folder with one sub-folder per subject (BraTS-like names), or a CSV manifest with columns "
              "source,target[,mask,foreground,split,subject]")
    _add(io, "--source", default="",
         help=f"source contrast: {known_contrasts_text()}; several, comma-separated (t1,flair,t1c), train a "
              "multi-input model: the first is the required reference (the outputs are on its grid), the others "
              "optional inputs a subject may lack; with --init-from, default: the bundle's")
    _add(io, "--required-sources", default=DEFAULTS["required_sources"], metavar="CONTRASTS",
         help="with several --source contrasts: which of them must be given (comma-separated; default: the first)")
    _add(io, "--target", default="", help="target contrast, e.g. t2 or ct; with --init-from, default: the bundle's")
    _add(io, "--output", required=True, metavar="DIR", help="output folder (checkpoints, bundles, logs)")
    _add(io, "--val-subjects", nargs="+", default=DEFAULTS["val_subjects"], metavar="SUBJECT",
         help="held-out subject ids (space- or comma-separated); default: the data's split, else the last subject")
    _add(io, "--resume", action="store_true", help="continue from OUTPUT/checkpoint-last.pt at the same step")
    _add(io, "--overwrite", action="store_true", help="reuse a non-empty OUTPUT (its training files are replaced)")
    _add(io, "--device", default=DEFAULTS["device"], help="auto (CUDA when available), cpu, cuda or cuda:N")
    _add(io, "--workers", type=int, default=DEFAULTS["workers"], help="threads for reading and preparing volumes")

    ft = p.add_argument_group("fine-tuning at a site (docs/models.md, Commissioning at your site)")
    _add(ft, "--init-from", default=DEFAULTS["init_from"], metavar="BUNDLE",
         help="start from this model bundle's weights: G, and D2 when the bundle has it and --variant uses it "
              "(bundles hold G and D2, never D1: D1 starts afresh). The architecture, the input recipe ("
              + ", ".join(flag(n) for n in RECIPE) + ") and the contrasts come from the "
              "bundle; giving one of those flags with another value is refused. Without --variant: the "
              f"bundle's. Options you do not give take the fine-tuning defaults: {FINETUNE_DEFAULTS.text()}. "
              "Which site scans recalibrate the expected error: --site-calibration")
    _add(ft, "--freeze-encoder", action="store_true",
         help="with --init-from: G's encoder (the down path and bottleneck) gets no gradient and keeps its "
              "batch-norm statistics, so it stays exactly the parent's")
    _add(ft, "--recalibrate-only", action="store_true",
         help="with --init-from: no training; re-fit the bundle's expected-error factor on every subject of "
              "--data and write OUTPUT/model-recalibrated.safetensors (the parent is never modified)")
    _add(ft, "--site-calibration", default=DEFAULTS["site_calibration"], choices=SITE_CALIBRATIONS,
         help="which site scans the fine-tuned bundle's expected-error factor is re-fitted on. loso: leave one "
              "subject out: for each site subject one more fine-tune with the same settings on the others "
              "predicts it (N site subjects cost N extra fine-tunes, each as long as the final one), and the "
              "final model trains on all of them; validation: the validation subjects, held out of "
              "fine-tuning (no extra cost, but they do not train the model); slab: a slab of each subject's "
              "slices is held out of training. auto: slab with one site subject, loso with 2-"
              f"{LOSO_MOST_SUBJECTS}, validation with more or when --val-subjects (or the data's split) names "
              "them. --recalibrate-only needs none of these: the weights never saw the site's scans, so every "
              "one is used directly")
    _add(ft, "--site", default=DEFAULTS["site"],
         help="the site's name, recorded in the fine-tuned bundle (default: the data folder's name)")

    tr = p.add_argument_group("training")
    _add(tr, "--variant", default=DEFAULTS["variant"], choices=VARIANTS, help="which networks and losses to train")
    _add(tr, "--iterations", type=int, default=DEFAULTS["iterations"], help="number of training steps")
    _add(tr, "--batch-size", type=int, default=DEFAULTS["batch_size"], help="slices per step and process")
    _add(tr, "--lr-g", type=float, default=DEFAULTS["lr_g"], help="generator learning rate (Adam)")
    _add(tr, "--lr-d1", type=float, default=DEFAULTS["lr_d1"], help="global critic D1 learning rate")
    _add(tr, "--lr-d2", type=float, default=DEFAULTS["lr_d2"], help="local discriminator D2 learning rate")
    _add(tr, "--lambda1", type=float, default=DEFAULTS["lambda1"], help="weight of the global adversarial term")
    _add(tr, "--lambda2", type=float, default=DEFAULTS["lambda2"], help="weight of the local adversarial term")
    _add(tr, "--beta", type=float, default=DEFAULTS["beta"], help="attention exponent in (1 - M)^beta")
    _add(tr, "--p", type=int, default=DEFAULTS["p"], choices=(1, 2), help="reconstruction norm (1 = L1, 2 = L2)")
    _add(tr, "--n-critic", type=int, default=DEFAULTS["n_critic"], help="D1 updates per step")
    _add(tr, "--gp-every", type=int, default=DEFAULTS["gp_every"],
         help="lazy gradient penalty: compute it on every k-th D1 update, scaled by k (1 = every update)")
    _add(tr, "--seed", type=int, default=DEFAULTS["seed"], help="random seed")
    _add(tr, "--gp-batch", type=int, default=DEFAULTS["gp_batch"],
         help="gradient penalty on a random sub-batch of this many slices, an unbiased estimate of the whole "
              "batch's (0 = the whole batch)")
    _add(tr, "--amp", action="store_true", help="bf16 mixed precision (CUDA only)")
    _add(tr, "--d1-precision", default=DEFAULTS["d1_precision"], choices=D1_PRECISIONS,
         help="D1's forward passes: auto (as the rest of the step), fp32, or bf16 autocast on any device")
    _add(tr, "--d1-layout", default=DEFAULTS["d1_layout"], choices=D1_LAYOUTS,
         help="D1's memory format: auto (channels_last on CUDA), contiguous or channels_last")
    _add(tr, "--d2-target", default=DEFAULTS["d2_target"], choices=D2_TARGETS,
         help="D2's labels for fake slices: binary (the paper: 0) or error (1 - local |error| / --error-tau)")
    _add(tr, "--error-weight", type=float, default=DEFAULTS["error_weight"],
         help="weight of the expected-error head's Laplace likelihood")
    _add(tr, "--error-tau", type=float, default=DEFAULTS["error_tau"],
         help="normalised error counted as fully fake (--d2-target error)")

    da = p.add_argument_group("data preparation and sampling")
    _add(da, "--spacing", default=DEFAULTS["spacing"],
         help="in-plane spacing in mm, 'x,y' or one number; default: the data's")
    _add(da, "--target-kind", default=DEFAULTS["target_kind"], choices=TARGET_KINDS,
         help="target intensity mapping: mri (robust percentile) or ct (HU clipped to [-1024, 3071]); "
              "auto = ct when --target is ct")
    _add(da, "--tumour-fraction", type=float, default=DEFAULTS["tumour_fraction"],
         help="probability of drawing a slice among those with tumour (when label masks exist)")
    _add(da, "--no-flip", action="store_true", help="no random left-right flips")
    _add(da, "--source-norm", default=DEFAULTS["source_norm"], choices=tuple(SOURCE_NORMS),
         help="source intensity normalisation: p99.5 (foreground 99.5th percentile), median, peak (main "
              "histogram mode), zscore (1 + z/3 over the foreground) or rank (histogram equalisation in the "
              "foreground: blind to monotone contrast changes); median/peak/zscore/rank resist bright fat "
              "in unstripped heads")
    _add(da, "--context-slices", type=int, default=DEFAULTS["context_slices"],
         help="adjacent slices on each side fed to the generator as channels (2.5-D); 0 = 2-D")
    _add(da, "--augment", type=float, default=DEFAULTS["augment"],
         help="strength 0..1 of the source's scanner/contrast augmentation (bias field, gamma, scale, blur, noise)")
    _add(da, "--input-dropout", type=float, default=DEFAULTS["input_dropout"],
         help="with several --source contrasts: the probability of withholding each optional input per training "
              "sample (always withheld where a subject lacks it), so one model serves every subset of its inputs")
    _add(da, "--crop-size", type=int, default=DEFAULTS["crop_size"],
         help="train on random square crops of this size centred in the foreground (0 = whole slices); "
              "a multiple of 2^depth, at least 32. Validation and inference always use whole slices")

    ar = p.add_argument_group("architecture")
    _add(ar, "--base-width", type=int, default=DEFAULTS["base_width"], help="generator width of the first level")
    _add(ar, "--depth", type=int, default=DEFAULTS["depth"], help="generator down-samplings (slices padded to 2^depth)")
    _add(ar, "--d2-base-width", type=int, default=DEFAULTS["d2_base_width"], help="local discriminator width")
    _add(ar, "--no-error-head", action="store_true", help="no expected-error output (the trust map) on the generator")
    _add(ar, "--d2-head", default=DEFAULTS["d2_head"], choices=D2_HEADS,
         help="patch: the paper's D2 (a logit per 8×8 cell); pixel: a U-Net D2 with a logit per pixel")

    mo = p.add_argument_group("monitoring")
    _add(mo, "--val-every", type=int, default=DEFAULTS["val_every"],
         help="validate every N steps (0 = only at the end)")
    _add(mo, "--best-metric", default=DEFAULTS["best_metric"],
         help="metric that picks model-best: {psnr,mae,ssim}_{volume,foreground,tumour}")
    _add(mo, "--log-every", type=int, default=DEFAULTS["log_every"], help="write losses every N steps")
    _add(mo, "--checkpoint-every", type=int, default=DEFAULTS["checkpoint_every"],
         help="write checkpoint-last.pt every N steps")
    return p


def _config(args: argparse.Namespace, slicer: bool) -> RunConfig:
    values = {name: getattr(args, name) for name in DEFAULTS if hasattr(args, name)}
    values.update({field: not getattr(args, flag) for flag, field in NEGATED.items()})
    values["val_subjects"] = [v.strip() for item in args.val_subjects for v in item.split(",") if v.strip()]
    return RunConfig(data=Path(args.data).expanduser(), source=args.source, target=args.target,
                     output=Path(args.output).expanduser(), **values, slicer=slicer)


def given_options(argv: Sequence[str] | None, cfg: RunConfig, slicer: bool) -> frozenset[str]:
    """The RunConfig options the user set: the flags present on the command line (parsed once more with every
    default suppressed). Slicer's panel passes every field, so there a value equal to its default counts as
    not set."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    present = {NEGATED.get(name, name) for name in vars(parser.parse_args(argv))}
    if slicer:
        present = {n for n in present if n not in DEFAULTS or getattr(cfg, n) != DEFAULTS[n]}
    return frozenset(present)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line parsed; usage errors exit 2. --source and --target are required unless --init-from
    gives them (the bundle's contrasts)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    missing = [f"--{name}" for name in ("source", "target") if not getattr(args, name)]
    if missing and not args.init_from:
        parser.error(f"the following arguments are required: {', '.join(missing)} (or --init-from BUNDLE, "
                     "whose contrasts they default to)")
    return args


def resolved_config(argv: Sequence[str] | None, slicer: bool = False) -> RunConfig:
    """The run's RunConfig from the command line, with ``--init-from``'s recipe and defaults applied."""
    cfg = _config(parse(argv), slicer)
    return resolve(cfg, given_options(argv, cfg, slicer))


def main(argv: Sequence[str] | None = None, slicer: bool = False) -> int:
    safe_console()
    parse(argv)  # usage errors (exit 2) before anything else
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    tag = f"[rank {rank}] " if world > 1 else ""

    def fail(message: str, code: int, every_rank: bool = False) -> int:
        if rank == 0 or every_rank:
            print(f"{PROG}: {tag}{message}", file=sys.stderr, flush=True)
        return code

    try:
        # The exception classes are imported above, torch-free: an interrupt or a broken PyTorch during
        # this import must show its own cause, not an UnboundLocalError from the except clauses.
        cfg = resolved_config(argv, slicer)  # a wrong parent bundle is refused before torch is imported
        try:
            from .loop import run_training
            from .recalibration import recalibrate_only
        except ImportError as exc:
            return fail(f"error: PyTorch or another requirement could not be imported ({exc}); reinstall it", 2)
        return recalibrate_only(cfg) if cfg.recalibrate_only else run_training(cfg)
    except DualDError as exc:  # TrainingError, a full disk (OutputWriteError), …: one line
        return fail(f"error: {exc}", 2)
    except TrainingStopped as exc:
        return fail(str(exc), exc.exit_code, every_rank=exc.exit_code == EXIT_NON_FINITE)
    except KeyboardInterrupt:
        return fail("interrupted before the checkpoint could be saved", 130)
    except Exception as exc:
        if os.environ.get("DUALD_DEBUG"):
            traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return fail(f"unexpected error: {type(exc).__name__}: {first} (set DUALD_DEBUG=1 for the traceback)", 1,
                    every_rank=True)


if __name__ == "__main__":
    sys.exit(main())
