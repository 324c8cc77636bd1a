"""A model's input contrasts: which sequences of one study G reads, in which order, which may be absent.

A bundle declares its inputs (:class:`InputDeclaration`): an ordered tuple of :class:`InputSpec`. The first is
the **reference**: it is required, and every other input is brought onto its grid before synthesis (the
outputs are on that grid too). An optional input may be absent; G then sees it as withheld, the way it saw it
withheld at random during training (input dropout), so one model serves every subset it declares.

How a withheld input reaches G (``missing``): ``"mask"`` — its slices are zeros and one availability channel
per optional input says 1 (given) or 0 (withheld). Channel layout, per sample: the slice stack of every input
in declaration order (``2·context + 1`` channels each, ``slicestack``), then one availability channel per
optional input, in declaration order. A one-input bundle (every bundle before format 4) is the special case
``(InputSpec(source, required=True),)``: its channels are unchanged.

No torch, no SimpleITK: the command lines, the bundle reader and the Slicer panel use this before PyTorch is
imported.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.errors import DualDError
from ..core.vocabulary import CONTRAST_ALIASES, LABEL_CONTRAST, canonical_contrast, known_contrasts_text
from .slicestack import channels as stack_channels

MISSING_MODES: tuple[str, ...] = ("mask",)
MAX_INPUTS = 6


class InputError(DualDError):
    """Inputs that do not fit a model's declaration (one sentence naming the input)."""


@dataclass(frozen=True)
class InputSpec:
    """One input contrast (canonical name, ``vocabulary.CONTRAST_ALIASES``) and whether it must be given."""

    contrast: str
    required: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"contrast": self.contrast, "required": self.required}


def _contrast(name: Any, what: str) -> str:
    """The canonical image contrast of ``name``, or :class:`InputError` naming it."""
    key = canonical_contrast(name) if isinstance(name, str) else None
    if key is None or key == LABEL_CONTRAST or key not in CONTRAST_ALIASES:
        raise InputError(f"{what} {name!r} is not a known image contrast; known: {known_contrasts_text()}")
    return key


