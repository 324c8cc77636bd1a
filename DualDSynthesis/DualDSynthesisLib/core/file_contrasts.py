"""Which subject and which contrast a file name names: ``BraTS-GLI-00001-000-t1n.nii.gz`` → (``BraTS-GLI-00001-000``,
``t1``), ``TCGA-DU-7294_t1_bet.nii.gz`` → (``TCGA-DU-7294``, ``t1``).

The naming training-data discovery reads (``DualDTrainingLib/discovery.py``): the contrast is the end of the file
name after the subject id, the whole suffix one spelling of ``vocabulary.CONTRAST_ALIASES`` (so ``t1`` never
matches ``t1c``), trailing processing tags (``_bet``, ``_n4``, ...) ignored. ``duald-synthesize``'s cohort mode
pairs a subject's files with it, so the files a model was trained from are found the same way by the
command line that runs it (discovery imports it; ``Testing/test_model_choice.py`` lists names and their readings).

No numpy, SimpleITK or torch: the command line's start-up imports it.
"""

from __future__ import annotations

import re
from pathlib import Path

from .vocabulary import contrast_aliases

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# Trailing processing tags that say nothing about the contrast.
MODIFIERS = ("bet", "brain", "ss", "skullstripped", "stripped", "reg", "registered", "n4", "bc", "preproc")
_ALIAS_TO_KEY = contrast_aliases()
_NAME_RE = re.compile(
    r"^(?:(?P<prefix>.*?)[-_. ])??(?P<alias>{aliases})(?:[-_.](?:{mods}))*$".format(
        aliases="|".join(sorted(map(re.escape, _ALIAS_TO_KEY), key=len, reverse=True)),
        mods="|".join(MODIFIERS),
    )
)


def image_stem(name: str) -> str | None:
    """The file name without its image suffix, or None when it is not an image file name."""
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def split_stem(stem: str) -> tuple[str, str] | None:
    """(subject prefix, canonical contrast) of a file stem, or None when it names no known contrast. The
    prefix is empty for a name that is only a contrast (``T1.nii.gz``)."""
    m = _NAME_RE.match(stem.lower())
    if m is None:
        return None
    prefix = stem[: len(m.group("prefix"))] if m.group("prefix") else ""
    return prefix, _ALIAS_TO_KEY[m.group("alias")]


def subject_and_contrast(path: str | Path) -> tuple[str, str] | None:
    """(subject prefix, canonical contrast) of an image file's name; None for another file or an unknown
    contrast. A DICOM folder is read by its folder name (``sub-01_flair/``)."""
    name = Path(path).name
    stem = image_stem(name)
    return split_stem(name if stem is None else stem)
