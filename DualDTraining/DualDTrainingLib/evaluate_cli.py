"""``duald-evaluate``: check a model bundle on your own paired volumes.

    duald-evaluate --model BUNDLE --data FOLDER_OR_CSV --source t1[,flair,...] --target t2 [--json PATH]

Every subject found (same discovery as ``duald-train``) is synthesised with the bundle through the
same engine a user runs, then compared with its real target: PSNR, MAE and SSIM over the whole
volume, the foreground (the body for CT) and each tumour label. Then, for every trust map the bundle
offers (``expected_error``: G's expected |error|; ``d2``: 1 − D2 confidence) and the ``edge`` baseline
(gradient magnitude of the synthetic image), the AUROC with which it finds the worst 10 % of the
foreground's error voxels and its Spearman correlation with |error| there. For a CT target an HU
quality report follows: MAE, ME (bias), PSNR, SSIM in the body and the MAE in air, soft tissue and
bone. See ``evaluation.py`` for the units.

A multi-input model (issue 23) is evaluated with the inputs ``--source`` lists (``t1,flair``: the model's
reference first): each subject's file of every listed contrast is found as training discovery pairs a subject's
files (in its folder, or named with its prefix in a flat layout; ``core/file_contrasts``) and given to the engine
as its other inputs. A subject without one of them is skipped with the reason, so the scores are those of that
input subset; list fewer contrasts to score a smaller subset. A manifest names one source per row, so several
sources need a data folder.

Before any subject is scored: ``--json`` must not be the model, the manifest or a file it evaluates
(``atomic.same_file``; ``--overwrite`` replaces an earlier report only), the target must be of the
model's modality family (a CT model's HU metrics against an MRI are refused), and a source or target
contrast the model was not trained on is warned about (the source with ``vocabulary.modality_warning``,
as ``duald-synthesize`` does).

Which map ``duald-synthesize --heatmap`` writes: the bundle's first (``SynthesisEngine.heatmap_sources``),
i.e. the expected error whenever the bundle has that head, because it validated best: on the
leave-one-source-out folds it scored AUROC 0.78 against 0.69 for the edge baseline and 0.51–0.66 for
D2's map. ``--heatmap-source`` picks the other; this report shows both so a user can check on their data.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from DualDSynthesisLib.core.console import HelpFormatter, safe_console
from DualDSynthesisLib.core.errors import DualDError, OutputExistsError, OutputWriteError
from DualDSynthesisLib.core.file_contrasts import subject_and_contrast
from DualDSynthesisLib.core.vocabulary import CONTRAST_ALIASES, canonical_contrast, modality_family, modality_warning
from DualDSynthesisLib.imaging.atomic import atomic_write_json, same_file
from DualDSynthesisLib.imaging.preprocess import validate_volume
from DualDSynthesisLib.inference.engine import SynthesisEngine
from DualDSynthesisLib.model.inputs import InputDeclaration, InputError

from .discovery import DiscoveryError, SubjectPair, discover
from .evaluation import EDGE_MAP, SubjectEvaluation, evaluate_images, format_table, hu_report, summarise
from .pair_files import _read_full, load_pair

DESCRIPTION = """Check a model bundle on your own paired volumes: every subject found (the same discovery as
duald-train) is synthesised through the engine a user runs and compared with its real target.

