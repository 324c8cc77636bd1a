"""``duald-synthesize``'s inputs (issue 23): ``--input CONTRAST=PATH``, the positional input, the model they call for
(automatic choice when ``--model`` is omitted) and, in cohort mode, each subject's files paired by contrast.

What a run reads, decided before the model is loaded (:func:`plan`):

- one subject: the positional INPUT is the model's reference input (its first, required contrast); every
  ``--input CONTRAST=PATH`` is one more (or, without a positional, the reference too). Refused with one
  sentence, before anything is read or written: a malformed ``--input``, an unknown contrast, a contrast given
  twice (aliases count: ``t1`` and ``t1w``; the positional counts as the reference's), a path that does not
  exist (named with its contrast), a folder that is not a DICOM series, a required input missing, and an input
  the model does not read — also for a one-input model: it refuses the second input by name rather than
  silently synthesising from one of them (the engine refuses it too);
- a folder of volumes or a glob (cohort): files whose names name a contrast (``core/file_contrasts``, the
  naming training discovery reads) are grouped by subject; each subject's files of the model's input contrasts
  are one synthesis, the other contrasts' files (the target's, a label map) are left alone; a file whose name
  names no contrast is synthesised alone as the reference input, as before.

Without ``--model``: a positional input alone (no ``--input``, no ``--target``) runs the default model, as
before; otherwise ``model_choice.choose_model`` picks the bundled model for the given contrasts (cohort: those
the files name) and the plan carries its one-line note.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import DualDError
from ..core.file_contrasts import subject_and_contrast
from ..core.vocabulary import LABEL_CONTRAST, canonical_contrast, known_contrasts_text
from ..imaging.output_names import derived_suffixes, is_derived_output

__all__ = ["InputOptionError", "Plan", "parse_input_options", "plan"]


class InputOptionError(DualDError):
    """The inputs given on the command line do not make one synthesis (one sentence naming the input)."""


@dataclass
class Plan:
    model: Path
    items: list[tuple[Path, dict[str, Path]]]  # (reference input, {other contrast: path}) per synthesis
    cohort: bool
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # per subject: counted as failed inputs, the rest runs


def parse_input_options(values: list[str] | None) -> dict[str, Path]:
    """``["t1=T1.nii.gz", "flair=FLAIR/"]`` → ``{"t1": Path, "flair": Path}`` (canonical contrasts, given order)."""
    found: dict[str, Path] = {}
    spelled: dict[str, str] = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise InputOptionError(f"--input {value!r} is not CONTRAST=PATH (e.g. --input flair=FLAIR.nii.gz)")
        key = canonical_contrast(name)
        if key is None or key == LABEL_CONTRAST:
            raise InputOptionError(f"--input {value}: {name.strip()!r} is not a known image contrast; known: "
                                   f"{known_contrasts_text()}")
        if key in found:
            raise InputOptionError(f"--input {spelled[key]} and --input {name.strip()} are both the {key} input; "
                                   "give each contrast once")
        found[key], spelled[key] = _existing(Path(path.strip()).expanduser(), key), name.strip()
    return found


def _existing(path: Path, contrast: str) -> Path:
    if not path.exists():
        raise InputOptionError(f"the {contrast} input {path} does not exist")
    if path.is_dir():
        from ..imaging import io as vio  # SimpleITK: only when a folder is given

        if not vio.dicom_series(path):
            raise InputOptionError(f"the {contrast} input {path} is a folder without a DICOM series; "
                                   "--input takes a volume file or a DICOM series folder")
    return path


def _metadata(model: Path):
    from ..imaging.bundle import read_metadata  # numpy/SimpleITK when parsed: only once a run needs it

    return read_metadata(model)


def _default_model() -> Path:
    from ..imaging import model_choice

    return model_choice.DEFAULT_MODEL


def _choose(given: list[str], target: str | None, *, partial: bool = False, unnamed: bool = False):
    from ..imaging.model_choice import choose_model

    return choose_model(given, target, partial=partial, unnamed_reference=unnamed)


def plan(args: argparse.Namespace, cohort: bool, files: list[Path]) -> Plan:
    """What the run reads and with which model (see the module). ``files``: the positional input expanded
    (``io.expand_inputs``; empty without one); ``cohort``: whether it was a folder of volumes or a glob."""
    named = parse_input_options(args.inputs)
    if cohort:
        if named:
            raise InputOptionError("--input names one subject's files; with a folder of volumes or a glob, each "
                                   "subject's inputs are paired by the contrasts their file names end in")
        return _cohort_plan(args, files)
    if not files and not named:
        raise InputOptionError("give an input volume (INPUT, or --input CONTRAST=PATH)")
    stated = canonical_contrast(args.source_modality) if files else None
    if stated is not None and stated in named:
        raise InputOptionError(f"INPUT is the {stated} input (--source-modality) and --input gives a {stated} "
                               "input too; give each contrast once")
    notes: list[str] = []
    if args.model is not None:
        model = args.model
    elif named or args.target:
        choice = _choose([*([stated] if stated else []), *named], args.target, unnamed=bool(files) and not stated)
        model, notes = choice.path, [choice.note]
    else:
        model = _default_model()
    _check_target(model, args)
    return Plan(model, [_one_subject(model, files[0] if files else None, named)], False, notes)


def _check_target(model: Path, args: argparse.Namespace) -> None:
    """``--target`` with ``--model``: the model must synthesise it."""
    if args.model is None or not args.target:
        return
    made = _metadata(model).target_modality
    if canonical_contrast(made) != canonical_contrast(args.target):
        raise InputOptionError(f"--target is {args.target} but the model {model.stem} synthesises {made}; "
                               "drop --target or --model")


def _one_subject(model: Path, positional: Path | None, named: dict[str, Path]) -> tuple[Path, dict[str, Path]]:
    """(reference, others) for ``model``'s declaration; the checks of :func:`plan`."""
    if positional is None and not named:
        raise InputOptionError("give an input volume (INPUT, or --input CONTRAST=PATH)")
    if positional is not None and not named:
        return positional, {}  # as before: the engine reads the model and checks what it can
    inputs = _metadata(model).inputs
    reference = inputs.reference
    if positional is not None and reference in named:
        raise InputOptionError(f"INPUT is the model's reference {reference} input and --input gives a {reference} "
                               "input too; give each contrast once")
    if positional is None:
        if reference not in named:
            raise InputOptionError(f"the model {model.stem} needs a {reference} input (it reads {inputs.describe()}); "
                                   f"add --input {reference}=PATH")
        positional = named.pop(reference)
    from ..model.inputs import InputError

    try:
        inputs.check_given([reference, *named])
    except InputError as exc:
        raise InputOptionError(f"the model {model.stem}: {exc}") from None
    return positional, dict(named)


