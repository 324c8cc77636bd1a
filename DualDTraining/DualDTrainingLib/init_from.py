"""``--init-from BUNDLE``: what a fine-tune takes from its parent bundle, checked before anything is written.

The parent fixes the architecture, the input recipe (source normalisation, context slices, in-plane
spacing when the bundle records one) and the target mapping: those options take the bundle's values, and
one the user *gave* with another value is refused naming both (:func:`resolve`). The source and target
contrasts must be the bundle's (not given, they are). The options the user did not give take
:data:`config.FINETUNE_DEFAULTS`.
Which options count as given is the command line's business (``cli.given_options``): this module only
receives their names. Torch-free: ``duald-train`` refuses a wrong parent before it imports PyTorch.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from DualDSynthesisLib.core.resources import MODELS_DIR
from DualDSynthesisLib.core.vocabulary import canonical_contrast
from DualDSynthesisLib.imaging.atomic import same_file
from DualDSynthesisLib.imaging.bundle import BundleError, BundleMetadata, read_metadata
from DualDSynthesisLib.model.intensity import SOURCE_NORMS

from .config import FINETUNE_DEFAULTS, RunConfig
from .errors import TrainingError
from .option_values import parse_spacing

# The bundles a run writes into its output folder (run_folder.ARTEFACTS lists them too).
OUTPUT_BUNDLES = ("model-final.safetensors", "model-best.safetensors", "model-recalibrated.safetensors")


def source_norm_name(meta: BundleMetadata) -> str | None:
    """The ``--source-norm`` name of the bundle's source mapping (None: a mapping no name stands for)."""
    wanted = meta.preprocessing.source.to_dict()
    return next((name for name, m in SOURCE_NORMS.items() if m.to_dict() == wanted), None)


def _spacing_text(meta: BundleMetadata) -> str:
    sp = meta.preprocessing.spacing
    return "" if sp is None else f"{sp[0]:g},{sp[1]:g}"


# RunConfig option → its value in the parent bundle. The spacing only when the bundle records one.
RECIPE: dict[str, Callable[[BundleMetadata], Any]] = {
    "base_width": lambda m: m.architecture.g_base_width,
    "depth": lambda m: m.architecture.g_depth,
    "d2_base_width": lambda m: m.architecture.d2_base_width,
    "error_head": lambda m: m.architecture.g_error_head,
    "d2_head": lambda m: m.architecture.d2_head,
    "context_slices": lambda m: m.preprocessing.context_slices,
    "source_norm": source_norm_name,
    "spacing": _spacing_text,
    "target_kind": lambda m: "ct" if m.preprocessing.target.kind == "ct_hu" else "mri",
    # the input contrasts (model/inputs.py): G's channels are laid out for them
    "source": lambda m: ",".join(m.inputs.names),
    "required_sources": lambda m: ",".join(m.inputs.required[1:]),
}
_INPUTS = ("source", "required_sources")  # compared as declarations (aliases, order of the required ones)


def flag(name: str) -> str:
    """The duald-train flag that sets RunConfig option ``name``."""
    return "--no-error-head" if name == "error_head" else "--" + name.replace("_", "-")


def _same(name: str, given: Any, parent: Any, cfg: RunConfig) -> bool:
    if name in _INPUTS:
        mine = dataclasses.replace(cfg, **{name: given})
        theirs = dataclasses.replace(cfg, source=parent) if name == "source" else \
            dataclasses.replace(cfg, required_sources=parent)
        try:
            return mine.inputs() == theirs.inputs()
        except TrainingError:
            return False
    if name == "spacing":
        return parse_spacing(given) == parse_spacing(parent)
    if name == "target_kind":
        return dataclasses.replace(cfg, target_kind=given).resolved_target_kind() == parent
    return bool(given == parent)


def _shown(name: str, value: Any) -> str:
    if name == "error_head":
        return "an expected-error head" if value else "no expected-error head"
    return str(value)


