"""Automatic model choice: which bundled model to run for the inputs a user has (issue 23).

One rule for ``duald-synthesize`` (``--model`` omitted), the Slicer panel and ``duald-view``: among the candidate
bundles (the shipped ones, ``MODELS_DIR``), those that synthesise the wanted target (``--target``; else the default
model's target) and accept the given inputs (``InputDeclaration.accepts``: every given contrast read, every
required one given); of those the one that reads the most of the given inputs; a tie goes to the default model,
then to the first by file name. ``partial=True`` (a cohort folder, whose subjects hold contrasts no model reads,
the target's among them) drops the "every given contrast read" condition: a model whose required inputs are all
given qualifies, and the others are left unused.

Torch-free: bundles are read for their metadata only (``bundle.read_metadata``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import DualDError
from ..core.resources import DEFAULT_MODEL, MODELS_DIR
from ..core.vocabulary import canonical_contrast
from .bundle import BundleMetadata, read_metadata

BUNDLE_SUFFIX = ".safetensors"


class ModelChoiceError(DualDError):
    """No candidate model fits the given inputs and target (one sentence saying what there is)."""


@dataclass(frozen=True)
class ModelChoice:
    path: Path
    metadata: BundleMetadata
    reads: tuple[str, ...]  # the given contrasts it reads, in its declaration's order
    unused: tuple[str, ...]  # given contrasts it does not read (partial choice only)
    is_default: bool

    @property
    def note(self) -> str:
        """The one line a command line prints: which model, and why."""
        why = ("the default model" if self.is_default else "the bundled model") + " that reads " + (
            "the given input" if len(self.reads) == 1 else f"the most of the given inputs ({len(self.reads)})")
        unused = f"; not used: {', '.join(self.unused)}" if self.unused else ""
        return (f"model {self.path.stem} chosen automatically ({' + '.join(self.reads)} → "
                f"{self.metadata.target_modality}): {why}{unused}")


def bundled_models(models_dir: Path | None = None) -> list[Path]:
    """Model bundles shipped with the extension (``MODELS_DIR``): the documented default (T1 → T2) first, so a
    panel or a self-test that takes the first entry gets it, then the others sorted by file name."""
    models_dir = MODELS_DIR if models_dir is None else Path(models_dir)  # read at call time: tests point it elsewhere
    found = sorted(models_dir.glob(f"*{BUNDLE_SUFFIX}")) if models_dir.is_dir() else []
    return sorted(found, key=lambda p: p.name != DEFAULT_MODEL.name)  # stable: the rest stay sorted


def default_target(default: Path | None = None) -> str | None:
    """The default model's target contrast (what a user gets without ``--target``); None when not installed."""
    try:
        return read_metadata(DEFAULT_MODEL if default is None else default).target_modality
    except (OSError, ValueError, ImportError):
        return None


def _readable(candidates: Iterable[Path]) -> list[tuple[Path, BundleMetadata]]:
    found = []
    for path in candidates:
        try:
            found.append((Path(path), read_metadata(path)))
        except (OSError, ValueError, ImportError):  # an unreadable bundle is never chosen; --model names it
            continue
    return found


def _reads(meta: BundleMetadata, given: Sequence[str], partial: bool, unnamed: bool) -> tuple[str, ...] | None:
    """The given contrasts ``meta`` reads, or None when it does not qualify. ``unnamed``: one more input, of no
    known contrast, is given and serves as the model's reference."""
    inputs = meta.inputs
    if unnamed:
        if inputs.reference in given:
            return None
        given = [inputs.reference, *given]
    if partial:
        if any(required not in given for required in inputs.required):
            return None
        return tuple(name for name in inputs.names if name in given)
    return tuple(name for name in inputs.names if name in given) if inputs.accepts(given) else None


def choose_model(given: Iterable[str], target: str | None = None, *, partial: bool = False,
                 unnamed_reference: bool = False, candidates: Iterable[Path] | None = None,
                 default: Path | None = None) -> ModelChoice:
    """The model to run for the ``given`` contrasts (names or aliases; see the module's rule), or
    :class:`ModelChoiceError` naming what the candidates offer. ``unnamed_reference``: one more input was given
    whose contrast is not known (a positional input named ``patient.nii.gz``): it is taken as the reference."""
    default = DEFAULT_MODEL if default is None else Path(default)
    names = [canonical_contrast(g) or g for g in given]
    wanted = canonical_contrast(target) if target else canonical_contrast(default_target(default))
    models = _readable(bundled_models() if candidates is None else candidates)
    best: tuple[tuple[int, int], ModelChoice] | None = None
    for rank, (path, meta) in enumerate(models):
        if wanted is not None and canonical_contrast(meta.target_modality) != wanted:
            continue
        reads = _reads(meta, names, partial, unnamed_reference)
        if not reads:
            continue
        is_default = path.resolve() == Path(default).resolve()
        key = (len(reads), 1 if is_default else -rank)
        if best is None or key > best[0]:
            unused = tuple(n for n in dict.fromkeys(names) if n not in reads)
            best = (key, ModelChoice(path, meta, reads, unused, is_default))
    if best is not None:
        return best[1]
    offered = "; ".join(f"{p.stem} ({m.inputs.describe()} → {m.target_modality})" for p, m in models) or "none"
    target_text = f"{wanted} " if wanted else ""
    given_text = " + ".join(["an unnamed reference"] * unnamed_reference + names)
    how = "from" if not partial else "from any of"
    raise ModelChoiceError(f"no bundled model synthesises {target_text}{how} {given_text} "
                           f"(bundled: {offered}); pass a model with --model or give the inputs one of them reads")
