"""The loss terms of the steps since the last log line, kept on the device until they are read.

``DualDTrainer.step`` returns detached device tensors; reading one (``float()``) waits for the GPU to
finish the step. The loop collects them here and reads them every ``--log-every`` steps in one
transfer, after the trainer's own finiteness check (:meth:`DualDTrainer.check_finite`), so a
non-finite term is reported before its value is logged.
"""

from __future__ import annotations

import torch

from .step import DualDTrainer


class LossWindow:
    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def __len__(self) -> int:
        return len(self.steps)

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        self.steps.append(terms)

    def read(self, trainer: DualDTrainer) -> dict[str, float]:
        """Mean of every term over the window (float64, as the floats were averaged before); empties it.
        Raises ``NonFiniteLossError`` (from ``trainer``) first if any checked term was NaN/inf."""
        trainer.check_finite()
        steps, self.steps = self.steps, []
        if not steps:
            return {}
        keys = list(steps[0])
        table = torch.stack([torch.stack([s[k].double() for k in keys]) for s in steps])
        return dict(zip(keys, table.mean(0).tolist(), strict=True))