metrics (per subject and mean (std) over subjects):
  PSNR   10·log10(range² / MSE) in dB; range 1 for MRI (both volumes scaled so the foreground's 99.5th
         percentile is 1; the synthetic one with the bundle's reference scale), 4095 HU for CT
  MAE    mean |synthetic − real| in those units (HU for CT); ME the mean signed error (bias)
  SSIM   structural similarity (7-voxel window) averaged inside the region
  regions: whole volume, foreground (the source's brain/head; the body for CT), each label
  trust maps: for each map the bundle offers (expected_error, d2) and the edge baseline (|∇ synthetic|),
         AUROC = how well it finds the worst 10 % |error| voxels of the foreground (0.5 = chance),
         Spearman = its rank correlation with |error| there"""
EXAMPLES = """examples:
  duald-evaluate --model runs/t1t2/model-best.safetensors --data /data/brats --source t1 --target t2
  duald-evaluate --model sct.safetensors --data pairs.csv --source t1 --target ct --split test --json eval.json
  duald-evaluate --model t1flair_to_t2.safetensors --data /data/brats --source t1,flair --target t2"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="duald-evaluate", description=DESCRIPTION, formatter_class=HelpFormatter,
                                epilog=EXAMPLES)
    p.add_argument("--model", required=True, type=Path, help="model bundle (.safetensors)")
    p.add_argument("--data", required=True, type=Path, help="BraTS-like folder or CSV manifest")
    p.add_argument("--source", required=True,
                   help="source contrast, e.g. t1; a multi-input model's inputs to evaluate it with, e.g. t1,flair "
                        "(the model's reference first; subjects without one of them are skipped)")
    p.add_argument("--target", required=True, help="target contrast, e.g. t2 or ct")
    p.add_argument("--subjects", nargs="*", help="evaluate only these subject ids")
    p.add_argument("--split", help="evaluate only subjects of this split (manifest column / split folder)")
    p.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    return p


def _finite(obj):  # JSON has no inf/nan: write them as strings a reader can parse back with float()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _check_json_folder(path: Path, overwrite: bool) -> None:
    """Before the evaluation, not after it: the report's path is free (or may be replaced) and writable."""
    if path.is_dir():
        raise OutputExistsError(f"--json {path} is a folder, not a file name")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass --overwrite to replace it")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        raise OutputWriteError(f"could not write {path}: its folder cannot be created") from None
    if not os.access(folder, os.W_OK):
        raise OutputWriteError(f"could not write {path}: the folder is not writable")


def _inputs(args: argparse.Namespace, pairs: list[SubjectPair]) -> Iterator[tuple[str, Path]]:
    """Every file the evaluation reads, with what it is: the model, the manifest and each pair's files."""
    yield "the model bundle", args.model
    if args.data.is_file():
        yield "the manifest", args.data
    for pair in pairs:
        for role in ("source", "target", "mask", "foreground"):
            path = getattr(pair, role)
            if path is not None:
                yield f"the {role} file of subject {pair.subject}", path
        for contrast, path in getattr(args, "other_inputs", {}).get(pair.subject, {}).items():
            yield f"the {contrast} file of subject {pair.subject}", path


def _check_json_is_no_input(args: argparse.Namespace, pairs: list[SubjectPair]) -> None:
    """--overwrite replaces an earlier report, never what is evaluated (compared as duald-synthesize does)."""
    for what, path in _inputs(args, pairs):
        if same_file(args.json, path):
            raise OutputExistsError(f"--json {args.json} is {what}, which the report would replace; "
                                    "choose another file")


def _check_modalities(args: argparse.Namespace, engine: SynthesisEngine) -> None:
    """A target of another modality family is refused (its scores, HU for a CT model, would compare a CT with
    an MRI); another contrast of the family, or a source the model was not trained on, is warned about."""
    model, given = engine.target_modality, args.target
    if modality_family(model) and modality_family(given) and modality_family(model) != modality_family(given):
        raise DualDError(f"this model synthesises {model} images but --target is {given} (another modality), "
                         f"so its scores would compare unlike images; evaluate it against {model} targets")
    target = canonical_contrast(given) or given
    if modality_family(model) == "mr" and target != (canonical_contrast(model) or model):
        print(f"duald-evaluate: warning: this model synthesises {model} images but --target is {given}, so the "
              "scores compare two different contrasts", file=sys.stderr)
    source = modality_warning(_sources(args)[0], engine.source_modality)  # what duald-synthesize says for it
    if source is not None:
        print(f"duald-evaluate: warning: {source}", file=sys.stderr)


def _sources(args: argparse.Namespace) -> tuple[str, ...]:
    """``--source``'s contrasts, canonical, the reference first (``InputDeclaration.parse``'s checks)."""
    try:
        return InputDeclaration.parse(args.source).names
    except InputError as exc:
        raise DualDError(str(exc)) from None


def _check_inputs(args: argparse.Namespace, engine: SynthesisEngine) -> None:
    """Several listed sources are inputs this model reads, its reference first. One source is the reference
    whatever its name (another contrast is warned about, as duald-synthesize does: ``_check_modalities``)."""
    names, declared = _sources(args), engine.metadata.inputs
    if len(names) == 1:
        return
    try:
        declared.check_given(names)
    except InputError as exc:
        raise DualDError(f"--source {args.source}: {exc}") from None
    if names[0] != declared.reference:
        raise DualDError(f"--source {args.source}: list the model's reference input {declared.reference} first")


def _other_files(pair: SubjectPair, data: Path, contrasts: tuple[str, ...]) -> dict[str, Path]:
    """The subject's file of each further contrast, paired as discovery pairs a subject's files: any file of that
    contrast in the subject's own folder, or in a flat data folder the one named with the subject's prefix."""
    folder = pair.source.parent
    flat = folder.resolve() == data.resolve()
    found: dict[str, Path] = {}
    for contrast in contrasts:
        named = [(p, subject_and_contrast(p)) for p in sorted(folder.iterdir()) if p.is_file()]
        matches = [p for p, n in named if n is not None and n[1] == contrast and (not flat or n[0] == pair.subject)]
        if not matches:
            raise DiscoveryError(f"no {contrast} image (a name ending in {'/'.join(CONTRAST_ALIASES[contrast])})")
        if len(matches) > 1:
            raise DiscoveryError(f"several {contrast} images ({', '.join(p.name for p in matches)})")
        found[contrast] = matches[0]
    return found


def _with_other_inputs(args: argparse.Namespace, pairs: list[SubjectPair]) -> list[SubjectPair]:
    """The pairs that have a file of every further ``--source`` contrast (``args.other_inputs`` holds them)."""
    others = _sources(args)[1:]
    args.other_inputs = {}
    if not others:
        return pairs
    if args.data.is_file():
        raise DiscoveryError(f"--source {args.source} lists several inputs, but a manifest names one source per "
                             "row; give a data folder")
    kept = []
    for pair in pairs:
        try:
            args.other_inputs[pair.subject] = _other_files(pair, args.data, others)
        except DiscoveryError as exc:
            print(f"skipped {pair.subject}: {exc}", file=sys.stderr)
            continue
        kept.append(pair)
    if not kept:
        raise DiscoveryError(f"no subject has a file of every --source contrast ({', '.join(_sources(args))})")
    return kept


def _pairs(args: argparse.Namespace) -> tuple[list[SubjectPair], list[SubjectPair]]:
    """(every usable pair found, the pairs chosen by --subjects and --split)."""
    found = discover(args.data, _sources(args)[0], args.target)
    for note in found.notes:
        print(f"note: {note}", file=sys.stderr)
    for rejection in found.rejected:
        print(f"skipped {rejection.subject}: {rejection.reason}", file=sys.stderr)
    found.pairs = _with_other_inputs(args, found.pairs)
    pairs = found.pairs
    if args.subjects:
        unknown = sorted(set(args.subjects) - {p.subject for p in pairs})
        if unknown:
            raise DiscoveryError(f"subject(s) not found among the usable pairs: {', '.join(unknown)}")
        pairs = [p for p in pairs if p.subject in args.subjects]
    if args.split:
        pairs = [p for p in pairs if p.split == args.split]
        if not pairs:
            raise DiscoveryError(f"no usable pair has split {args.split!r}")
    return found.pairs, pairs


def _evaluate(pair: SubjectPair, engine: SynthesisEngine, others: dict[str, SynthesisEngine],
              source_modality: str, inputs: dict[str, Path]) -> SubjectEvaluation:
    source, target, labels = load_pair(pair)
    validate_volume(target, f"target file {pair.target.name}")  # e.g. constant: say so, by name
    # the further inputs, on their own grids: the engine brings them onto the source's (contract.run)
    given = {"others": {c: _read_full(p, pair.subject, c) for c, p in inputs.items()}} if inputs else {}
    # skull="keep": the scores cover the source's whole foreground, so a stripped prediction would count
    # its background outside the brain as error (experiments/skull_handling.py scores the brain region)
    out = engine.run(source, source_modality=source_modality, skull="keep", **given)
    maps = {} if out.heatmap is None else {engine.heatmap_source: out.heatmap}
    for name, other in others.items():
        maps[name] = other.run(source, source_modality=source_modality, skull="keep", **given).heatmap
    res = evaluate_images(pair.subject, out.synthetic, target, source, engine.spec, out.heatmap, labels, maps)
    res.warnings += out.warnings
    return res


def _subject_line(res: SubjectEvaluation, seconds: float) -> str:
    fg = res.regions.get("foreground") or res.regions.get("body")
    return (
        f"{res.subject}: PSNR {fg['psnr']:.2f} dB, MAE {fg['mae']:.4g}, SSIM {fg['ssim']:.4f} (foreground); "
        "AUROC worst-10% error " + ", ".join(f"{name} {s['auroc']:.3f}" for name, s in res.maps.items())
        + "".join(f"; expected / real MAE {s['mae_ratio']:.2f}" for s in res.maps.values() if "mae_ratio" in s)
        + f"; {seconds:.1f} s"
    )


def run(args: argparse.Namespace) -> dict:
    if args.json is not None:
        _check_json_folder(args.json, args.overwrite)
    found, pairs = _pairs(args)
    if args.json is not None:
        _check_json_is_no_input(args, found)
    engine = SynthesisEngine(args.model, device=args.device)
    _check_inputs(args, engine)
    _check_modalities(args, engine)
    # One engine per further map, sharing the loaded bundle: each run gives one heatmap.
    others = {name: SynthesisEngine(engine.bundle, device=args.device, heatmap_source=name)
              for name in engine.heatmap_sources[1:]}
    results: list[SubjectEvaluation] = []
    for pair in pairs:
        t0 = time.perf_counter()
        try:
            res = _evaluate(pair, engine, others, _sources(args)[0], args.other_inputs.get(pair.subject, {}))
        except DualDError as exc:  # one bad subject (e.g. a constant target) must not lose the others
            message = str(exc).rstrip(".").replace(f"subject {pair.subject}: ", "")
            print(f"skipped {pair.subject}: {message}", file=sys.stderr)
            continue
        results.append(res)
        print(_subject_line(res, time.perf_counter() - t0), flush=True)
    if not results:
        raise DualDError("no subject could be evaluated (see the skipped lines above)")
    summary = summarise(results)
    print(format_table(summary))
    if engine.spec.target.kind == "ct_hu" and "body" in summary:
        print(hu_report(summary))
    report = {
        "model": str(args.model),
        "variant": engine.metadata.variant,
        "source_modality": engine.source_modality,
        "inputs": list(_sources(args)),  # the contrasts every subject was synthesised from
        "target_modality": engine.target_modality,
        "target_units": engine.spec.target.description,  # HU, or what one normalised MRI unit is
        "heatmap_source": engine.heatmap_source,  # what --heatmap writes: the bundle's preferred map
        "heatmap_units": engine.heatmap_units if engine.heatmap_source else "",
        "maps": [*engine.heatmap_sources, EDGE_MAP],  # scored in summary["map <name>"] and subjects[].maps
        "subjects": [asdict(r) for r in results],
        "summary": summary,
    }
    if args.json is not None:
        atomic_write_json(args.json, _finite(report), indent=2)
    return report


def main(argv: list[str] | None = None) -> int:
    safe_console()
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except DualDError as exc:  # user errors only: a bug in our code keeps its traceback
        print(f"duald-evaluate: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
