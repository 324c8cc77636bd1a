"""Start a model that reads more inputs from one that reads fewer (issue 23): the parent's weights, unchanged,
with G's first convolution widened by zero weights for every input channel the parent did not have.

The widened generator computes exactly the parent's function whatever the new inputs hold (their weights are 0,
and so are those of the new availability channels), so training starts from the parent's quality on the inputs
it knew and learns what the others add; a one-input T1 → T2 model trained long on a GPU becomes the start of a
T1 (+ FLAIR, T1c) → T2 model trained briefly. Channel blocks are matched by contrast name, in the channel layout
of :meth:`InputDeclaration.stack_inputs` (each input's slice stack, then one availability channel per optional
input).
"""

from __future__ import annotations

import torch

from .inputs import InputDeclaration, InputError
from .slicestack import channels as stack_channels


def _channel_index(inputs: InputDeclaration, context: int) -> dict[str, list[int]]:
    """Each input's channels (its slice stack) and, under ``"?" + name``, its availability channel."""
    s = stack_channels(context)
    index = {name: list(range(i * s, (i + 1) * s)) for i, name in enumerate(inputs.names)}
    for j, name in enumerate(inputs.optional):
        index["?" + name] = [len(inputs.names) * s + j]
    return index


def widened_state(parent: dict[str, torch.Tensor], parent_inputs: InputDeclaration,
                  child: dict[str, torch.Tensor], child_inputs: InputDeclaration,
                  context: int) -> dict[str, torch.Tensor]:
    """The child generator's state dict holding the parent's weights: every tensor copied, except the one whose
    input channels differ (G's first convolution), which gets the parent's channels in the child's layout and
    zeros elsewhere. :class:`InputError` when the child does not read every input of the parent with the same
    reference, or when the networks differ in anything but those input channels."""
    if child_inputs.reference != parent_inputs.reference:
        raise InputError(f"the parent's reference input is {parent_inputs.reference}, not {child_inputs.reference}")
    lost = [name for name in parent_inputs.names if name not in child_inputs.names]
    if lost:
        raise InputError(f"the new model does not read the parent's input {lost[0]}")
    now_required = [n for n in parent_inputs.optional if n in child_inputs.required]
    if now_required:  # its availability channel was 1 whenever it was given: no longer the same function
        raise InputError(f"the parent's optional input {now_required[0]} is required in the new model")
    if set(parent) != set(child):
        raise InputError("the parent's generator has other layers than the new model's (another architecture)")
    src, dst = _channel_index(parent_inputs, context), _channel_index(child_inputs, context)
    out: dict[str, torch.Tensor] = {}
    widened = []
    for key, weight in parent.items():
        target = child[key]
        if weight.shape == target.shape:
            out[key] = weight.clone()
            continue
        if weight.dim() != 4 or weight.shape[0] != target.shape[0] or weight.shape[2:] != target.shape[2:]:
            raise InputError(f"the parent's {key} has shape {tuple(weight.shape)}, the new model's "
                             f"{tuple(target.shape)}: only the input channels may differ")
        wide = torch.zeros_like(target)
        for name, channels in src.items():
            wide[:, dst[name]] = weight[:, channels].to(wide.dtype)
        out[key] = wide
        widened.append(key)
    if len(widened) > 1:
        raise InputError(f"more than one layer differs ({', '.join(widened)}): another architecture")
    return out
