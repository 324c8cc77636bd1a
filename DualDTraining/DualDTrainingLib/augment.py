"""Scanner and contrast augmentation of the source slices, so a model does not learn one site's look.

Another hospital's T1 differs from the training T1s by a smooth intensity non-uniformity (coil
sensitivity), a different tissue contrast curve (sequence, TR/TE/TI), a global scale error of the
normalisation, resolution and noise. Each is simulated on the *source* only — the target is what the
model must still predict — with the same random parameters on every channel of a 2.5-D stack:

- bias field: ``exp(Σ c_ij P_i(x) P_j(y))`` with Legendre polynomials of total degree ≤ 3, the model of
  TorchIO's ``RandomBiasField`` and MONAI's ``RandBiasField``;
- gamma ``x ↦ m·(x/m)^γ`` on the slice's own maximum m, as MONAI's ``RandAdjustContrast``;
- a global scale error of the normalisation (MONAI ``RandScaleIntensity``);
- Gaussian blur (thicker slices, lower resolution; MONAI ``RandGaussianSmooth``);
- Gaussian noise inside the foreground (MONAI ``RandGaussianNoise``).

Why not call MONAI's transforms: they work one sample at a time in Python; measured on the 2-core CPU
this project is developed on, one 3×256×240 sample took 27 ms (bias field) to 224 ms (smoothing), i.e.
several times a whole training step for a batch of 8. These batched tensor versions of the same
models run on the batch's device (the GPU during GPU training) in a few milliseconds.

``strength`` in [0, 1] scales every range; 0 is the identity (the batch is returned untouched). The
background (exact 0 after the intensity mapping, as at inference) stays 0. Deterministic under a seed:
the per-sample parameters come from one CPU ``torch.Generator`` owned by this object (CPU and GPU runs
draw the same parameters); the noise images from a generator on the batch's device.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from .option_values import check_fraction

_BLUR_RADIUS = 3  # 7-tap separable Gaussian: enough for sigma ≤ 1.25 px


def _legendre(x: torch.Tensor, degree: int) -> list[torch.Tensor]:
    polys = [torch.ones_like(x), x]
    for n in range(1, degree):
        polys.append(((2 * n + 1) * x * polys[n] - n * polys[n - 1]) / (n + 1))
    return polys[: degree + 1]


class SourceAugmentation:
    """Callable ``[B, C, H, W] → [B, C, H, W]`` for normalised source batches."""

    def __init__(self, strength: float, seed: int = 0, degree: int = 3, inputs: int = 1, passthrough: int = 0) -> None:
        """``inputs``: a multi-input model's batch holds that many equal blocks of image channels, each another
        sequence (augmented independently: each has its own contrast curve), then ``passthrough`` channels
        (the availability channels) left as they are."""
        check_fraction(strength, "the augmentation strength")
        self.strength, self.degree, self.seed = float(strength), degree, seed
        self.inputs, self.passthrough = inputs, passthrough
        self.generator = torch.Generator().manual_seed(seed)
        self._noise_generators: dict[str, torch.Generator] = {}

    def rng_state(self) -> dict[str, torch.Tensor]:
        """Every generator's state (for a checkpoint: a resumed run augments as an uninterrupted one)."""
        state = {"params": self.generator.get_state()}
        state.update({f"noise:{k}": g.get_state().cpu() for k, g in self._noise_generators.items()})
        return state

    def set_rng_state(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["params"])
        for key, value in state.items():
            if key.startswith("noise:"):
                device = key[len("noise:"):]
                self._noise_generators[device] = torch.Generator(device=device)
                self._noise_generators[device].set_state(value)

    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise drawn on the batch's own device (no host-side array of image size)."""
        key = str(like.device)
        if key not in self._noise_generators:
            self._noise_generators[key] = torch.Generator(device=like.device).manual_seed(self.seed + 1)
        return torch.randn(like.shape, generator=self._noise_generators[key], device=like.device, dtype=like.dtype)

    def _uniform(self, n: int, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=self.generator)

    def _chosen(self, n: int, p: float) -> torch.Tensor:
        return torch.rand(n, generator=self.generator) < p

    def _bias_field(self, coeffs: torch.Tensor, chosen: torch.Tensor, h: int, w: int) -> torch.Tensor:
        device = coeffs.device
        ys = _legendre(torch.linspace(-1, 1, h, device=device), self.degree)
        xs = _legendre(torch.linspace(-1, 1, w, device=device), self.degree)
        basis = torch.stack([ys[i][:, None] * xs[j][None, :] for i, j in self._pairs()])  # [T, H, W]
        field = torch.exp(torch.einsum("bt,thw->bhw", coeffs, basis))
        return torch.where(chosen[:, None, None] > 0, field, torch.ones_like(field))

    def _pairs(self) -> list[tuple[int, int]]:
        return [(i, j) for i in range(self.degree + 1) for j in range(self.degree + 1 - i)]

    def _parameters(self, b: int) -> tuple[torch.Tensor, bool]:
        """Every per-sample parameter, drawn on the host in one fixed order, as one ``[B, K]`` tensor:
        bias coefficients (T), bias on/off, gamma, scale, blur on/off, blur sigma, noise std.
        One tensor so a GPU batch gets them in one asynchronous copy, not a synchronising copy each."""
        s, n_terms = self.strength, len(self._pairs())
        k = 0.3 * s
        coeffs = self._uniform(b * n_terms, -k, k).view(b, n_terms)
        bias_on = self._chosen(b, 0.5).float()
        gamma = torch.where(self._chosen(b, 0.5), self._uniform(b, math.log(1 - 0.4 * s), math.log(1 + 0.6 * s)).exp(),
                            torch.ones(b))
        scale = torch.where(self._chosen(b, 0.5), self._uniform(b, 1 - 0.15 * s, 1 + 0.15 * s), torch.ones(b))
        blur = self._chosen(b, 0.2 * s)
        any_blur = bool(blur.any())  # a host tensor: no device sync
        sigma = self._uniform(b, 0.25, 0.25 + s) if any_blur else torch.ones(b)
        std = torch.where(self._chosen(b, 0.3), self._uniform(b, 0.0, 0.03 * s), torch.zeros(b))
        table = torch.cat([coeffs, torch.stack([bias_on, gamma, scale, blur.float(), sigma, std], 1)], 1)
        return table, any_blur

    def _blur(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = torch.arange(-_BLUR_RADIUS, _BLUR_RADIUS + 1, device=x.device, dtype=x.dtype)
        kernel = torch.exp(-0.5 * (t[None, :] / sigma.to(x.device, x.dtype)[:, None]) ** 2)
        kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [B·C, 2r+1]
        r = _BLUR_RADIUS
        flat = x.reshape(1, b * c, h, w)
        flat = F.conv2d(F.pad(flat, (r, r, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=b * c)
        flat = F.conv2d(F.pad(flat, (0, 0, r, r), mode="replicate"), kernel[:, None, :, None], groups=b * c)
        return flat.view(b, c, h, w)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.strength == 0:
            return batch
        if batch.ndim != 4:
            raise ValueError(f"expected a [B, C, H, W] batch, got shape {tuple(batch.shape)}")
        if self.inputs == 1 and not self.passthrough:
            return self._augment(batch)
        images = batch.shape[1] - self.passthrough
        per = images // self.inputs
        blocks = [self._augment(batch[:, i * per : (i + 1) * per]) for i in range(self.inputs)]
        return torch.cat([*blocks, batch[:, images:]], 1)

    def _augment(self, batch: torch.Tensor) -> torch.Tensor:
        """One sequence's channels (a slice stack) with one set of parameters per sample."""
        b, _c, h, w = batch.shape
        dev = batch.device
        table, any_blur = self._parameters(b)
        if dev.type == "cuda":
            table = table.pin_memory()
        table = table.to(dev, non_blocking=True)
        n_terms = len(self._pairs())
        coeffs, (bias_on, gamma, scale, blur, sigma, std) = table[:, :n_terms], table[:, n_terms:].unbind(1)
        fg = batch != 0
        x = batch * self._bias_field(coeffs, bias_on, h, w)[:, None]
        per_sample = (b, 1, 1, 1)
        gamma, scale, std = (v.to(x.dtype).view(per_sample) for v in (gamma, scale, std))
        peak = x.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
        x = peak * (x / peak).clamp_min(0) ** gamma
        x = x * scale
        if any_blur:
            x = torch.where(blur.view(per_sample) > 0, self._blur(x, sigma), x)
        x = x + self._noise(x) * std
        return torch.where(fg, x.clamp_min(0.0), torch.zeros((), dtype=x.dtype, device=dev))
