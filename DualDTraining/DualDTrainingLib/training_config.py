"""``TrainingConfig``: the loss weights and optimiser settings of one training step (torch-free).

The one definition of these defaults: ``RunConfig``'s options of the same names take theirs from here
(``config.py``), ``duald-train``'s argparse defaults from ``RunConfig``, and ``Testing/test_training_cli.py``
checks the Slicer XML against them. ``step.DualDTrainer`` runs the step; a bundle's provenance and a
checkpoint record these settings as ``to_dict()``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from DualDSynthesisLib.core.vocabulary import D2_TARGETS, Variant

# TrainingConfig settings that no option of duald-train sets (RunConfig has a field for every other one).
FIXED_SETTINGS = ("betas_g", "betas_d1", "betas_d2", "gp_weight")

# How D1 (the global critic) runs, beside G: "auto" as the rest of the step (bf16 autocast with --amp on CUDA,
# channels_last on CUDA); the others force it on any device, so each can be measured on its own (--d1-precision,
# --d1-layout; DualDTrainer's d1_precision and d1_layout). Execution options: the arithmetic is Eq. 2-3's.
D1_PRECISIONS = ("auto", "fp32", "bf16")
D1_LAYOUTS = ("auto", "contiguous", "channels_last")


@dataclass(frozen=True)
class TrainingConfig:
    """Loss weights and optimiser settings. Defaults are ours, chosen for inputs normalised to ~[0, 1]:
    the reconstruction term is ~0.05 there, so the adversarial weights are small enough that the
    discriminators refine rather than dominate (the paper does not publish its values)."""

    variant: Variant = Variant.DUAL_ATTENTION
    lambda1: float = 1e-3  # weight of D1's adversarial term (Wasserstein scores are unbounded)
    lambda2: float = 1e-2  # weight of D2's adversarial BCE
    beta: float = 1.0  # attention exponent in F = (1 - M)^beta
    p: int = 1  # reconstruction exponent (1 = L1, 2 = L2)
    lr_g: float = 2e-4
    lr_d1: float = 1e-4
    lr_d2: float = 2e-4
    betas_g: tuple[float, float] = (0.5, 0.999)
    betas_d1: tuple[float, float] = (0.5, 0.9)  # WGAN-GP's recommended momentum
    betas_d2: tuple[float, float] = (0.5, 0.999)
    n_critic: int = 1  # D1 updates per step; 1 keeps a dual_attention step within 2x a unet step
    gp_weight: float = 10.0  # lambda of the gradient penalty (Eq. 3)
    gp_every: int = 1  # lazy penalty: on every k-th D1 update, scaled by k (1 = every update, Eq. 3 exactly)
    gp_batch: int = 0  # the penalty on a random sub-batch of this many slices (0, or ≥ the batch: all of them)
    error_weight: float = 0.1  # weight of the Laplace NLL that trains G's expected-error head (if it has one)
    d2_target: str = "binary"  # "binary": the paper's fake → 0; "error": fake → 1 − local|error|/tau
    error_tau: float = 0.1  # normalised-intensity error that counts as "completely fake" for d2_target="error"

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "variant", Variant(self.variant))
        except ValueError:
            names = ", ".join(v.value for v in Variant)
            raise ValueError(f"unknown variant {self.variant!r}; choose one of {names}") from None
        if self.p not in (1, 2):
            raise ValueError(f"p must be 1 or 2, got {self.p!r}")
        if self.d2_target not in D2_TARGETS:
            raise ValueError(f"d2_target must be one of {', '.join(D2_TARGETS)}, got {self.d2_target!r}")
        if self.error_tau <= 0:
            raise ValueError(f"error_tau must be positive, got {self.error_tau!r}")
        if self.n_critic < 1:
            raise ValueError(f"n_critic must be at least 1, got {self.n_critic!r}")
        if self.gp_every < 1:
            raise ValueError(f"gp_every must be at least 1, got {self.gp_every!r}")
        if self.gp_batch < 0:
            raise ValueError(f"gp_batch must be ≥ 0 (0 = the whole batch), got {self.gp_batch!r}")
        for name in ("lambda1", "lambda2", "beta", "gp_weight", "error_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)!r}")
        for name in ("lr_g", "lr_d1", "lr_d2"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["variant"] = self.variant.value
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:  # the one policy for every config: refused, never silently dropped
            raise ValueError(f"unknown training setting(s) {', '.join(unknown)}; this needs a newer DualD")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
