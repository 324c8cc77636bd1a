"""One adversarial training step for all five variants of the paper's ablation.

Order within a step: D1 (``n_critic`` updates, WGAN-GP), then D2 (dense BCE), then G (Eq. 7).
Pure torch, no Slicer: runs on a GPU server, under ``torchrun``, or inside Slicer's Python.

Distributed training does not wrap the networks in ``DistributedDataParallel``: the critic's
gradient penalty needs a double backward and several forwards per backward, which DDP's reducer
does not support. Instead the caller passes ``grad_sync``, called on each network after its
backward and before its optimiser step, which all-reduces (averages) the gradients: the same
arithmetic as DDP, without its constraints.

Host synchronisation: :meth:`DualDTrainer.step` returns its loss terms as detached device tensors.
Every term that guards an update is checked for finiteness on the device (one ``isfinite`` per
update, no host read); :meth:`DualDTrainer.check_finite` reads those checks in one transfer and raises
:class:`NonFiniteLossError` naming the first bad step and term. With ``defer_checks=False`` (the
default) ``check_finite`` runs before every optimiser step, so a NaN never reaches the weights — at
the price of a host sync per update, which on a GPU stalls the launch queue. With
``defer_checks=True`` the caller calls ``check_finite`` when it reads the values anyway (every
``--log-every`` steps) and before anything it writes to disk: the trade-off is that the update of a
non-finite step (and those after it) may already have been applied to the in-memory weights, so the
caller must not save them (``loop.py`` checks before every checkpoint, validation and export). The
arithmetic is the same in both modes: at a fixed seed they give bit-identical weights.

On CUDA the networks and batches are ``channels_last`` and Adam is the fused kernel (``fused=True``);
both can be forced on the CPU (``channels_last=True``, ``fused=True``) so tests run that code there.

D1's gradient penalty can be lazy (``TrainingConfig.gp_every = k``): computed on every k-th D1 update
and multiplied by k, so its expected contribution to D1's gradient is unchanged while k − 1 of every
k updates skip its double backward (StyleGAN2's lazy regularisation). ``k = 1`` is Eq. 3 exactly. It can
also be computed on a random sub-batch (``TrainingConfig.gp_batch = n``): the mean over n slices drawn
without replacement is an unbiased estimate of the batch's mean, so no factor is needed beside k's.

D1's precision and layout can be forced apart from the rest of the step (``d1_precision``: ``"fp32"`` or
``"bf16"`` autocast on any device, the CPU included; ``d1_layout``: ``"contiguous"`` or ``"channels_last"``),
so their effect on the step time is measured on its own; ``"auto"`` runs D1 as the rest of the step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from DualDSynthesisLib.core.vocabulary import D2_TARGETS, Variant
from DualDSynthesisLib.model import losses
from DualDSynthesisLib.model.architecture import ArchitectureConfig
from torch import nn

from .training_config import D1_LAYOUTS, D1_PRECISIONS, TrainingConfig  # torch-free; the trainer takes them

__all__ = ["D2_TARGETS", "DualDTrainer", "NonFiniteLossError", "TrainingConfig", "Variant"]


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or inf; raised before the optimiser step, so weights stay finite."""

    def __init__(self, term: str, value: float, step: int) -> None:
        super().__init__(f"loss term {term} became {value} at step {step}; stopping before it corrupts the weights")
        self.term, self.value, self.step = term, value, step


GradSync = Callable[[nn.Module], None]


@contextmanager
def _frozen(modules: list[nn.Module]) -> Iterator[None]:
    """``modules`` without weight gradients inside the block (gradients still flow through them to
    their inputs), restored afterwards even when the block raises."""
    for module in modules:
        module.requires_grad_(False)
    try:
        yield
    finally:
        for module in modules:
            module.requires_grad_(True)


