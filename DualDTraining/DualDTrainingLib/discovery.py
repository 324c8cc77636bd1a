"""Find source/target training pairs in a data folder or a CSV manifest (no Slicer imports).

Two inputs are understood:

- a folder with one sub-folder per subject (optionally grouped in ``train/``, ``val/``, ``test/``
  sub-folders, which become the pair's split), each holding one file per contrast. The contrast is
  read from the end of the file name, after the subject id, in either convention:
  ``BraTS-GLI-00001-000-t1n.nii.gz`` or ``TCGA-DU-7294_t1_bet.nii.gz`` (trailing ``_bet``-like
  modifiers are ignored). The whole suffix must equal an alias, so ``t1`` never matches ``t1c``;
- a ``.csv`` manifest with header columns ``source,target`` and optional ``mask``, ``foreground``,
  ``split``, ``subject``; relative paths resolve against the manifest's folder. Its contrast names are
  labels only and are not checked against :data:`CONTRAST_ALIASES`.

Every pair is checked from file headers only (fast): readable, 3-D, scalar, and the target/masks
overlapping the source in physical space. A truncated ``.nii.gz`` still has a readable header and
ITK silently fills the missing voxels with zeros, so NIfTI files also get an O(1) integrity check:
the uncompressed size in the gzip trailer (or the ``.nii`` file size) must equal the header's
voxel offset plus data size; only when it differs (e.g. multi-member gzip) is the stream fully
decompressed to decide (those checks, and reading a pair in full, are in :mod:`pair_files`).
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from DualDSynthesisLib.core.file_contrasts import IMAGE_SUFFIXES, image_stem, split_stem
from DualDSynthesisLib.core.vocabulary import CONTRAST_ALIASES, LABEL_CONTRAST, canonical_contrast
from DualDSynthesisLib.model.inputs import InputDeclaration, InputError

from .errors import DiscoveryError
from .pair_files import check_pair

__all__ = [
    "CONTRAST_ALIASES",
    "IMAGE_SUFFIXES",
    "SPLIT_FOLDERS",
    "Discovery",
    "DiscoveryError",
    "Rejection",
    "SubjectPair",
    "contrast_of",
    "discover",
]

SPLIT_FOLDERS = ("train", "training", "val", "validation", "test", "testing")
_LABEL_KEY = LABEL_CONTRAST


@dataclass(frozen=True)
class SubjectPair:
    subject: str
    source: Path
    target: Path
    mask: Path | None = None  # tumour/region labels
    foreground: Path | None = None  # body/brain mask
    split: str | None = None
    # The other inputs of a multi-input model (model/inputs.py), (canonical contrast, file) in declaration
    # order; an optional input the subject lacks is left out (training then always withholds it).
    others: tuple[tuple[str, Path], ...] = ()


@dataclass(frozen=True)
class Rejection:
    subject: str
    reason: str


@dataclass
class Discovery:
    pairs: list[SubjectPair]
    rejected: list[Rejection]
    notes: list[str]

    def summary(self) -> str:
        return f"{len(self.pairs)} pair(s) found, {len(self.rejected)} subject(s) rejected"


# ----------------------------------------------------------------------------- names


# the file naming is defined once, in core/file_contrasts.py (the command line's cohort mode reads it too)
_stem, _split_name = image_stem, split_stem


def contrast_of(filename: str) -> str | None:
    """Contrast key (e.g. 't1') of an image file name, or None (not an image / unknown contrast)."""
    stem = _stem(Path(filename).name)
    split = None if stem is None else _split_name(stem)
    return None if split is None else split[1]


def _contrast_key(name: str, role: str) -> str:
    key = canonical_contrast(name) or ""
    known = ", ".join(CONTRAST_ALIASES)
    if not key:
        raise DiscoveryError(f"unknown {role} contrast {name!r}; known contrasts are {known}.")
    if key == _LABEL_KEY:
        raise DiscoveryError(f"{role} contrast {name!r} is a label map, not an image contrast.")
    return key


def _looked_for(key: str) -> str:
    return "/".join(CONTRAST_ALIASES[key])


# ----------------------------------------------------------------------------- layouts


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and _stem(p.name) is not None
    )


def _subject_folders(data: Path) -> list[tuple[Path, str | None]]:
    found: list[tuple[Path, str | None]] = []
    for child in sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if child.name.lower() in SPLIT_FOLDERS and not _image_files(child):
            found += [
                (g, child.name.lower()) for g in sorted(child.iterdir()) if g.is_dir() and not g.name.startswith(".")
            ]
        else:
            found.append((child, None))
    return found


def _pair_from_files(
    subject: str, files: list[Path], inputs: InputDeclaration, tgt: str, split: str | None, rejected: list[Rejection],
    notes: list[str]
) -> SubjectPair | None:
    src = inputs.reference
    by_key: dict[str, list[Path]] = {}
    for path in files:
        parts = _split_name(_stem(path.name) or "")
        if parts is not None:
            by_key.setdefault(parts[1], []).append(path)
    missing = [k for k in (*inputs.required, tgt) if k not in by_key]
    if missing:
        what = " or ".join(f"{k} image (a name ending in {_looked_for(k)})" for k in missing)
        rejected.append(Rejection(subject, f"no {what}"))
        return None
    for key in (*inputs.names, tgt):
        if len(by_key.get(key, ())) > 1:
            names = ", ".join(p.name for p in by_key[key])
            rejected.append(Rejection(subject, f"several {key} images ({names})"))
            return None
    labels = by_key.get(_LABEL_KEY, [])
    if len(labels) > 1:
        notes.append(f"subject {subject}: several label files ({', '.join(p.name for p in labels)}); none used")
    mask = labels[0] if len(labels) == 1 else None
    others = tuple((key, by_key[key][0]) for key in inputs.names[1:] if key in by_key)
    return SubjectPair(subject, by_key[src][0], by_key[tgt][0], mask=mask, split=split, others=others)


def source_inputs(source: str, required: str | None = None) -> InputDeclaration:
    """The input declaration of a ``--source`` value (one contrast or several, comma-separated); an unknown or
    label contrast is a :class:`DiscoveryError` naming it."""
    for name in source.split(",") if source.strip() else [source]:
        _contrast_key(name.strip(), "source")
    try:
        return InputDeclaration.parse(source, required)
    except InputError as exc:
        raise DiscoveryError(str(exc)) from None


def _discover_folder(data: Path, target: str,
                     inputs: InputDeclaration) -> tuple[list[SubjectPair], list[Rejection], list[str]]:
    tgt = _contrast_key(target, "target")
    if tgt in inputs.names:
        raise DiscoveryError(f"source and target are both {tgt}; pick two different contrasts.")
    candidates: list[SubjectPair] = []
    rejected: list[Rejection] = []
    notes: list[str] = []
    for folder, split in _subject_folders(data):
        files = _image_files(folder)
        if not files:
            rejected.append(Rejection(folder.name, "no image files in the folder"))
            continue
        pair = _pair_from_files(folder.name, files, inputs, tgt, split, rejected, notes)
        if pair is not None:
            candidates.append(pair)
    # Also accept subjects laid out flat in `data` itself, grouped by the name before the contrast.
    flat: dict[str, list[Path]] = {}
    for path in _image_files(data):
        parts = _split_name(_stem(path.name) or "")
        if parts is not None and parts[0]:
            flat.setdefault(parts[0], []).append(path)
    for subject, files in sorted(flat.items()):
        pair = _pair_from_files(subject, files, inputs, tgt, None, rejected, notes)
        if pair is not None:
            candidates.append(pair)
    return candidates, rejected, notes


def _discover_csv(manifest: Path, inputs: InputDeclaration | None = None) -> tuple[list[SubjectPair],
                                                                                 list[Rejection], list[str]]:
    """A manifest's pairs; a multi-input model's other inputs come from columns named by their contrast
    (``flair``), the ``source`` column being the reference."""
    reader = _manifest_rows(manifest, inputs)
    others = () if inputs is None else inputs.names[1:]
    base = manifest.parent
    rows: list[tuple[int, dict[str, str], dict[str, Path | None]]] = []
    for line_no, row in enumerate(reader, start=2):
        cells = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items() if isinstance(v, str)}
        if not any(cells.values()):
            continue

        def path_of(column: str, cells: dict[str, str] = cells) -> Path | None:
            value = cells.get(column, "")
            return None if not value else (base / Path(value).expanduser()).resolve()

        rows.append((line_no, cells, {c: path_of(c) for c in ("source", "target", "mask", "foreground", *others)}))
    derived, notes = _derive_subjects([p["source"] for _n, c, p in rows if not c.get("subject") and p["source"]])
    candidates: list[SubjectPair] = []
    rejected: list[Rejection] = []
    seen: set[str] = set()
    owner: dict[Path, str] = {}
    for line_no, cells, paths in rows:
        src, tgt = paths["source"], paths["target"]
        subject = cells.get("subject") or (derived.get(src) if src else None) or f"line{line_no}"
        if src is None or tgt is None:
            rejected.append(Rejection(subject, f"line {line_no}: empty source or target cell"))
            continue
        if subject in seen:
            rejected.append(Rejection(subject, f"line {line_no}: duplicate subject id"))
            continue
        lacking = [c for c in others if paths[c] is None and c in inputs.required]
        if lacking:
            rejected.append(Rejection(subject, f"line {line_no}: empty {lacking[0]} cell (a required input)"))
            continue
        seen.add(subject)
        for path in (src, tgt):  # the same file under two ids leaks training data into validation
            if owner.setdefault(path, subject) != subject:
                notes.append(f"warning: {path.name} is listed for both subject {owner[path]} and {subject} "
                             f"(line {line_no}); a subject in both training and validation inflates its scores")
        candidates.append(
            SubjectPair(
                subject,
                src,
                tgt,
                mask=paths["mask"],
                foreground=paths["foreground"],
                split=cells.get("split") or None,
                others=tuple((c, paths[c]) for c in others if paths[c] is not None),
            )
        )
    return candidates, rejected, notes


def _manifest_rows(manifest: Path, inputs: InputDeclaration | None) -> csv.DictReader:
    """The manifest's rows, after checking its header: ``source``, ``target`` and a column per required input."""
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DiscoveryError(f"manifest {manifest} cannot be read ({exc}).") from exc
    lines = text.splitlines()
    delimiter = next((d for d in (",", ";", "\t") if lines and d in lines[0]), ",")
    reader = csv.DictReader(lines, delimiter=delimiter)
    columns = [(c or "").strip().lower() for c in (reader.fieldnames or [])]
    if "source" not in columns or "target" not in columns:
        raise DiscoveryError(
            f"manifest {manifest} needs header columns 'source' and 'target' (found: {', '.join(columns) or 'none'})."
        )
    absent = [c for c in (inputs.required[1:] if inputs else ()) if c not in columns]
    if absent:
        raise DiscoveryError(f"manifest {manifest} needs a '{absent[0]}' column for the required {absent[0]} input.")
    return reader


