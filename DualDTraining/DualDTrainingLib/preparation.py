"""A run's subjects prepared: every pair read and normalised (a pair with a user-data problem dropped
with its reason), the default in-plane spacing and the slice-size multiple of the networks."""

from __future__ import annotations

from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import SimpleITK as sitk
from DualDSynthesisLib.core.errors import DualDError
from DualDSynthesisLib.imaging.preprocess import PreprocessingSpec
from DualDSynthesisLib.model.architecture import ArchitectureConfig

from .dataset import PreparedSubject, inplane_spacing, prepare_subject


def _naming_file(message: str, pair: Any) -> str:
    """``target is constant …`` → ``target file sub03_t2.nii.gz is constant …``: name the file, once."""
    for role in ("source", "target", "mask", "foreground"):
        path = getattr(pair, role, None)
        if path is not None and message.startswith(role + " ") and path.name not in message:
            return f"{role} file {path.name}{message[len(role):]}"
    return message


def prepare_each(pairs: list, spec: PreprocessingSpec, workers: int, optional: Collection[str] = (),
                 say: Callable[[str], None] | None = None) -> tuple[list[PreparedSubject], list[tuple[str, str]]]:
    """Prepare every pair; a pair with a user-data problem (constant target, NaN voxels, unreadable file)
    is dropped with its reason as (subject, reason) instead of aborting the run. Programming errors propagate.
    An ``optional`` input of a multi-input model that a subject cannot give is left out of that subject alone
    (the model learned to do without it) and ``say`` is told which and why."""

    def one(pair: Any) -> tuple[PreparedSubject | None, str | None]:
        try:
            return prepare_subject(pair, spec, optional), None
        except DualDError as exc:
            return None, _naming_file(str(exc).rstrip("."), pair).replace(f"subject {pair.subject}: ", "")

    if workers <= 1 or len(pairs) <= 1:
        results = [one(p) for p in pairs]
    else:
        with ThreadPoolExecutor(max_workers=min(workers, len(pairs))) as pool:
            results = list(pool.map(one, pairs))
    kept = [r for r, _ in results if r is not None]
    dropped = [(p.subject, why) for p, (_, why) in zip(pairs, results, strict=True) if why is not None]
    for subject in kept if say is not None else ():
        for key, why in subject.dropped_inputs.items():
            say(f"{subject.name}: optional input {key} not used ({why})")
    return kept, dropped


def default_spacing(pairs: list) -> tuple[float, float]:
    """The training sources' in-plane spacing (median when they differ), read from headers only."""
    spacings = []
    for pair in pairs:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(pair.source))
        reader.ReadImageInformation()
        img = sitk.Image([1, 1, 1], sitk.sitkUInt8)
        img.SetSpacing(reader.GetSpacing())
        img.SetDirection(reader.GetDirection())
        spacings.append(inplane_spacing(img))
    med = np.median(np.array(spacings), axis=0)
    return float(med[0]), float(med[1])


def size_multiple(arch: ArchitectureConfig) -> int:
    """The prepared slices' size multiple: G halves the slice g_depth times; D2 down-samples by 8 and D1
    needs ≥ 16 pixels."""
    return int(np.lcm(arch.size_multiple, 16))
