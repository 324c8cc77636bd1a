"""``duald-synthesize``: synthetic volume (and trust heatmap, overview PNG) from the command line.

    duald-synthesize [INPUT] [--input CONTRAST=PATH ...] [--target CONTRAST] -o OUTPUT
                     [--heatmap PATH [--heatmap-source KIND]] [--model BUNDLE]
                     [--device auto|cpu|cuda|cuda:N|mps] [--batch-size N] [--mask PATH] [--png PATH]
                     [--skull auto|keep|strip] [--overwrite] [--source-modality NAME]
                     [--dicom-out DIR [--patient-id ID] [--patient-name NAME]] [--series-uid UID]

INPUT is a volume file, a DICOM series folder, a folder of volumes or a quoted glob. With a folder of
volumes or a glob, ``-o`` (and ``--heatmap``, ``--png``) are folders and the files are named after
each input (``<stem>_synthetic.nii.gz``, the heatmap ``<stem>_<kind>.nii.gz`` after its kind, e.g.
``<stem>_expected_error.nii.gz`` or D2's ``<stem>_difficulty.nii.gz``, and ``<stem>_overview.png``);
``--mask`` is then a folder holding ``<stem>_mask.<ext>`` or ``<stem>.<ext>`` per input. The model is
loaded once. Expected problems (bad input, missing model, existing output, full disk) print one line
and exit with status 2; other inputs of a cohort are still processed. Ctrl-C exits with 130, SIGTERM
(schedulers, ``timeout``) with 143; neither leaves a file behind, and unfinished files a killed run left
in an output folder are removed by the next run there.

``--dicom-out DIR`` (with or instead of ``-o``) writes DICOM series marked as synthetic for a
treatment-planning system (see ``dicom_export``): ``DIR/SYNTHETIC`` (CT Image Storage for a CT model,
one file per slice) and ``DIR/DIFFICULTY`` (the heatmap as a parametric map); with several inputs,
``DIR/<stem>/...``.

A multi-input model's other inputs (issue 23): ``--input CONTRAST=PATH`` (INPUT is the reference input), the
model chosen for them when ``--model`` is omitted, and a cohort's files paired by contrast: ``input_plan.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from ..core.console import HelpFormatter, exit_now, safe_console
from ..core.errors import DualDError, naming_input
from ..core.resources import DEFAULT_MODEL  # torch-free: the SIGTERM handler is installed before torch loads
from ..core.vocabulary import SKULL_HANDLING
from ..imaging import heatmap_kinds
from ..imaging.atomic import remove_stale_partials, same_file, stale_note
from ..imaging.output_names import OVERVIEW_SUFFIX, SYNTHETIC_SUFFIX, heatmap_suffix
from .input_plan import plan as input_plan

# Start-up: the parser needs only the names above (no numpy, SimpleITK, scipy or pydicom), so ``--help`` and
# a usage error answer at once; the volume modules are imported where a run needs them (docs/performance.md).

EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 130
EXIT_TERMINATED = 143
PROG = "duald-synthesize"


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every ``finally`` removes the temporary files."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(_signum: int, _frame: object) -> None:
        raise _Terminated

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (an embedding application): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _per_input_message(name: str, exc: BaseException) -> str:
    """One line naming the input once."""
    if isinstance(exc, MemoryError):
        return f"{name}: not enough memory to process it"
    message = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, RuntimeError):  # only ITK's failed allocation reaches here (see main)
        message = "not enough memory to process it (ITK could not allocate the image)"
    return naming_input(name, message)


def _is_allocation_failure(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError) and "Failed to allocate memory" in str(exc)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Synthesise a target-modality volume (e.g. T2 from T1) with a DualD model bundle.",
        epilog="""The overview PNG has axial, coronal and sagittal rows of source | synthetic | heatmap over synthetic.

