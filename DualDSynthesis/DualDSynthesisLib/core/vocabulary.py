"""The project's names, defined once (no torch, SimpleITK, Slicer or Qt import).

- :class:`Variant`: the five models of the paper's ablation; a ``StrEnum``, so argparse can offer
  ``choices=list(Variant)`` and a bundle's ``variant`` is checked against it without importing torch.
- Contrasts: :data:`CONTRAST_ALIASES` and :func:`canonical_contrast`, the one answer to "are these two
  names the same contrast?" used by training-data discovery, the engine's modality check
  (:func:`modality_warning`) and the command lines. ``t1c`` (post-contrast T1: t1c/t1ce/t1gd) is a
  different contrast from ``t1`` (t1/t1n/t1w).
- :data:`D2_TARGETS`: D2's labels for fake slices (training).
- :data:`SKULL_HANDLING`: what a whole-head input gets (``--skull``; the brain extraction is ``brainmask.py``).

Intensity kinds and CT constants are defined in ``intensity.py``, network options (norms, D2 heads) in
``architecture.py``; they are not repeated here.
"""

from __future__ import annotations

from enum import StrEnum


class Variant(StrEnum):
    UNET = "unet"  # reconstruction loss only
    GLOBAL = "global"  # sGAN-1: + D1 (WGAN-GP)
    LOCAL = "local"  # sGAN-2: + D2 (dense BCE)
    DUAL = "dual"  # D1 + D2
    DUAL_ATTENTION = "dual_attention"  # D1 + D2 + difficulty-aware attention (the full method)

    @property
    def uses_global(self) -> bool:
        return self in (Variant.GLOBAL, Variant.DUAL, Variant.DUAL_ATTENTION)

    @property
    def uses_local(self) -> bool:
        return self in (Variant.LOCAL, Variant.DUAL, Variant.DUAL_ATTENTION)

    @property
    def uses_attention(self) -> bool:
        return self is Variant.DUAL_ATTENTION


VARIANTS: tuple[str, ...] = tuple(v.value for v in Variant)

# What a whole-head input gets (``--skull``): "strip" synthesises inside the brain only, "keep" synthesises
# the whole input, "auto" strips a whole head only when the model never saw one (its training fingerprint
# holds skull-stripped brains only) and the target is an MRI contrast (a CT needs the skull and the body).
SKULL_HANDLING = ("auto", "keep", "strip")
D2_TARGETS: tuple[str, ...] = ("binary", "error")  # "binary": the paper's fake → 0; "error": 1 − |error|/tau

# Canonical contrast → every spelling of it (lower case). A file name's contrast suffix must equal one
# spelling exactly (discovery), so "t1" never matches "t1c". "seg" is a label map, not an image contrast.
CONTRAST_ALIASES: dict[str, tuple[str, ...]] = {
    "t1": ("t1", "t1n", "t1w"),
    "t1c": ("t1c", "t1ce", "t1gd"),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "t2f", "fla"),
    "pd": ("pd", "pdw"),
    "dwi": ("dwi",),
    "seg": ("seg", "seg_fusion", "label"),
    "ct": ("ct",),
}
LABEL_CONTRAST = "seg"
# Modality families, as DICOM's Modality tag (0008,0060) names them: every MRI contrast is "mr".
FAMILY_ALIASES: dict[str, tuple[str, ...]] = {"mr": ("mr", "mri"), "ct": ("ct",)}
MRI_CONTRASTS: tuple[str, ...] = tuple(k for k in CONTRAST_ALIASES if k not in ("ct", LABEL_CONTRAST))

_ALIAS_TO_KEY = {alias: key for key, aliases in CONTRAST_ALIASES.items() for alias in aliases}
_FAMILY_OF = {alias: key for key, aliases in FAMILY_ALIASES.items() for alias in aliases}


def _compact(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "").replace(" ", "")


_COMPACT_TO_KEY = {_compact(alias): key for alias, key in _ALIAS_TO_KEY.items()}


def contrast_aliases() -> dict[str, str]:
    """Every spelling → its canonical contrast (for matching file-name suffixes exactly)."""
    return dict(_ALIAS_TO_KEY)


def canonical_contrast(name: str | None) -> str | None:
    """The canonical contrast of ``name`` (``"T1-CE"`` → ``"t1c"``, ``"t1w"`` → ``"t1"``), or None when
    it is not a known contrast. Case, spaces, dashes and underscores do not matter."""
    if not isinstance(name, str):
        return None
    key = name.strip().lower()
    return _ALIAS_TO_KEY.get(key) or _COMPACT_TO_KEY.get(_compact(name))


def modality_family(name: str | None) -> str | None:
    """``"mr"`` or ``"ct"`` for a contrast or a family name (a DICOM Modality tag), None when unknown."""
    if not isinstance(name, str):
        return None
    family = _FAMILY_OF.get(_compact(name))
    if family is not None:
        return family
    key = canonical_contrast(name)
    if key == "ct":
        return "ct"
    return "mr" if key in MRI_CONTRASTS else None


def known_contrasts_text() -> str:
    """``t1 (t1/t1n/t1w), t1c (t1c/t1ce/t1gd), ...``: the image contrasts, for help texts and errors."""
    return ", ".join(f"{k} ({'/'.join(a)})" if len(a) > 1 else k
                     for k, a in CONTRAST_ALIASES.items() if k != LABEL_CONTRAST)


def modality_warning(stated: str | None, bundle_source: str) -> str | None:
    """A sentence when the source's modality (a contrast name, or a family such as DICOM's 'MR'/'CT')
    is not the bundle's; None when they agree or either is not given.

    A family is compared with the bundle's family (an 'MR' tag fits a T1 model). Two contrasts are
    compared by :func:`canonical_contrast` (t1ce = t1c, but t1 ≠ t1c); unknown names by their compact
    spelling."""
    if not stated or not bundle_source:
        return None
    if _compact(stated) in _FAMILY_OF:
        same = _FAMILY_OF[_compact(stated)] == modality_family(bundle_source)
    else:
        s, b = canonical_contrast(stated), canonical_contrast(bundle_source)
        same = (s or _compact(stated)) == (b or _compact(bundle_source))
    if same:
        return None
    return (
        f"the input is {stated} but this model was trained on {bundle_source} sources, "
        "so the synthetic image is likely wrong"
    )
