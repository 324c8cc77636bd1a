"""Input dropout: each optional input withheld at random per training sample, so one model serves every subset.

A multi-input model (``model/inputs.py``) must synthesise from its reference input alone, from all of its
inputs, and from every subset in between. During training each optional input of each sample is withheld
with probability ``--input-dropout`` (its slices zeroed and its availability channel 0, exactly what the
engine feeds when a user has no such scan), and always when the sample's subject has no such scan. A
required input is never withheld. The draws come from the sampler's own seeded generator (numpy's on the
host, the device sampler's ``torch.Generator`` on a GPU), one uniform number per sample and optional input,
so a run is deterministic under ``--seed`` whatever the thread count; a one-input model draws nothing, so
its batches are bit-identical to those of a build without this feature.

:func:`input_batch` is the one function the host sampler, the device sampler and validation (with no
dropout: every input the subject has) build their batches through.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from DualDSynthesisLib.model.inputs import InputDeclaration


def input_batch(inputs: InputDeclaration, stacks: Sequence[Any | None], present: Any = None, p: float = 0.0,
                uniform: Any = None) -> Any:
    """G's batch ``[B, C, H, W]`` from one slice stack per input (``InputDeclaration.stack_inputs``).

    ``present``: ``[B, len(inputs.optional)]`` bool, whether each sample's subject has each optional input
    (None: every given stack is present); ``uniform``: draws in [0, 1) of the same shape (None: no dropout,
    as in validation); an optional input is withheld where it is absent or where its draw is below ``p``."""
    if not inputs.optional:
        return inputs.stack_inputs(stacks)
    available = present
    if uniform is not None:
        kept = ~(uniform < p)
        available = kept if present is None else present & kept
    return inputs.stack_inputs(stacks, available)
