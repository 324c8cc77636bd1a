"""The one skull decision: keep the whole head or synthesise inside the brain only, and the note saying so.

Every caller reaches it through the engine (``SynthesisEngine.run``): ``duald-synthesize --skull``/``--mask``,
the Slicer panel's *Whole head* and *Brain mask*, and the viewer, so the same inputs get the same outputs.

The rule, by the requested handling (:data:`brainmask.SKULL_HANDLING`):

- **strip**: inside the brain only: the given mask, else a BET brain mask (refused for a CT model, whose
  Hounsfield units need the skull and the whole body).
- **keep**: the whole head; a given mask only sets the outputs to background outside it.
- **auto** with a given mask (an MRI model): a brain mask given with *auto* means "synthesise inside this
  brain", so **strip** inside it (as the panel always did; before, the CLI kept the head unless the input
  was a whole head and the model saw stripped brains only).
- **auto** without a mask (an MRI model): strip (BET) only a whole head (foreground above
  ``fingerprint.SKULL_ML``) given to a model whose training data held skull-stripped brains only; keep it
  when the model records no training statistics or saw whole heads too.
- A CT model keeps the head under *auto* (a given mask restricts the outputs).

The decision's note always says what was done and why. Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .brainmask import SKULL_HANDLING, BrainMaskError
from .fingerprint import SKULL_ML, TrainingFingerprint

OUTSIDE_MASK = "; outside the given mask the outputs are background"


@dataclass(frozen=True)
class SkullDecision:
    """``strip``: synthesise inside a brain mask only (the given one, else BET's: :attr:`estimate`); else keep
    the input as it is. ``why``: the reason, named in the note. ``fallible``: a failed brain extraction keeps the
    head with a warning (the user did not ask for stripping) instead of failing the run."""

    strip: bool
    why: str
    fallible: bool = False
    mask_given: bool = False

    @property
    def estimate(self) -> bool:
        """Whether the brain mask is BET's: a strip without a given mask."""
        return self.strip and not self.mask_given

    def note(self, brain_ml: float | None = None) -> str:
        """What was done and why; for a strip with the brain mask's volume in mL."""
        if not self.strip:
            return f"the input was synthesised as it is ({self.why}){OUTSIDE_MASK if self.mask_given else ''}"
        which = "a BET brain mask" if self.estimate else "the given brain mask"
        size = "" if brain_ml is None else f", {brain_ml:.0f} mL"
        return (f"synthesised inside the brain only ({which}{size}; {self.why}); outside it the outputs are "
                "background")


def check_skull(skull: str, ct: bool) -> None:
    """:class:`BrainMaskError` (one sentence) for an unknown handling or a strip asked of a CT model."""
    if skull not in SKULL_HANDLING:
        raise BrainMaskError(f"unknown skull handling {skull!r}; choose one of {', '.join(SKULL_HANDLING)}")
    if skull == "strip" and ct:
        raise BrainMaskError("skull stripping is for brain MRI models; this model's images are in absolute "
                             "units (CT), which need the skull and the whole body")


def decide_skull(skull: str, *, mask_given: bool, ct: bool, fingerprint: TrainingFingerprint | None,
                 input_ml: Callable[[], float]) -> SkullDecision:
    """The decision for the requested ``skull`` handling, whether a brain mask was given, whether the model
    is a CT model and its training fingerprint; ``input_ml()`` (the input's foreground in mL) is called only
    when *auto* must look at the input."""
    check_skull(skull, ct)
    given = {"mask_given": mask_given}
    if skull == "strip":
        return SkullDecision(True, "skull handling 'strip'", **given)
    if skull == "keep":
        return SkullDecision(False, "skull handling 'keep'", **given)
    if ct:
        return SkullDecision(False, "skull handling 'auto': a CT model needs the skull", **given)
    if mask_given:
        return SkullDecision(True, "skull handling 'auto' with a brain mask", fallible=True, **given)
    if fingerprint is None:
        return SkullDecision(False, "skull handling 'auto': the model records no training statistics to "
                                    "tell whether it saw whole heads")
    if "head" in fingerprint.skull_kinds:
        return SkullDecision(False, "skull handling 'auto': the model was trained on whole heads too")
    ml = input_ml()
    if ml <= SKULL_ML:
        return SkullDecision(False, f"skull handling 'auto': the input's foreground ({ml:.0f} mL) is not "
                                    "a whole head")
    return SkullDecision(True, "skull handling 'auto': the input is a whole head and the model saw "
                               "skull-stripped brains only", fallible=True)