def _derive_subjects(sources: list[Path]) -> tuple[dict[Path, str], list[str]]:
    """Subject ids for manifest rows without a ``subject`` cell, and a note saying which rule made them.

    First the file name (``sub01_t1.nii.gz`` → ``sub01``); when that repeats (``case1/T1.nii.gz``,
    ``case2/T1.nii.gz``), the nearest parent folder(s) that make every id unique."""
    if not sources:
        return {}, []
    by_name = {src: _subject_from(src) or src.name for src in sources}
    if len(set(by_name.values())) == len(set(sources)):
        return by_name, []
    depth = max(len(src.parent.parts) for src in sources)
    for levels in range(1, depth):
        ids = {src: "/".join(src.parent.parts[-levels:]) for src in sources}
        if len(set(ids.values())) == len(set(sources)):
            rule = "parent folder" if levels == 1 else f"{levels} nearest parent folders"
            return ids, [f"the manifest has no subject column and its file names repeat, so subject ids are the "
                         f"source files' {rule} (e.g. {next(iter(ids.values()))})"]
    return by_name, []


def _subject_from(path: Path | None) -> str | None:
    if path is None:
        return None
    stem = _stem(path.name) or path.stem
    parts = _split_name(stem)
    return parts[0] if parts and parts[0] else stem


