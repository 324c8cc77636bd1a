"""Loss terms of the paper, one small function each (equation numbers follow the paper).

Pure torch. Every function takes tensors shaped ``[B, 1, H, W]`` (images) or the networks' raw
outputs, and returns a scalar tensor.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F


def reconstruction_loss(
    fake: torch.Tensor, real: torch.Tensor, p: int = 1, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 1 (and Eq. 6 when ``weight`` is F): mean of ``weight ⊙ |real − fake|^p``, p ∈ {1, 2}."""
    if p not in (1, 2):
        raise ValueError(f"the reconstruction exponent p must be 1 or 2, got {p!r}")
    if fake.shape != real.shape:
        raise ValueError(f"fake and real shapes differ: {tuple(fake.shape)} vs {tuple(real.shape)}")
    err = (real - fake).abs()
    if p == 2:
        err = err * err
    if weight is not None:
        err = err * weight
    return err.mean()


def confidence_to_grid(confidence: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bring D2's confidence map M (``[B, 1, h, w]``, values in [0, 1]) to the slice grid.

    Bilinear interpolation with ``align_corners=False``: each of D2's output elements is the
    centre of its own ``H/h × W/w`` cell, which is how a strided conv's output maps back onto its
    input. Clamped to [0, 1] because interpolation of values in [0, 1] stays in [0, 1] only up to
    rounding.
    """
    if tuple(confidence.shape[-2:]) == tuple(size):
        return confidence.clamp(0.0, 1.0)
    grid = F.interpolate(confidence, size=size, mode="bilinear", align_corners=False)
    return grid.clamp(0.0, 1.0)


def difficulty_weight(confidence: torch.Tensor, size: tuple[int, int], beta: float) -> torch.Tensor:
    """Eq. 6's attention map ``F = (1 − M)^β`` on the slice grid.

    M is detached: F only re-weights G's reconstruction loss, so no gradient may flow through it
    into D2 (D2 learns from its own BCE alone). ``β = 0`` gives F ≡ 1, i.e. plain L1/L2.
    """
    if beta < 0:
        raise ValueError(f"the attention exponent beta must be ≥ 0, got {beta!r}")
    m = confidence_to_grid(confidence.detach(), size)
    return torch.pow(1.0 - m, beta)


def attention_loss(
    fake: torch.Tensor, real: torch.Tensor, confidence: torch.Tensor, beta: float = 1.0, p: int = 1
) -> torch.Tensor:
    """Eq. 6: ``L_AttG = mean(F ⊙ |Y − G(X)|^p)`` with ``F = (1 − M)^β``."""
    return reconstruction_loss(fake, real, p, difficulty_weight(confidence, tuple(fake.shape[-2:]), beta))


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    weight: float = 10.0,
    epsilon: torch.Tensor | None = None,
    subset: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 3's penalty ``λ·E[(‖∇D1(x̂)‖₂ − 1)²]`` with ``x̂ = ε·real + (1 − ε)·fake``, ε ~ U[0, 1] per sample.

    The gradient is taken with ``create_graph=True`` so the penalty itself back-propagates into
    the critic's parameters.

    ``subset`` (indices into the batch) computes the penalty on those samples only: the mean over a
    sub-batch drawn uniformly without replacement is an unbiased estimate of the mean over the batch, so
    it needs no factor (each sample's gradient is its own: D1 normalises per sample). ``epsilon``, when
    given, has one value per sample of the whole batch; the subset picks from it too.
    """
    if real.shape != fake.shape:
        raise ValueError(f"real and fake shapes differ: {tuple(real.shape)} vs {tuple(fake.shape)}")
    if subset is not None:
        real, fake = real[subset], fake[subset]
        epsilon = None if epsilon is None else epsilon[subset]
    if epsilon is None:
        epsilon = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    x_hat = (epsilon * real.detach() + (1.0 - epsilon) * fake.detach()).requires_grad_(True)
    scores = critic(x_hat)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    norms = grad.flatten(1).norm(2, dim=1)
    return weight * ((norms - 1.0) ** 2).mean()


def critic_loss(scores_fake: torch.Tensor, scores_real: torch.Tensor) -> torch.Tensor:
    """Eq. 2's Wasserstein part for D1: ``E[D1(G(X))] − E[D1(Y)]`` (add the gradient penalty)."""
    return scores_fake.mean() - scores_real.mean()


def generator_global_loss(scores_fake: torch.Tensor) -> torch.Tensor:
    """G's adversarial term from D1: ``−E[D1(G(X))]``."""
    return -scores_fake.mean()


def dense_bce(logits: torch.Tensor, target: float | torch.Tensor) -> torch.Tensor:
    """Eq. 4–5: BCE of every output element of D2 against ``target`` (1 = real, 0 = fake), or against
    a per-element target map of D2's output shape (see :func:`error_aware_labels`).

    Computed from logits (``binary_cross_entropy_with_logits``) for numerical stability; equal to
    ``binary_cross_entropy(sigmoid(logits), target)`` where the latter does not saturate.
    """
    if isinstance(target, torch.Tensor):
        if target.shape != logits.shape:
            raise ValueError(f"BCE target map {tuple(target.shape)} differs from D2's output {tuple(logits.shape)}")
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"BCE targets lie in [0, 1], got {target!r}")
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def error_aware_labels(fake: torch.Tensor, real: torch.Tensor, grid: tuple[int, int], tau: float) -> torch.Tensor:
    """D2's target map for a fake slice: ``1 − clip(local mean |G(x) − y| / τ, 0, 1)`` on D2's grid.

    The paper labels every element of a fake slice 0, so D2 learns "fake" everywhere and its map says
    little about *where* G is wrong. With these labels a fake region that matches the real image is
    labelled (nearly) real, so ``1 − M`` learns to estimate the local error in units of τ. "Local" is
    the mean over each output element's cell (adaptive average pooling onto ``grid``). No gradient.
    """
    if tau <= 0:
        raise ValueError(f"the error scale tau must be positive, got {tau!r}")
    err = (fake.detach().float() - real.float()).abs()
    if tuple(err.shape[-2:]) != tuple(grid):
        err = F.adaptive_avg_pool2d(err, grid)
    return 1.0 - (err / tau).clamp(0.0, 1.0)