def _cohort_plan(args: argparse.Namespace, files: list[Path]) -> Plan:
    files, skipped = [p for p in files if not is_derived_output(p)], [p for p in files if is_derived_output(p)]
    notes = []
    if skipped and not files:
        raise InputOptionError(f"{args.input} holds only outputs of an earlier run ({skipped[0].name}, ...); "
                               "give the folder or glob of the source volumes")
    if skipped:
        notes.append(f"skipped {len(skipped)} file(s) named as this program names its outputs "
                     f"({', '.join(f'*{s}' for s in derived_suffixes())}), e.g. {skipped[0].name}")
    named = [subject_and_contrast(p) for p in files]
    if args.model is not None:
        model = args.model
        _check_target(model, args)
    else:
        wanted = canonical_contrast(args.target) if args.target else None
        contrasts = {n[1] for n in named if n is not None and n[1] != LABEL_CONTRAST}
        if not contrasts:
            model = _default_model()  # names that name no contrast: as before
        else:
            choice = _choose(sorted(contrasts - {wanted or _default_target()}), args.target, partial=True)
            model = choice.path
            notes.append(choice.note)
    return _pair(Plan(model, [], True, notes), files, named)


def _default_target() -> str | None:
    from ..imaging.model_choice import default_target

    return canonical_contrast(default_target())


def _pair(plan: Plan, files: list[Path], named: list[tuple[str, str] | None]) -> Plan:
    """Each subject's files of the model's input contrasts → one synthesis (see the module)."""
    inputs = _metadata(plan.model).inputs
    subjects: dict[str, dict[str, list[Path]]] = {}
    unused: list[Path] = []
    for path, name in zip(files, named, strict=True):
        if name is None:
            plan.items.append((path, {}))
        elif name[1] in inputs.names:
            subjects.setdefault(name[0], {}).setdefault(name[1], []).append(path)
        else:
            unused.append(path)
    for subject, found in subjects.items():
        label = f"subject {subject}" if subject else "the files named by their contrast alone"
        several = next((k for k, v in found.items() if len(v) > 1), None)
        missing = next((k for k in inputs.required if k not in found), None)
        if several is not None:
            plan.problems.append(f"{label}: several {several} files "
                                 f"({', '.join(p.name for p in found[several])}); keep one per contrast")
        elif missing is not None:
            plan.problems.append(f"{label}: no {missing} file, which the model {plan.model.stem} needs "
                                 f"(it reads {inputs.describe()})")
        else:
            plan.items.append((found[inputs.reference][0], {k: v[0] for k, v in found.items()
                                                            if k != inputs.reference}))
    if unused:
        kinds = ", ".join(sorted({n[1] for p, n in zip(files, named, strict=True) if n and p in unused}))
        plan.notes.append(f"not used: {len(unused)} file(s) of contrasts the model {plan.model.stem} does not read "
                          f"({kinds}), e.g. {unused[0].name}")
    plan.items.sort(key=lambda item: str(item[0]))
    return plan