def _checked(pair: SubjectPair, optional: Sequence[str]) -> tuple[SubjectPair, str | None, list[str]]:
    """``check_pair``, except that an optional input whose file is unusable is left out of the pair (with a note)
    instead of rejecting the subject: the model learned to do without it."""
    reason, notes = check_pair(pair)
    dropped: list[str] = []
    while reason is not None:
        key = next((k for k, _ in pair.others if k in optional and reason.startswith(f"{k} ")), None)
        if key is None:
            break
        dropped.append(f"subject {pair.subject}: optional input {key} not used ({reason})")
        pair = dataclasses.replace(pair, others=tuple(o for o in pair.others if o[0] != key))
        reason, notes = check_pair(pair)
    return pair, reason, dropped + notes


# ----------------------------------------------------------------------------- public


def discover(data: Path, source: str, target: str, required: str | None = None) -> Discovery:
    """Find and check the (source, target) pairs in a subject folder or a CSV manifest. ``source``: one
    contrast or several (``t1,flair``: the first the reference, the others optional unless ``required``
    lists them; a subject without a required one is rejected, one without an optional one kept).

    Raises :class:`DiscoveryError` for a missing path, an unknown contrast (folder layout), a manifest
    without ``source``/``target`` columns, or when no usable pair remains; per-subject problems are
    returned as :class:`Rejection` s instead."""
    data = Path(data).expanduser()
    if not data.exists():
        raise DiscoveryError(f"data path {data} does not exist.")
    if data.is_file():
        if data.suffix.lower() != ".csv":
            raise DiscoveryError(f"{data} is a file but not a .csv manifest; give a folder or a manifest.")
        inputs = source_inputs(source, required) if "," in source else None
        candidates, rejected, notes = _discover_csv(data, inputs)
        looked_for = f"rows with readable source and target files in manifest {data}"
    else:
        inputs = source_inputs(source, required)
        candidates, rejected, notes = _discover_folder(data, target, inputs)
        looked_for = (
            f"sub-folders of {data} holding a {' and a '.join(f'{k} ({_looked_for(k)})' for k in inputs.required)}"
            f" and a {target} ({_looked_for(_contrast_key(target, 'target'))}) image"
        )
    pairs: list[SubjectPair] = []
    for pair in candidates:
        pair, reason, pair_notes = _checked(pair, () if inputs is None else inputs.optional)
        if reason is None:
            pairs.append(pair)
            notes += pair_notes
        else:
            rejected.append(Rejection(pair.subject, reason))
    if not pairs:
        detail = "; ".join(f"{r.subject}: {r.reason}" for r in rejected[:5])
        more = f" (and {len(rejected) - 5} more)" if len(rejected) > 5 else ""
        raise DiscoveryError(
            f"no usable {source}→{target} pair found: looked for {looked_for}"
            + (f"; rejected {detail}{more}." if detail else ".")
        )
    return Discovery(pairs=pairs, rejected=rejected, notes=notes)
