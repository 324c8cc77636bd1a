"""Scanner and contrast augmentation of the source slices, so a model does not learn one site's look.

Another hospital's T1 differs from the training T1s by a smooth intensity non-uniformity (coil
sensitivity), a different tissue contrast curve (sequence, TR/TE/TI), a global scale error of the
normalisation, noise and resolution. Each is simulated by a MONAI transform (a maintained library of
the field, not hand-written code), applied to the *source* only — the target is what the model must
still predict — and with the same random parameters on every channel of a 2.5-D stack:

- ``RandBiasField``: multiplicative smooth field (Legendre polynomial, degree 3);
- ``RandAdjustContrast``: gamma on the slice's [min, max] range (background 0 stays 0);
- ``RandScaleIntensity``: global scale error of the normalisation;
- ``RandGaussianSmooth``: thicker slices / lower resolution;
- ``RandGaussianNoise``: noise, inside the foreground only.

``strength`` in [0, 1] scales every range; 0 is the identity (the batch is returned untouched). The
background (exact 0 after the intensity mapping, as at inference) is kept at 0. Deterministic under
a seed: the transforms draw from one ``numpy.random.RandomState`` owned by this object, whose state
the training checkpoint does not need to carry (a resumed run re-seeds it from the step number).
"""

from __future__ import annotations

import numpy as np
import torch


class SourceAugmentation:
    """Callable ``[B, C, H, W] → [B, C, H, W]`` for normalised source batches."""

    def __init__(self, strength: float, seed: int = 0) -> None:
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"the augmentation strength must be between 0 and 1, got {strength!r}")
        self.strength = float(strength)
        self.rng = np.random.RandomState(seed)
        self._transforms = self._build() if self.strength > 0 else []

    def _build(self) -> list:
        # MONAI is imported here so inference and `duald-train --augment 0` never pay its import time.
        from monai.transforms import (
            RandAdjustContrast,
            RandBiasField,
            RandGaussianNoise,
            RandGaussianSmooth,
            RandScaleIntensity,
        )

        s = self.strength
        transforms = [
            RandBiasField(degree=3, coeff_range=(0.0, 0.3 * s), prob=0.5),
            RandAdjustContrast(gamma=(1.0 - 0.4 * s, 1.0 + 0.6 * s), prob=0.5),
            RandScaleIntensity(factors=0.15 * s, prob=0.5),
            RandGaussianSmooth(sigma_x=(0.25, 0.25 + s), sigma_y=(0.25, 0.25 + s), prob=0.2 * s),
            RandGaussianNoise(mean=0.0, std=0.03 * s, prob=0.3),
        ]
        for t in transforms:
            t.set_random_state(state=self.rng)
        return transforms

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if not self._transforms:
            return batch
        if batch.ndim != 4:
            raise ValueError(f"expected a [B, C, H, W] batch, got shape {tuple(batch.shape)}")
        out = torch.empty_like(batch)
        for b in range(batch.shape[0]):
            x = batch[b]
            y = x
            for t in self._transforms:
                y = t(y)
            y = torch.as_tensor(y, dtype=batch.dtype, device=batch.device)  # MONAI returns a MetaTensor
            out[b] = torch.where(x != 0, y.clamp_min(0.0), torch.zeros((), dtype=batch.dtype, device=batch.device))
        return out
