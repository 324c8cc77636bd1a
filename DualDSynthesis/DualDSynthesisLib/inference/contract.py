"""The synthesis engine's contract: what the Slicer logic, the web viewer and the CLI rely on.

Torch-free (and SimpleITK only for type names), so the Slicer-core logic can catch the engine's errors
and type its results without importing ``engine.py`` (which imports torch). ``engine.SynthesisEngine``
implements :class:`SynthesisEngine`; test doubles implement it too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..core.errors import DualDError

if TYPE_CHECKING:
    import SimpleITK as sitk

    from ..imaging.bundle import BundleMetadata
    from ..imaging.preprocess import PreprocessingSpec

__all__ = [
    "CancelCallback",
    "ProgressCallback",
    "SynthesisCancelled",
    "SynthesisEngine",
    "SynthesisError",
    "SynthesisResult",
]

ProgressCallback = Callable[[float, str], None]  # (fraction 0..1, message)
CancelCallback = Callable[[], bool]  # True: stop at the next check


class SynthesisError(DualDError):
    """Bad input, bad model or bad device; the message is one sentence for the user."""


class SynthesisCancelled(Exception):
    """The caller's cancel flag was set; nothing was returned, written or added to a scene."""


@dataclass
class SynthesisResult:
    synthetic: sitk.Image
    heatmap: sitk.Image | None  # None when the bundle has no heatmap source or no heatmap was asked for
    warnings: list[str] = field(default_factory=list)
    device: str = "cpu"
    seconds: float = 0.0
    target_modality: str = ""
    heatmap_source: str | None = None  # a heatmap_kinds name (see engine.SynthesisEngine.heatmap_sources)
    heatmap_units: str = ""
    notes: list[str] = field(default_factory=list)  # what was done that the user should know (not a problem)


@runtime_checkable
class SynthesisEngine(Protocol):
    """Everything the Slicer logic uses of an engine.

    ``metadata``/``bundle_path``: the model bundle's metadata and file, for the synthetic node's DICOM
    marking; None for an engine that has no bundle (a test double), which then gets no marking."""

    target_modality: str
    metadata: BundleMetadata | None
    bundle_path: Path | None
    spec: PreprocessingSpec  # the bundle's preprocessing: the QA table's units, data range and foreground

    def run(
        self,
        image: sitk.Image,
        progress: ProgressCallback | None = None,
        cancel: CancelCallback | None = None,
        *,
        mask: sitk.Image | None = None,
        skull: str = "auto",
        others: Mapping[str, sitk.Image] | None = None,
    ) -> SynthesisResult:
        """Synthesise ``image`` (``skull``: whole-head handling, ``vocabulary.SKULL_HANDLING``). ``mask`` (any grid,
        nonzero = inside): the outputs are background outside it; when the engine strips (``skull="strip"``, or
        "auto" with a mask or on a whole head: ``skull_policy.decide_skull``) it is also the brain the networks
        see instead of an estimated one, and ``result.notes`` says what was done. Calls
        ``progress`` as work advances, checks ``cancel`` between steps and
        raises :class:`SynthesisCancelled` when it is set, :class:`SynthesisError` for bad input.

        ``image`` is the model's reference input (``metadata.inputs.reference``); ``others`` maps the canonical
        contrast name of every other input given (``model/inputs.py``) to its image, on any grid: the engine
        brings them onto ``image``'s grid (resampling, a rigid registration when they are misaligned) and says
        so in ``result.notes``. Inputs that do not fit the model's declaration (unknown, repeated, not read by
        this model) or do not overlap ``image`` raise :class:`SynthesisError` naming the input."""
        ...
