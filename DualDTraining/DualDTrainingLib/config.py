"""``RunConfig``: every option of a training run and its default, defined once and torch-free.

``duald-train``'s argparse defaults are read from these fields (``cli.py``), so ``--help`` never imports
torch and never repeats a number; the Slicer XML descriptor (``DualDTraining.xml``) is checked against
them by ``Testing/test_training_cli.py``. The loss weights and optimiser settings are ``TrainingConfig``'s
(``training_config.py``): the fields of the same names take their defaults from it, and
:meth:`RunConfig.training` hands them back. :meth:`RunConfig.check` checks every value without importing torch.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from DualDSynthesisLib.core.vocabulary import canonical_contrast
from DualDSynthesisLib.model.architecture import ArchitectureConfig
from DualDSynthesisLib.model.inputs import InputDeclaration, InputError
from DualDSynthesisLib.model.intensity import source_mapping

from .best_metric import check_metric_name
from .errors import TrainingError
from .option_values import check_fraction, parse_spacing
from .training_config import D1_LAYOUTS, D1_PRECISIONS, FIXED_SETTINGS, TrainingConfig

TARGET_KINDS = ("auto", "mri", "ct")  # --target-kind: which target intensity mapping (auto: ct when the target is ct)
# --site-calibration: which site scans a fine-tune's expected-error factor is re-fitted on (site_calibration.py);
# auto: slab with one site subject, loso with 2..LOSO_MOST_SUBJECTS, else the validation subjects
SITE_CALIBRATIONS = ("auto", "loso", "validation", "slab")
LOSO_MOST_SUBJECTS = 5  # above this many site subjects, auto holds out the validation subjects instead


@dataclass
class RunConfig:
    data: Path
    source: str  # one contrast, or several ("t1,flair": the first the required reference; model/inputs.py)
    target: str
    output: Path
    variant: str = TrainingConfig.variant.value
    iterations: int = 20000
    val_subjects: list[str] = field(default_factory=list)
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"
    batch_size: int = 8
    lr_g: float = TrainingConfig.lr_g
    lr_d1: float = TrainingConfig.lr_d1
    lr_d2: float = TrainingConfig.lr_d2
    lambda1: float = TrainingConfig.lambda1
    lambda2: float = TrainingConfig.lambda2
    beta: float = TrainingConfig.beta
    p: int = TrainingConfig.p
    n_critic: int = TrainingConfig.n_critic
    val_every: int = 1000
    best_metric: str = "psnr_foreground"
    seed: int = 0
    spacing: str = ""
    target_kind: str = "auto"
    base_width: int = 8
    depth: int = 4
    d2_base_width: int = 16
    tumour_fraction: float = 0.5
    flip: bool = True
    crop_size: int = 0
    source_norm: str = "rank"
    context_slices: int = 1
    augment: float = 1.0
    required_sources: str = ""  # with several --source contrasts: the others that must be given ("" = the first only)
    input_dropout: float = 0.5  # probability of withholding each optional input per training sample
    error_head: bool = True
    d2_head: str = "patch"
    d2_target: str = TrainingConfig.d2_target
    error_weight: float = TrainingConfig.error_weight
    error_tau: float = TrainingConfig.error_tau
    gp_every: int = TrainingConfig.gp_every
    gp_batch: int = TrainingConfig.gp_batch
    amp: bool = False
    d1_precision: str = "auto"  # D1's forwards: auto (as the step: bf16 with --amp on CUDA), fp32 or bf16 (any device)
    d1_layout: str = "auto"  # D1's memory format: auto (channels_last on CUDA), contiguous or channels_last
    workers: int = 2
    log_every: int = 10
    checkpoint_every: int = 200
    init_from: str = ""  # a parent bundle to fine-tune (init_from.py); "" = train from scratch
    freeze_encoder: bool = False  # G's down path gets no gradient (fine-tuning on very few subjects)
    recalibrate_only: bool = False  # with init_from: re-fit only the expected-error factor, no training
    site_calibration: str = "auto"  # with init_from: SITE_CALIBRATIONS
    site: str = ""  # the site's name in a fine-tuned bundle's provenance; "" = the data folder's name
    slicer: bool = False  # progress as Slicer <filter-progress> lines on stdout

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every field that has a default → that default (the required ones are left out)."""
        found: dict[str, Any] = {}
        for f in fields(cls):
            if f.default is not MISSING:
                found[f.name] = f.default
            elif f.default_factory is not MISSING:
                found[f.name] = f.default_factory()
        return found

    def inputs(self) -> InputDeclaration:
        """The model's input contrasts from ``--source`` and ``--required-sources`` (``TrainingError`` naming a
        bad one)."""
        try:
            return InputDeclaration.parse(self.source, self.required_sources or None)
        except InputError as exc:
            raise TrainingError(str(exc)) from None

    @property
    def reference(self) -> str:
        """The reference input's contrast as the user spelled it (the first ``--source`` name)."""
        return self.source.split(",")[0].strip()

    def architecture(self) -> ArchitectureConfig:
        return ArchitectureConfig(in_channels=self.inputs().channels(self.context_slices), g_base_width=self.base_width,
                                  g_depth=self.depth, d2_base_width=self.d2_base_width, g_error_head=self.error_head,
                                  d2_head=self.d2_head)

    def training(self) -> TrainingConfig:
        """The step's settings: every ``TrainingConfig`` field from the option of its name (the
        ``FIXED_SETTINGS`` keep their defaults)."""
        return TrainingConfig(**{name: getattr(self, name) for name in STEP_OPTIONS})

    def check(self) -> None:
        """Every option's value, without importing torch: a bad one raises one TrainingError naming it."""
        for name in ("iterations", "batch_size", "log_every", "checkpoint_every", "workers"):
            if getattr(self, name) < 1:
                raise TrainingError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.val_every < 0:
            raise TrainingError(f"--val-every must be ≥ 0 (0 = only at the end), got {self.val_every}")
        if self.target_kind not in TARGET_KINDS:
            raise TrainingError(f"--target-kind must be auto, mri or ct, got {self.target_kind!r}")
        if self.crop_size and (self.crop_size < 32 or self.crop_size % 2**self.depth):
            raise TrainingError(
                f"--crop-size must be 0 or a multiple of {2**self.depth} of at least 32, got {self.crop_size}"
            )
        for name, value, choices in (("--d1-precision", self.d1_precision, D1_PRECISIONS),
                                     ("--d1-layout", self.d1_layout, D1_LAYOUTS)):
            if value not in choices:
                raise TrainingError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        if (self.freeze_encoder or self.recalibrate_only) and not self.init_from:
            flag = "--freeze-encoder" if self.freeze_encoder else "--recalibrate-only"
            raise TrainingError(f"{flag} needs --init-from BUNDLE (a model to start from)")
        self._check_site_calibration()
        if self.required_sources and len(self.inputs()) == 1:
            raise TrainingError("--required-sources needs several --source contrasts (e.g. --source t1,flair)")
        try:
            check_metric_name(self.best_metric)
            self.training()
            if self.source or not self.init_from:  # with --init-from and no --source, the bundle's are taken later
                self.architecture()
            parse_spacing(self.spacing)
            source_mapping(self.source_norm)
            check_fraction(self.augment, "--augment")
            check_fraction(self.tumour_fraction, "--tumour-fraction")
            check_fraction(self.input_dropout, "--input-dropout")
        except ValueError as exc:
            raise TrainingError(str(exc)) from None

    def _check_site_calibration(self) -> None:
        if self.site_calibration not in SITE_CALIBRATIONS:
            raise TrainingError(f"--site-calibration must be one of {', '.join(SITE_CALIBRATIONS)}, got "
                                f"{self.site_calibration!r}")
        if self.site_calibration == "auto":
            return
        if not self.init_from:
            raise TrainingError("--site-calibration needs --init-from BUNDLE (it chooses how a fine-tune "
                                "recalibrates at the site)")
        if self.recalibrate_only:
            raise TrainingError(f"--site-calibration {self.site_calibration} contradicts --recalibrate-only, "
                                "which trains nothing and so recalibrates on every site subject directly")

    def resolved_target_kind(self) -> str:
        if self.target_kind != "auto":
            return self.target_kind
        return "ct" if canonical_contrast(self.target) == "ct" else "mri"


@dataclass(frozen=True)
class FineTuneDefaults:
    """The defaults that replace RunConfig's when ``--init-from`` is given and the option is not: a site's
    1-5 paired subjects, a model that already synthesises. A lower generator learning rate moves the
    weights less far from the parent's; fewer steps because there are few slices to learn from (and
    minutes, not hours, on a CPU); the scanner/contrast augmentation on, so a few scans do not teach one
    scanner's exact contrast; validation at the end only (one subject's held-out slab is small)."""

    iterations: int = 200
    lr_g: float = 5e-5
    batch_size: int = 4
    augment: float = 1.0
    val_every: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def text(self) -> str:
        """For --help."""
        return ", ".join(f"--{name.replace('_', '-')} {value:g}" for name, value in self.as_dict().items())


FINETUNE_DEFAULTS = FineTuneDefaults()

# The RunConfig options that are TrainingConfig settings (the step's loss weights and optimisers).
STEP_OPTIONS = tuple(f.name for f in fields(TrainingConfig) if f.name not in FIXED_SETTINGS)