def laplace_nll(prediction: torch.Tensor, log_scale: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of a Laplace distribution, ``|y − μ| / b + log b`` (constant dropped).

    ``μ`` is detached: the likelihood only trains the scale ``b = exp(log_scale)``, whose optimum is
    the expected ``|y − μ|`` at that pixel, so the second output of G is an expected-error map in the
    normalised target units, while μ keeps being trained by the reconstruction and adversarial terms
    alone (the likelihood alone under-trains μ: it can buy a low loss with a large b). ``log_scale`` is
    clamped so that one wild pixel cannot produce inf.
    """
    if prediction.shape != real.shape or log_scale.shape != real.shape:
        raise ValueError(f"shapes differ: {tuple(prediction.shape)}, {tuple(log_scale.shape)}, {tuple(real.shape)}")
    log_b = log_scale.float().clamp(-12.0, 4.0)
    return ((real.float() - prediction.detach().float()).abs() * torch.exp(-log_b) + log_b).mean()


def difficulty_from_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """D2's logits → the difficulty map ``1 − M`` on the slice grid: the one mapping used by the engine
    (heatmap) and by validation."""
    return 1.0 - confidence_to_grid(torch.sigmoid(logits.float()), size)


def expected_error(log_scale: torch.Tensor) -> torch.Tensor:
    """G's second output → expected |error| in normalised target units (the Laplace scale b)."""
    return torch.exp(log_scale.float().clamp(-12.0, 4.0))


def generator_total(
    reconstruction: torch.Tensor,
    adv_global: torch.Tensor | None,
    adv_local: torch.Tensor | None,
    lambda1: float,
    lambda2: float,
) -> torch.Tensor:
    """Eq. 7: ``L_G = L_AttG + λ1·L_adv1 + λ2·L_adv2``; an absent discriminator contributes nothing."""
    total = reconstruction
    if adv_global is not None:
        total = total + lambda1 * adv_global
    if adv_local is not None:
        total = total + lambda2 * adv_local
    return total
