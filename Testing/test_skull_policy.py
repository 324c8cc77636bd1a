"""The one skull decision (imaging/skull_policy.py), every combination of its inputs against one table: the
requested handling, a brain mask given or not, CT or MRI, the model's fingerprint (none, stripped brains only,
whole heads too) and the input (a whole head or a brain). The engine calls it for the CLI, the panel and the
viewer alike (test_brainmask.py, test_logic_brain_mask.py run it end to end)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
from DualDSynthesisLib.imaging.brainmask import SKULL_HANDLING, BrainMaskError
from DualDSynthesisLib.imaging.fingerprint import SKULL_ML
from DualDSynthesisLib.imaging.skull_policy import decide_skull

ANY = object()
FINGERPRINTS = {"none": None, "stripped": SimpleNamespace(skull_kinds=("stripped",)),
                "heads": SimpleNamespace(skull_kinds=("stripped", "head"))}
INPUT_ML = {"head": SKULL_ML + 500.0, "brain": SKULL_ML - 500.0}

# (skull, mask given, CT, fingerprint, input) → outcome: "error", "keep", "strip given" (inside the given mask),
# "strip BET" (inside an estimated brain). Each combination matches exactly one row (checked below).
TABLE = [
    ("strip", ANY, True, ANY, ANY, "error"),
    ("strip", True, False, ANY, ANY, "strip given"),
    ("strip", False, False, ANY, ANY, "strip BET"),
    ("keep", ANY, ANY, ANY, ANY, "keep"),
    ("auto", ANY, True, ANY, ANY, "keep"),  # a CT model keeps the skull
    ("auto", True, False, ANY, ANY, "strip given"),  # a brain mask given with auto: inside it (the panel's rule)
    ("auto", False, False, "none", ANY, "keep"),  # no statistics to compare with
    ("auto", False, False, "heads", ANY, "keep"),  # the model saw whole heads
    ("auto", False, False, "stripped", "brain", "keep"),  # not a whole head
    ("auto", False, False, "stripped", "head", "strip BET"),  # a whole head for a stripped-only model
]
COMBINATIONS = list(itertools.product(SKULL_HANDLING, (True, False), (True, False), FINGERPRINTS, INPUT_ML))


def _outcome(combination: tuple) -> str:
    matches = [row[-1] for row in TABLE
               if all(want is ANY or want == got for want, got in zip(row[:-1], combination, strict=True))]
    assert len(matches) == 1, f"{combination} matches {len(matches)} rows of the table"
    return matches[0]


@pytest.mark.parametrize("combination", COMBINATIONS, ids=lambda c: "-".join(map(str, c)))
def test_every_combination_follows_the_table(combination: tuple) -> None:
    skull, mask_given, ct, fingerprint, size = combination
    looked: list[int] = []

    def input_ml() -> float:
        looked.append(1)
        return INPUT_ML[size]

    expected = _outcome(combination)
    if expected == "error":
        with pytest.raises(BrainMaskError, match="skull stripping is for brain MRI models"):
            decide_skull(skull, mask_given=mask_given, ct=ct, fingerprint=FINGERPRINTS[fingerprint], input_ml=input_ml)
        return
    decision = decide_skull(skull, mask_given=mask_given, ct=ct, fingerprint=FINGERPRINTS[fingerprint],
                            input_ml=input_ml)
    assert (decision.strip, decision.estimate) == {"keep": (False, False), "strip given": (True, False),
                                                   "strip BET": (True, True)}[expected]
    # the input is looked at (prepared: seconds) only where the table's last rows need it
    assert bool(looked) == (skull == "auto" and not mask_given and not ct and fingerprint == "stripped")
    # the note always says what was done, and why (the handling asked for)
    note = decision.note(1234.0)
    assert f"skull handling '{skull}'" in note
    if decision.strip:
        assert note.startswith("synthesised inside the brain only (")
        assert ("a BET brain mask, 1234 mL" if decision.estimate else "the given brain mask, 1234 mL") in note
        assert decision.fallible == (skull == "auto")  # only a strip the user did not ask for may fall back
    else:
        assert note.startswith("the input was synthesised as it is (")
        assert note.endswith("outside the given mask the outputs are background") == mask_given


def test_the_table_covers_every_combination() -> None:
    assert len(COMBINATIONS) == 3 * 2 * 2 * 3 * 2
    assert {_outcome(c) for c in COMBINATIONS} == {"error", "keep", "strip given", "strip BET"}


def test_an_unknown_handling_is_one_sentence() -> None:
    with pytest.raises(BrainMaskError, match="unknown skull handling 'off'; choose one of auto, keep, strip"):
        decide_skull("off", mask_given=False, ct=False, fingerprint=None, input_ml=lambda: 0.0)