@dataclass(frozen=True)
class InputDeclaration:
    """The ordered inputs of a model; the first is the required reference. Validated on construction."""

    inputs: tuple[InputSpec, ...]
    missing: str = "mask"

    def __post_init__(self) -> None:
        if not self.inputs:
            raise InputError("a model needs at least one input contrast")
        if len(self.inputs) > MAX_INPUTS:
            raise InputError(f"a model reads at most {MAX_INPUTS} input contrasts, got {len(self.inputs)}")
        seen: set[str] = set()
        for spec in self.inputs:
            if spec.contrast in seen:
                raise InputError(f"input contrast {spec.contrast} is declared twice")
            seen.add(spec.contrast)
        if not self.inputs[0].required:
            raise InputError(f"the first input ({self.inputs[0].contrast}) is the reference grid and must be required")
        if self.missing not in MISSING_MODES:
            raise InputError(f"unknown missing-input mode {self.missing!r}; expected one of {', '.join(MISSING_MODES)}")

    # ------------------------------------------------------------------ construction and storage
    @classmethod
    def single(cls, contrast: str) -> InputDeclaration:
        """The one-input declaration of every bundle before format 4 (its source modality, required).
        A name that is not a known contrast (an old or hand-made bundle) is kept as it is."""
        return cls((InputSpec(canonical_contrast(contrast) or contrast, True),))

    @classmethod
    def parse(cls, sources: str | Iterable[str], required: str | Iterable[str] | None = None) -> InputDeclaration:
        """``"t1,flair"`` (the command lines' ``--source``): the first is the required reference, the others
        optional unless listed in ``required`` (``"t1,flair"`` or a list). Aliases are accepted
        (``t1ce`` → ``t1c``); an unknown name, a repeated contrast or a required name that is not among the
        sources is refused naming it."""
        names = [s.strip() for s in (sources.split(",") if isinstance(sources, str) else sources) if s.strip()]
        if not names:
            raise InputError("--source names no contrast")
        keys = [_contrast(n, "source contrast") for n in names]
        for key, name in zip(keys, names, strict=True):
            if keys.count(key) > 1:
                raise InputError(f"source contrast {name!r} is given twice (as {key})")
        wanted = {keys[0]}
        if required is not None:
            listed = [r.strip() for r in (required.split(",") if isinstance(required, str) else required) if r.strip()]
            for name in listed:
                key = _contrast(name, "required contrast")
                if key not in keys:
                    raise InputError(f"required contrast {name!r} is not one of the sources ({', '.join(keys)})")
                wanted.add(key)
        return cls(tuple(InputSpec(k, k in wanted) for k in keys))

    @classmethod
    def from_list(cls, data: Any, missing: str = "mask") -> InputDeclaration:
        """From a bundle's JSON ``inputs`` list; anything malformed is an :class:`InputError`."""
        if not isinstance(data, list):
            raise InputError(f"the model's inputs must be a list, got {type(data).__name__}")
        specs = []
        for item in data:
            if not isinstance(item, dict) or set(item) != {"contrast", "required"}:
                raise InputError(f"each model input must be {{contrast, required}}, got {item!r}")
            if not isinstance(item["required"], bool):
                raise InputError(f"input {item['contrast']!r}: required must be true or false")
            specs.append(InputSpec(_contrast(item["contrast"], "model input"), item["required"]))
        return cls(tuple(specs), missing)

    def to_list(self) -> list[dict[str, Any]]:
        return [spec.to_dict() for spec in self.inputs]

    # ------------------------------------------------------------------ questions
    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def reference(self) -> str:
        return self.inputs[0].contrast

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.contrast for spec in self.inputs)

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(spec.contrast for spec in self.inputs if spec.required)

    @property
    def optional(self) -> tuple[str, ...]:
        return tuple(spec.contrast for spec in self.inputs if not spec.required)

    def channels(self, context: int) -> int:
        """G's input channels: every input's slice stack, then one availability channel per optional input."""
        return len(self.inputs) * stack_channels(context) + len(self.optional)

    def describe(self) -> str:
        """``t1 + optional flair, t1c`` (panel, model cards, errors)."""
        text = " + ".join(self.required)
        return f"{text} + optional {', '.join(self.optional)}" if self.optional else text

    def check_given(self, given: Iterable[str] | Mapping[str, Any]) -> tuple[str, ...]:
        """The canonical names of the given inputs, in declaration order; :class:`InputError` (naming the input)
        for an unknown contrast, a contrast given twice, one this model does not read, or a required one
        missing."""
        keys: list[str] = []
        for name in given:
            key = _contrast(name, "input")
            if key in keys:
                raise InputError(f"input {name!r} is given twice (as {key})")
            keys.append(key)
        extra = [k for k in keys if k not in self.names]
        if extra:
            raise InputError(f"this model does not read {extra[0]} (it reads {self.describe()})")
        absent = [k for k in self.required if k not in keys]
        if absent:
            raise InputError(f"this model needs a {absent[0]} input (it reads {self.describe()})")
        return tuple(k for k in self.names if k in keys)

    def stack_inputs(self, stacks: Sequence[Any | None], available: Any = None) -> Any:
        """G's input batch in this declaration's channel layout, the one definition training and inference share.

        ``stacks``: one ``[B, S, H, W]`` slice stack per input in declaration order (numpy or torch, all of one
        kind; ``slicestack.slice_stack`` of each input's prepared volume), None for an input no sample has.
        ``available``: ``[B, len(optional)]`` 1/0 (or bool) per optional input and sample, of the stacks' kind
        (None: every given stack is available). A withheld input's slices are zeroed. A one-input declaration
        returns its stack itself (the channels of every bundle before format 4, no copy)."""
        if len(stacks) != len(self.inputs):
            raise InputError(f"expected {len(self.inputs)} input stacks ({', '.join(self.names)}), got {len(stacks)}")
        first = stacks[0]
        if first is None:
            raise InputError(f"the reference input {self.reference} is required")
        if len(self.inputs) == 1:
            return first
        lib = _array_lib(first)
        b = first.shape[0]
        given = [stacks[i] is not None for i, spec in enumerate(self.inputs) if not spec.required]
        if lib is np:
            given_row = np.asarray(given, first.dtype)
            available = given_row if available is None else np.asarray(available, first.dtype) * given_row
            available = np.broadcast_to(available, (b, len(given)))
        else:  # an input with no stack is withheld in every sample, whatever ``available`` says
            given_row = first.new_tensor(given, dtype=first.dtype)
            available = given_row if available is None else available.to(first.dtype) * given_row
            available = available.expand(b, -1)
        parts, column = [], 0
        for spec, stack in zip(self.inputs, stacks, strict=True):
            if spec.required:
                if stack is None:
                    raise InputError(f"the required input {spec.contrast} is missing")
                parts.append(stack)
                continue
            if stack is None:
                parts.append(lib.zeros(first.shape, dtype=first.dtype) if lib is np else first.new_zeros(first.shape))
            else:
                parts.append(stack * available[:, column, None, None, None])
            column += 1
        h, w = first.shape[-2:]
        flags = available[:, :, None, None] * (lib.ones((1, 1, h, w), dtype=first.dtype) if lib is np
                                               else first.new_ones((1, 1, h, w)))
        return lib.concatenate([*parts, flags], 1) if lib is np else lib.cat([*parts, flags], 1)

    def accepts(self, given: Iterable[str]) -> bool:
        """Whether :meth:`check_given` would accept ``given`` (automatic model choice)."""
        try:
            self.check_given(given)
        except InputError:
            return False
        return True


def _array_lib(array: Any) -> Any:
    """numpy for a numpy array, torch for a tensor (imported only then: this module stays torch-free)."""
    if isinstance(array, np.ndarray):
        return np
    import torch

    return torch