def read_parent(path: str | Path) -> BundleMetadata:
    """The parent's metadata; a checkpoint, a foreign file or damaged metadata: one TrainingError sentence."""
    path = Path(path).expanduser()
    if path.suffix in (".pt", ".pth", ".ckpt"):
        raise TrainingError(f"--init-from {path.name} is a training checkpoint, not a model bundle: start from "
                            "a run's model-final.safetensors or model-best.safetensors")
    try:
        return read_metadata(path)
    except BundleError as exc:
        raise TrainingError(f"--init-from: {str(exc).rstrip('.')}") from None


def check_task(cfg: RunConfig, meta: BundleMetadata, path: Path) -> None:
    """The fine-tune's contrasts must be the parent's (another task is another model, not a fine-tune)."""
    sources = ",".join(meta.inputs.names) if len(meta.inputs) > 1 else meta.source_modality
    for role, mine, parents in (("source", cfg.reference, meta.source_modality),
                                ("target", cfg.target, meta.target_modality)):
        if (canonical_contrast(mine) or mine.lower()) != (canonical_contrast(parents) or parents.lower()):
            raise TrainingError(
                f"--init-from {path.name} maps {sources} → {meta.target_modality}, but this run's "
                f"{role} is {cfg.source if role == 'source' else mine}: a fine-tune keeps its parent's task, so "
                f"start from a {cfg.source} → {cfg.target} bundle or train from scratch")


def check_output(cfg: RunConfig, path: Path) -> None:
    """Never write onto the parent or into the shipped models' folder."""
    out = cfg.output.expanduser()
    if any(same_file(path, out / name) for name in OUTPUT_BUNDLES):
        raise TrainingError(f"--output {out} would overwrite the parent bundle {path.name}; choose another folder")
    resolved, shipped = out.resolve(), MODELS_DIR.resolve()
    if resolved == shipped or shipped in resolved.parents:
        raise TrainingError(f"--output {out} is inside the shipped models' folder; choose a folder of your own")


def resolve(cfg: RunConfig, given: Collection[str]) -> RunConfig:
    """``cfg`` with the parent's recipe and the fine-tuning defaults; ``given``: the options the user set.
    A given recipe option that differs from the parent's is refused naming both values."""
    cfg.check()
    if not cfg.init_from:
        return cfg
    path = Path(cfg.init_from).expanduser()
    meta = read_parent(path)
    cfg = dataclasses.replace(cfg, source=cfg.source or meta.source_modality,
                              target=cfg.target or meta.target_modality)  # not given: the parent's task
    check_task(cfg, meta, path)
    check_output(cfg, path)
    updates: dict[str, Any] = {}
    for name, value_of in RECIPE.items():
        parent = value_of(meta)
        if name == "source_norm" and parent is None:
            continue  # a mapping with settings no --source-norm name has: the bundle's own spec is used
        if name in given and not _same(name, getattr(cfg, name), parent, cfg):
            mine = "given" if name == "error_head" else _shown(name, getattr(cfg, name))
            advice = f"give {flag(name)} {parent}" if name in _INPUTS and parent else f"leave {flag(name)} out"
            raise TrainingError(f"{flag(name)} {mine} contradicts --init-from {path.name}, whose "
                                f"{name.replace('_', ' ')} is {_shown(name, parent) or 'the data’s'}: the "
                                f"architecture and input recipe come from the parent, so {advice}")
        if name not in _INPUTS or not _same(name, getattr(cfg, name), parent, cfg):
            updates[name] = parent  # the user's spelling of the same inputs is kept (t1w for t1)
    if "variant" not in given:
        updates["variant"] = meta.variant
    for name, value in FINETUNE_DEFAULTS.as_dict().items():
        if name not in given:
            updates[name] = value
    return dataclasses.replace(cfg, **updates)


def parent_record(path: str | Path, meta: BundleMetadata) -> dict[str, Any]:
    """The parent as a fine-tuned bundle's provenance records it: name, file name and content hash."""
    path = Path(path)
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"name": meta.name, "file": path.name, "sha256": digest.hexdigest()}


def site_name(cfg: RunConfig) -> str:
    """``--site``, else the data folder's (or manifest's) name."""
    data = cfg.data.expanduser()
    return cfg.site or (data.stem if data.suffix.lower() == ".csv" else data.resolve().name)
