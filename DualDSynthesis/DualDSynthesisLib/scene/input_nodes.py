"""A multi-input model's inputs as scene nodes (issue 23): one volume selector per input the model declares, the
other inputs read from their nodes, and the checks a panel or the viewer needs before the engine runs.

Slicer-core (no Qt) and torch-free: a model's inputs come from its metadata (``bundle.read_metadata``), so the
panel can show its selectors before PyTorch is installed. The reference input (the model's first) is the panel's
source volume; every other input is a ``{contrast: node}`` entry, None for an optional one left empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from ..core.vocabulary import LABEL_CONTRAST, canonical_contrast, known_contrasts_text
from ..imaging.bundle import read_metadata
from ..inference.contract import SynthesisEngine
from . import mrml_io


@dataclass(frozen=True)
class InputSlot:
    """One input a model declares, as a selector shows it."""

    contrast: str  # canonical (``vocabulary.CONTRAST_ALIASES``)
    required: bool

    @property
    def title(self) -> str:
        """``FLAIR``, ``T1c``: the contrast as a label writes it."""
        return self.contrast.upper().replace("T1C", "T1c")

    @property
    def label(self) -> str:
        return f"{self.title} volume{'' if self.required else ' (optional)'}:"

    @property
    def tooltip(self) -> str:
        if self.required:
            return f"The {self.title} image of the same subject (required by this model); any grid."
        return (f"The {self.title} image of the same subject, if there is one (any grid); left empty, the model "
                "synthesises without it, as it learned to.")


def input_slots(bundle_path: str | Path | None) -> list[InputSlot]:
    """Every input the bundle declares, the reference first; [] when there is no bundle or it cannot be read
    (the panel's model line says why)."""
    if bundle_path is None or not Path(bundle_path).is_file():
        return []
    try:
        inputs = read_metadata(bundle_path).inputs
    except (OSError, ValueError, ImportError):
        return []
    return [InputSlot(spec.contrast, spec.required) for spec in inputs.inputs]


def read_other_inputs(input_node: Any, other_nodes: Mapping[str, Any] | None) -> dict[str, sitk.Image]:
    """``{contrast: image}`` of the other inputs' nodes (None entries skipped: an optional input left empty),
    read without changing the scene. ``ValueError`` naming the input for an unknown contrast, a contrast given
    twice (aliases count), the source volume chosen again, or one volume chosen for two contrasts."""
    images: dict[str, sitk.Image] = {}
    chosen: dict[str, str] = {} if input_node is None else {input_node.GetID(): "the source volume"}
    for name, node in (other_nodes or {}).items():
        key = canonical_contrast(name)
        if key is None or key == LABEL_CONTRAST:
            raise ValueError(f"input {name!r} is not a known image contrast; known: {known_contrasts_text()}")
        if node is None:
            continue
        if key in images:
            raise ValueError(f"two volumes are given for the {key} input; choose one")
        title = InputSlot(key, True).title
        if node.GetID() in chosen:
            raise ValueError(f"the {title} volume ({node.GetName()}) is {chosen[node.GetID()]} too; choose the "
                             f"subject's {title} image")
        chosen[node.GetID()] = f"the {title} volume"
        images[key] = mrml_io.image_from_volume_node(node)
    return images


def check_against_model(engine: SynthesisEngine, others: Mapping[str, Any]) -> None:
    """The given inputs fit the engine's model (``InputDeclaration.check_given``: every required one given, none
    it does not read), before its minutes; an engine without metadata (a test double) checks them itself."""
    metadata = getattr(engine, "metadata", None)
    if metadata is None:
        return
    inputs = metadata.inputs
    missing = next((k for k in inputs.required[1:] if k not in others), None)
    if missing is not None:
        title = InputSlot(missing, True).title
        raise ValueError(f"this model needs a {title} volume too (it reads {inputs.describe()}); choose one")
    inputs.check_given([inputs.reference, *others])  # InputError (a ValueError) naming an input it does not read