examples:
  duald-synthesize t1.nii.gz -o t2_synthetic.nii.gz --heatmap expected_error.nii.gz --png overview.png
  duald-synthesize --input t1=T1.nii.gz --input flair=FLAIR.nii.gz -o T2_synthetic.nii.gz
  duald-synthesize "cohort/*.nii.gz" -o out/              # several inputs: the model is loaded once
  duald-synthesize dicom_mr_folder/ --model mri_to_ct.safetensors --dicom-out sct_dicom/""",
        formatter_class=HelpFormatter,
    )
    p.add_argument("input", metavar="INPUT", nargs="?",
                   help="volume file, DICOM series folder, folder of volumes, or glob; one subject's file is the "
                        "model's reference input (its first, e.g. t1)")
    p.add_argument("--input", dest="inputs", action="append", metavar="CONTRAST=PATH",
                   help="one more input of the same subject (repeatable; a volume file or DICOM folder), e.g. "
                        "--input t1=T1.nii.gz --input flair=FLAIR.nii.gz; the reference's too when INPUT is omitted")
    p.add_argument("--target", help="the contrast to synthesise (e.g. t2, flair), for the automatic model choice; "
                                    "default: the default model's")
    p.add_argument("-o", "--output", help="output volume (a folder for several inputs)")
    p.add_argument("--heatmap", help="heatmap output: where not to trust the synthetic image (see --heatmap-source)")
    kinds = heatmap_kinds.kinds()
    p.add_argument("--heatmap-source", choices=heatmap_kinds.names(),
                   help="; ".join(f"{k.name}: {k.title}, {k.help}" for k in kinds)
                   + f"; default: the model's first, {kinds[0].name} when it has one (it ranks errors best)")
    p.add_argument("--model", type=Path, help=f"model bundle (.safetensors); default: {DEFAULT_MODEL.name} for one "
                                              "input, else the bundled model that reads the most of the given inputs")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--batch-size", type=int, help="slices per batch (default: automatic)")
    p.add_argument("--mask", type=Path, help="the brain: with --skull auto or strip an MRI model synthesises inside "
                                              "it only; with keep (and a CT model) the outputs are background "
                                              "outside it")
    p.add_argument("--skull", choices=SKULL_HANDLING, default="auto",
                   help="a whole head: strip = synthesise inside the brain only (--mask, else a BET brain mask); "
                        "keep = synthesise the whole input; auto = strip inside --mask when given, else strip a "
                        "whole head only for a model that saw skull-stripped brains only (MRI models; a CT model "
                        "keeps the skull); a note says what was done")
    p.add_argument("--png", help="write an overview figure (PNG)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--source-modality", help="what INPUT is (e.g. t1); warns when the model expects another")
    p.add_argument("--dicom-out", type=Path, metavar="DIR",
                   help="also write DICOM series marked as synthetic (synthetic CT/MR and heatmap) into this folder")
    p.add_argument("--series-uid", help="with a DICOM folder holding several series, the SeriesInstanceUID to use")
    p.add_argument("--patient-id", default="", help="PatientID for the DICOM export of a non-DICOM input")
    p.add_argument("--patient-name", default="", help="PatientName for the DICOM export of a non-DICOM input")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _mask_for(folder: Path, stem: str) -> Path:
    from ..imaging import io as vio

    for name in (f"{stem}_mask", stem):
        for suffix in vio.VOLUME_SUFFIXES:
            candidate = folder / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"no mask named {stem}_mask.* or {stem}.* in {folder}")


def _as_folder(option: str | None) -> bool:
    return option is not None and (option.endswith(("/", "\\")) or Path(option).is_dir())


def _jobs(args: argparse.Namespace, inputs: list[tuple[Path, dict[str, Path]]], cohort: bool) -> list[dict]:
    """(reference input, other inputs) → output paths, named after the reference. Single input: the given paths
    (a folder, or a name ending in /, gets the derived name)."""
    from ..imaging import io as vio

    folders = {option: cohort or _as_folder(getattr(args, option)) for option in ("output", "heatmap", "png")}
    for option in folders:
        if getattr(args, option) is not None:
            setattr(args, option, Path(getattr(args, option)))
    if cohort:
        for option in ("output", "heatmap", "png"):
            path = getattr(args, option)
            if path is not None and path.exists() and not path.is_dir():
                raise NotADirectoryError(f"with several inputs, {option} must be a folder, but {path} is a file")
        if args.mask is not None and not args.mask.is_dir():
            raise NotADirectoryError(f"with several inputs, --mask must be a folder of masks, but {args.mask} is not")
    jobs = []
    for path, others in inputs:
        stem = vio.split_name(path)[0]

        def place(option: str, suffix: str, stem: str = stem) -> Path | None:
            value = getattr(args, option)
            if value is None:
                return None
            return value / f"{stem}{suffix}" if folders[option] else value

        jobs.append({
            "input": path,
            "output": place("output", SYNTHETIC_SUFFIX),
            "heatmap_path": place("heatmap", ""),  # + the kind's suffix once the model is loaded (_name_heatmaps)
            "heatmap_named": folders["heatmap"],
            "png": place("png", OVERVIEW_SUFFIX),
            "mask": (_mask_for(args.mask, stem) if cohort else args.mask) if args.mask is not None else None,
            "dicom": None if args.dicom_out is None else _dicom_request(
                args.dicom_out / stem if cohort else args.dicom_out, args.patient_id, args.patient_name),
            **({"others": others} if others else {}),  # synthesize_file(..., others=): a multi-input model's
        })
    return jobs


def _plan(args: argparse.Namespace):
    """The positional INPUT expanded (one subject, or a cohort: a folder of volumes or a glob) and the
    ``--input`` options: what each synthesis reads and the model (``cli/input_plan.plan``)."""
    from ..imaging import io as vio

    files, cohort = [], False
    if args.input is not None:
        files = vio.expand_inputs(args.input)
        given = Path(args.input)
        cohort = not (given.is_file() or (given.is_dir() and vio.dicom_series(given)))
    return input_plan(args, cohort, files)


def _writes_onto_input(jobs: list[dict]) -> str | None:
    """The one-sentence refusal when an output would be the input file or the brain mask (a link to either
    included). Checked before the existing-output check, so the advice is never "pass --overwrite" on a source."""
    options = {"output": "-o", "heatmap_path": "--heatmap", "png": "--png"}
    for job in jobs:
        reads = [("the input file", job["input"]), ("the --mask file", job["mask"]),
                 *((f"the {contrast} input", path) for contrast, path in job.get("others", {}).items())]
        for key, option in options.items():
            for what, read in reads:
                if job[key] is not None and read is not None and same_file(job[key], read):
                    return (f"{option} {job[key]} is {what} itself; what a run reads is never written over, "
                            "so choose another output name")
    return None


def _dicom_request(folder: Path, patient_id: str, patient_name: str):
    from ..imaging.dicom_export import DicomRequest  # pydicom: only for a DICOM export

    return DicomRequest(folder, patient_id, patient_name)


class _Progress:
    """A tqdm bar in percent (nothing when quiet or tqdm is missing), drawn by ``open``."""

    def __init__(self, label: str, quiet: bool) -> None:
        self.label, self.quiet = label, quiet
        self.bar = None
        self.drawing = False

    def open(self) -> None:
        """Draw the bar; called inside the job's ``try`` so that an interrupt arriving as the bar appears is
        handled there (the bar closed, the input named) rather than glued to the bar's unfinished line."""
        if self.quiet:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self.drawing = True  # tqdm prints before it returns: an interrupt may leave its line without a bar
        self.bar = tqdm(total=100, desc=self.label, unit="%", leave=False, file=sys.stderr,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}|{postfix}")

    def __call__(self, fraction: float, message: str) -> None:
        if self.bar is not None:
            self.bar.n = round(100 * min(max(fraction, 0.0), 1.0))
            self.bar.set_postfix_str(message, refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.drawing:  # interrupted inside tqdm's first print: end that line
            print(file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    safe_console()
    args = _parser().parse_args(argv)
    with _sigterm_as_interrupt():
        try:
            return _main(args)
        except KeyboardInterrupt as exc:  # while loading the model or listing inputs: nothing was written
            terminated = isinstance(exc, _Terminated)
            print(f"{PROG}: {'terminated (SIGTERM)' if terminated else 'cancelled'}; no output was written",
                  file=sys.stderr)
            return EXIT_TERMINATED if terminated else EXIT_CANCELLED


def _main(args: argparse.Namespace) -> int:
    if args.output is None and args.dicom_out is None:
        return _fail("give an output with -o and/or a DICOM export folder with --dicom-out")
    if args.dicom_out is None and (args.patient_id or args.patient_name):
        return _fail("--patient-id and --patient-name only apply to a DICOM export; add --dicom-out DIR")
    if args.batch_size is not None and args.batch_size < 1:
        return _fail(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.model is None and not args.inputs and not args.target and not DEFAULT_MODEL.is_file():
        return _fail(
            f"the default model {DEFAULT_MODEL.name} is not installed (expected in {DEFAULT_MODEL.parent}); "
            "pass a model bundle with --model"
        )
    try:
        plan = _plan(args)
        for line in plan.notes:
            print(f"{PROG}: note: {line}", file=sys.stderr)
        for line in plan.problems:
            print(f"{PROG}: error: {line}", file=sys.stderr)
        if not plan.items:
            return _fail(f"nothing in {args.input} is an input of the model {plan.model.stem}") if not plan.problems \
                else EXIT_BAD_INPUT
        jobs = _jobs(args, plan.items, plan.cohort)
    except (OSError, ValueError) as exc:  # DualDError is a ValueError: the input plan's refusals
        return _fail(str(exc))
    model = plan.model
    onto_input = _writes_onto_input(jobs)
    if onto_input:
        return _fail(onto_input)

    from ..inference.engine import SynthesisCancelled, SynthesisEngine, SynthesisError, synthesize_file  # imports torch

    try:
        engine = SynthesisEngine(model, device=args.device, batch_size=args.batch_size,
                                 heatmap_source=args.heatmap_source)
    except SynthesisError as exc:
        return _fail(str(exc))  # e.g. "this model has no d2 map; it offers expected_error"
    if args.heatmap is not None and not engine.has_heatmap:
        return _fail(f"the model {Path(model).name} {engine.no_heatmap_reason}, so it cannot produce a heatmap; "
                     "drop --heatmap")
    folders = {Path(p).parent for job in jobs for p in (job["output"], job["heatmap_path"], job["png"]) if p}
    folders |= {job["dicom"].folder.parent for job in jobs if job["dicom"] is not None}  # its staged folder
    for folder in sorted(folders):
        removed = remove_stale_partials(folder)
        if removed:
            print(f"{PROG}: note: {stale_note(folder, removed)}", file=sys.stderr)
    return _run_jobs(_name_heatmaps(jobs, engine.heatmap_source), engine, args, synthesize_file, SynthesisCancelled,
                     len(plan.problems))


def _name_heatmaps(jobs: list[dict], kind: str | None) -> list[dict]:
    """A heatmap path the CLI named (``<stem>``, in a folder) gets its kind's suffix (``HeatmapKind.file_suffix``)."""
    for job in jobs:
        path = job["heatmap_path"]
        if job.pop("heatmap_named") and path is not None and kind is not None:
            job["heatmap_path"] = path.with_name(path.name + heatmap_suffix(kind))
    return jobs


def _run_jobs(jobs: list[dict], engine, args: argparse.Namespace, synthesize_file, cancelled_type,
              failed_before: int = 0) -> int:
    error_map = engine.heatmap_source is not None and heatmap_kinds.kind(engine.heatmap_source).in_target_units
    if args.heatmap is not None and error_map and not args.quiet:
        print(f"{PROG}: {engine.error_calibration.describe()}", file=sys.stderr)  # what the heatmap's values mean
    failures = failed_before  # cohort subjects refused before the run (cli/input_plan.py), already reported
    for n, job in enumerate(jobs, 1):
        name = job["input"].name
        label = f"[{n}/{len(jobs)}] {name}" if len(jobs) > 1 else name
        bar = _Progress(label, args.quiet)
        try:
            bar.open()
            result = synthesize_file(**job, engine=engine, overwrite=args.overwrite, progress=bar,
                                     source_modality=args.source_modality, series_uid=args.series_uid,
                                     skull=args.skull)
        except (KeyboardInterrupt, cancelled_type) as exc:
            bar.close()
            what = "terminated (SIGTERM)" if isinstance(exc, _Terminated) else "cancelled"
            print(f"{PROG}: {what}; no output was written for {name}", file=sys.stderr)
            return EXIT_TERMINATED if isinstance(exc, _Terminated) else EXIT_CANCELLED
        except (DualDError, OSError, MemoryError, RuntimeError) as exc:
            # User errors (bad input, existing output, full disk) and the system's: one line, next input.
            # Any other exception, and a RuntimeError that is not ITK's failed allocation, is a bug: traceback.
            if isinstance(exc, RuntimeError) and not _is_allocation_failure(exc):
                raise
            bar.close()
            failures += 1
            print(f"{PROG}: error: {_per_input_message(name, exc)}", file=sys.stderr)
            continue
        bar.close()
        for note in result.notes:
            print(f"{PROG}: note: {name}: {note}", file=sys.stderr)
        for warning in result.warnings:
            print(f"{PROG}: warning: {name}: {warning}", file=sys.stderr)
        written = [str(p) for p in (job["output"], job["heatmap_path"], job["png"]) if p is not None]
        if job["dicom"] is not None:
            written.append(f"DICOM {job['dicom'].folder}")
        read = "".join(f" + {contrast}" for contrast in job.get("others", {}))
        print(f"{name}{read} → {', '.join(written)} ({result.seconds:.1f} s on {result.device})")
    if failures:
        if len(jobs) + failed_before > 1:
            print(f"{PROG}: {failures} of {len(jobs) + failed_before} input(s) failed", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def entry() -> None:
    """The ``duald-synthesize`` console script: :func:`main`, then the process ends without the interpreter's
    slow teardown (``console.exit_now``)."""
    exit_now(main())


if __name__ == "__main__":
    entry()