class DualDTrainer:
    """Holds G, D1, D2 and their optimisers; :meth:`step` performs one alternating update.

    All three networks always exist so checkpoints and bundles share one layout, but a network the
    variant does not use is never run forward, never gets an optimiser and so never changes.
    """

    def __init__(
        self,
        architecture: ArchitectureConfig,
        config: TrainingConfig,
        device: torch.device | str = "cpu",
        grad_sync: GradSync | None = None,
        amp: bool = False,
        *,
        defer_checks: bool = False,
        channels_last: bool | None = None,
        fused: bool | None = None,
        freeze_encoder: bool = False,
        d1_precision: str = "auto",
        d1_layout: str = "auto",
    ) -> None:
        if d1_precision not in D1_PRECISIONS or d1_layout not in D1_LAYOUTS:
            raise ValueError(f"d1_precision must be one of {', '.join(D1_PRECISIONS)} and d1_layout one of "
                             f"{', '.join(D1_LAYOUTS)}, got {d1_precision!r} and {d1_layout!r}")
        self.architecture, self.config = architecture, config
        self.device = torch.device(device)
        self.grad_sync = grad_sync
        cuda = self.device.type == "cuda"
        # bf16 autocast only on CUDA: CPU autocast is slower than fp32 for these conv sizes.
        self.amp = amp and cuda
        self.defer_checks = defer_checks
        # channels_last: cuDNN's fastest layout for bf16 convolutions; on the CPU oneDNN prefers its own.
        self.memory_format = torch.channels_last if (cuda if channels_last is None else channels_last) \
            else torch.contiguous_format
        fused = cuda if fused is None else fused
        self.d1_precision = d1_precision
        self.d1_format = {"auto": self.memory_format, "contiguous": torch.contiguous_format,
                          "channels_last": torch.channels_last}[d1_layout]
        self.generator = architecture.generator().to(self.device, memory_format=self.memory_format)
        self.critic = architecture.global_critic().to(self.device, memory_format=self.d1_format)
        self.local = architecture.local_discriminator().to(self.device, memory_format=self.memory_format)
        v = config.variant
        # Fine-tuning on a few subjects: G's down path (and bottleneck) keeps the parent's weights and its
        # batch-norm statistics (held in eval mode in every step), so it stays bit-identical.
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            self.generator.encoders.requires_grad_(False)

        def adam(module: nn.Module, lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
            # fused: one kernel for all parameters instead of several per tensor (None: torch's default).
            params = [q for q in module.parameters() if q.requires_grad]
            return torch.optim.Adam(params, lr, betas, fused=True if fused else None)

        self.opt_g = adam(self.generator, config.lr_g, config.betas_g)
        self.opt_d1 = adam(self.critic, config.lr_d1, config.betas_d1) if v.uses_global else None
        self.opt_d2 = adam(self.local, config.lr_d2, config.betas_d2) if v.uses_local else None
        self.step_count = 0
        # (step, term names, stacked values) of every guarded update not yet read on the host.
        self._unchecked: list[tuple[int, tuple[str, ...], torch.Tensor]] = []

    def _autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext()

    def _d1_autocast(self) -> Any:
        """D1's precision inside the step's autocast: forced bf16 or fp32, or (auto) the step's own."""
        if self.d1_precision == "auto":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.d1_precision == "bf16")

    def _d1_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in D1's memory format (itself when D1 shares the networks' format)."""
        return x if self.d1_format == self.memory_format else x.contiguous(memory_format=self.d1_format)

    def _penalty_subset(self, batch: int) -> torch.Tensor | None:
        """The samples of a ``batch`` the penalty is computed on (None: all), drawn on the device (no sync)."""
        n = self.config.gp_batch
        if n == 0 or n >= batch:
            return None
        return torch.randperm(batch, device=self.device)[:n]

    def _check(self, values: dict[str, torch.Tensor]) -> None:
        """Queue the finiteness check of the terms that guard the next update; read it now unless deferred."""
        stacked = torch.stack([v.detach().float() for v in values.values()])
        self._unchecked.append((self.step_count + 1, tuple(values), stacked))
        if not self.defer_checks:
            self.check_finite()

    def check_finite(self) -> None:
        """Read every queued check (one host sync) and raise :class:`NonFiniteLossError` for the first
        non-finite term, naming its step; the queue is emptied either way."""
        if not self._unchecked:
            return
        pending, self._unchecked = self._unchecked, []
        values = torch.cat([t for _, _, t in pending])
        bad = (~torch.isfinite(values)).nonzero()
        if bad.numel() == 0:
            return
        first = int(bad[0, 0])
        for step, names, stacked in pending:
            if first < len(names):
                raise NonFiniteLossError(names[first], float(stacked[first]), step)
            first -= len(names)

    def _penalty_due(self, update: int) -> bool:
        """Whether D1 update number ``update`` (0-based, counted over the whole run) computes the penalty.
        Derived from the step count, so a resumed run keeps the schedule without extra state."""
        return update % self.config.gp_every == 0

    def _update(self, loss: torch.Tensor, module: nn.Module, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_sync is not None:
            self.grad_sync(module)
        opt.step()

    def step(self, source: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """One update of every network the variant uses; returns the loss terms as detached 0-d tensors
        on the device (reading them, e.g. ``float()``, is the caller's host sync)."""
        if source.ndim != 4 or target.ndim != 4 or source.shape[0] != target.shape[0]:
            raise ValueError(f"expected [B, C, H, W] batches, got {tuple(source.shape)} and {tuple(target.shape)}")
        cfg, v = self.config, self.config.variant
        fmt = self.memory_format
        source = source.to(self.device, non_blocking=True).contiguous(memory_format=fmt)
        target = target.to(self.device, non_blocking=True).contiguous(memory_format=fmt)
        self.generator.train()
        if self.freeze_encoder:
            self.generator.encoders.eval()
        out: dict[str, torch.Tensor] = {}

        if v.uses_global or v.uses_local:
            with torch.no_grad(), self._autocast():
                fake_d = self.generator(source)[:, :1].float()
        if v.uses_global:
            self.critic.train()
            real_d1, fake_d1 = self._d1_input(target), self._d1_input(fake_d)
            for i in range(cfg.n_critic):
                with self._autocast(), self._d1_autocast():
                    wdist = losses.critic_loss(self.critic(fake_d1), self.critic(real_d1))
                    if self._penalty_due(self.step_count * cfg.n_critic + i):
                        gp = losses.gradient_penalty(self.critic, real_d1, fake_d1, cfg.gp_weight * cfg.gp_every,
                                                     subset=self._penalty_subset(real_d1.shape[0]))
                        d1 = wdist + gp
                    else:  # a lazy update: no penalty (reported as 0, so the logged mean is its expectation)
                        gp = torch.zeros((), device=self.device)
                        d1 = wdist
                self._check({"D1": d1})
                self._update(d1, self.critic, self.opt_d1)
            out.update(d1=d1, d1_gp=gp, d1_wasserstein=-wdist)
        if v.uses_local:
            self.local.train()
            with self._autocast():
                logits_fake = self.local(fake_d)
                fake_label: float | torch.Tensor = 0.0
                if cfg.d2_target == "error":
                    fake_label = losses.error_aware_labels(fake_d, target, tuple(logits_fake.shape[-2:]), cfg.error_tau)
                d2 = 0.5 * (losses.dense_bce(self.local(target), 1.0) + losses.dense_bce(logits_fake, fake_label))
            self._check({"D2": d2})
            self._update(d2, self.local, self.opt_d2)
            out["d2"] = d2

        # G's loss flows through D1/D2 to G only: their weights' gradients would be computed (2.55 M for D1)
        # and thrown away at their next update, so they are not asked for.
        with _frozen([net for net, used in ((self.critic, v.uses_global), (self.local, v.uses_local)) if used]):
            terms, fake = self._generator_update(source, target)
        with torch.no_grad():
            out["l1"] = (fake - target).abs().mean()
        out.update({term.lower(): value for term, value in terms.items()})  # the checked terms, logged
        self.step_count += 1
        return {k: t.detach() for k, t in out.items()}

    def _generator_update(
        self, source: torch.Tensor, target: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """G's loss (reconstruction or attention, the adversarial terms, the expected-error likelihood),
        checked, and G's update; returns the loss terms and the synthetic batch."""
        cfg, v = self.config, self.config.variant
        with self._autocast():
            output = self.generator(source).float()
            fake = output[:, :1]
            adv1 = None
            if v.uses_global:
                with self._d1_autocast():
                    adv1 = losses.generator_global_loss(self.critic(self._d1_input(fake)))
            adv2 = None
            logits = None
            if v.uses_local:
                logits = self.local(fake).float()
                adv2 = losses.dense_bce(logits, 1.0)
            if v.uses_attention:
                rec = losses.attention_loss(fake, target, torch.sigmoid(logits), cfg.beta, cfg.p)
            else:
                rec = losses.reconstruction_loss(fake, target, cfg.p)
            g = losses.generator_total(rec, adv1, adv2, cfg.lambda1, cfg.lambda2)
            nll = None
            if output.shape[1] == 2:  # the expected-error head
                nll = losses.laplace_nll(fake, output[:, 1:], target)
                g = g + cfg.error_weight * nll
        terms = {"G": g, "G_reconstruction": rec}
        if nll is not None:
            terms["G_error_nll"] = nll
        if adv1 is not None:
            terms["G_adv_global"] = adv1
        if adv2 is not None:
            terms["G_adv_local"] = adv2
        self._check(terms)
        self._update(g, self.generator, self.opt_g)
        return terms, fake

    def networks(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "critic": self.critic, "local": self.local}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        opts = {"generator": self.opt_g, "critic": self.opt_d1, "local": self.opt_d2}
        return {k: o for k, o in opts.items() if o is not None}
