"""The model bundle: one ``.safetensors`` file holding G and D2 plus JSON metadata.

safetensors is a flat table of tensors behind a JSON header; reading it never executes code, unlike
a pickled ``.pt``. The metadata (architecture, variant, modalities, preprocessing, provenance,
metrics) lives in the header's ``__metadata__`` under the key ``duald`` as one JSON string, so the
bundle is a single file a user can copy.

The metadata is parsed once, strictly, into typed objects (:class:`ArchitectureConfig`,
:class:`PreprocessingSpec`); an unknown key anywhere is refused with a sentence naming it. Reading it
(:func:`read_metadata`) needs no torch, so the Slicer panel can describe a model before PyTorch is
installed; torch and the networks are imported only to save or load the weights.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import DualDError, OutputExistsError
from ..core.vocabulary import VARIANTS, canonical_contrast
from ..model.architecture import ArchitectureConfig
from ..model.inputs import InputDeclaration, InputError
from . import heatmap_kinds
from .atomic import atomic_write, safetensors_problem
from .calibration import CalibrationError, ErrorCalibration

if TYPE_CHECKING:  # torch is imported only where weights are saved or loaded
    import torch

    from ..model.networks import LocalDiscriminator, UNetGenerator
    from .preprocess import PreprocessingSpec

# Version 2 added the architecture's g_error_head/d2_head, the preprocessing's context_slices and
# mri_peak mapping, and the training-data fingerprint; a version-1 bundle is a version-2 bundle with
# their defaults, so both load. Version 3 added ``error_calibration`` (absent = uncalibrated). Version 4 added
# ``inputs`` (absent = the one required source_modality, model/inputs.py).
FORMAT_VERSION = 4
SUPPORTED_FORMAT_VERSIONS = (1, 2, 3, 4)
METADATA_KEY = "duald"
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


class BundleError(DualDError):
    """A file that is not a valid DualD model bundle; the message is one sentence for the user."""


@dataclass
class BundleMetadata:
    """A bundle's metadata. ``architecture``/``preprocessing`` may be given as their JSON dicts; they are
    parsed here, once, so every reader sees the typed objects."""

    architecture: ArchitectureConfig
    variant: str
    source_modality: str
    target_modality: str
    preprocessing: PreprocessingSpec
    has_local_discriminator: bool
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    name: str = "DualD model"
    description: str = ""
    format_version: int = FORMAT_VERSION
    # The training sources' statistics (fingerprint.TrainingFingerprint.to_dict()); {} = not recorded.
    fingerprint: dict[str, Any] = field(default_factory=dict)
    # The factor the expected-error map is multiplied by, and its held-out evidence (calibration.py).
    error_calibration: ErrorCalibration = field(default_factory=ErrorCalibration)
    # The input contrasts G reads (model/inputs.py); None = the one required ``source_modality``.
    inputs: InputDeclaration | None = None

    def __post_init__(self) -> None:
        # Here, not at the top: HEATMAP_SOURCES (duald-synthesize's parser) must not import SimpleITK and scipy.
        from .preprocess import PreprocessError, PreprocessingSpec

        # An edited bundle whose JSON still parses must get a sentence too, not a traceback later.
        for name in ("variant", "source_modality", "target_modality", "name", "description"):
            if not isinstance(getattr(self, name), str):
                raise BundleError(f"the bundle's {name} must be text, got {getattr(self, name)!r}")
        for name in ("architecture", "preprocessing", "provenance", "metrics", "fingerprint"):
            value = getattr(self, name)
            if not isinstance(value, dict | ArchitectureConfig | PreprocessingSpec):
                raise BundleError(f"the bundle's {name} must be a JSON object, got {type(value).__name__}")
        if not isinstance(self.architecture, ArchitectureConfig):
            try:
                self.architecture = ArchitectureConfig.from_dict(self.architecture)
            except (TypeError, ValueError) as exc:
                raise BundleError(f"the bundle's architecture is invalid: {exc}") from None
        if not isinstance(self.preprocessing, PreprocessingSpec):
            try:
                self.preprocessing = PreprocessingSpec.from_dict(self.preprocessing)
            except (PreprocessError, TypeError, ValueError) as exc:
                raise BundleError(f"the bundle's preprocessing is invalid: {str(exc).rstrip('.')}") from None
        if not isinstance(self.error_calibration, ErrorCalibration):
            try:
                self.error_calibration = ErrorCalibration.from_dict(self.error_calibration)
            except CalibrationError as exc:
                raise BundleError(str(exc)) from None
        if not isinstance(self.has_local_discriminator, bool):
            raise BundleError("the bundle's has_local_discriminator must be true or false")
        self._check_inputs()
        if self.variant not in VARIANTS:
            raise BundleError(f"unknown variant {self.variant!r}; expected one of {', '.join(VARIANTS)}")

    def _check_inputs(self) -> None:
        """Parse ``inputs`` and check it against the source modality and G's input channels."""
        try:
            # one input is the source modality (also after ``dataclasses.replace(meta, source_modality=...)``)
            if self.inputs is None or len(self.inputs) == 1:
                self.inputs = InputDeclaration.single(self.source_modality)
            elif not isinstance(self.inputs, InputDeclaration):
                self.inputs = InputDeclaration.from_list(self.inputs)
        except InputError as exc:
            raise BundleError(f"the bundle's inputs are invalid: {str(exc).rstrip('.')}") from None
        if self.inputs.reference != (canonical_contrast(self.source_modality) or self.source_modality):
            raise BundleError(f"the bundle's first input ({self.inputs.reference}) is not its source modality "
                              f"({self.source_modality})")
        wanted = self.inputs.channels(self.preprocessing.context_slices)
        if len(self.inputs) > 1 and self.architecture.in_channels != wanted:
            raise BundleError(f"the bundle's generator reads {self.architecture.in_channels} channels, but its "
                              f"inputs ({self.inputs.describe()}) with {self.preprocessing.context_slices} context "
                              f"slice(s) make {wanted}")

    @property
    def heatmap_sources(self) -> tuple[str, ...]:
        """The trust maps this model can produce, the preferred first: G's expected-error head ranks the
        errors best where both exist (docs/generalisation.md), D2's difficulty map otherwise."""
        return tuple(kind.name for kind in heatmap_kinds.kinds() if kind.offered_by(self))

    def summary(self) -> str:
        """One line for the Slicer panel and logs (needs no torch)."""
        offered = [heatmap_kinds.kind(m) for m in self.heatmap_sources]
        heat = " and ".join(f"{k.title} heatmap" for k in offered) or "no heatmap"
        source = self.inputs.describe() if len(self.inputs) > 1 else self.source_modality
        line = f"{self.name}: {source} → {self.target_modality} ({self.variant}, {heat})"
        if any(k.in_target_units for k in offered):  # the calibration factor is that of the error map
            line += f"; {self.error_calibration.describe()}"
        return line

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["architecture"] = self.architecture.to_dict()
        data["preprocessing"] = self.preprocessing.to_dict()
        data["error_calibration"] = self.error_calibration.to_dict()
        data["inputs"] = self.inputs.to_list()
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BundleMetadata:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BundleError(f"the bundle's metadata is not valid JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise BundleError("the bundle's metadata is not a JSON object")
        version = data.get("format_version")
        if version not in SUPPORTED_FORMAT_VERSIONS:
            raise BundleError(
                f"unsupported bundle format version {version!r}; this DualD reads version(s) "
                f"{', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}"
            )
        known = {f.name for f in fields(cls)}
        required = {"architecture", "variant", "source_modality", "target_modality", "preprocessing"}
        missing = sorted(required - set(data))
        if missing:
            raise BundleError(f"the bundle's metadata lacks {', '.join(missing)}")
        unknown = sorted(set(data) - known)
        if unknown:  # one policy for every config: a key this reader does not know is refused, never dropped
            raise BundleError(f"the bundle's metadata has unknown field(s) {', '.join(unknown)}; "
                              "it needs a newer DualD")
        return cls(**data)


@dataclass
class ModelBundle:
    """Networks in eval mode plus their metadata. ``local_discriminator`` is None for variants
    without a trained D2 (``unet``, ``global``): such a bundle cannot produce a difficulty heatmap."""

    generator: UNetGenerator
    local_discriminator: LocalDiscriminator | None
    metadata: BundleMetadata

    @property
    def architecture(self) -> ArchitectureConfig:
        return self.metadata.architecture

    def to(self, device: torch.device | str) -> ModelBundle:
        self.generator.to(device)
        if self.local_discriminator is not None:
            self.local_discriminator.to(device)
        return self


def save_file(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file``, imported only when a bundle is written (reading metadata needs no torch)."""
    from safetensors.torch import save_file as write

    write(tensors, str(path), metadata=metadata)


def save_bundle(
    path: str | Path,
    generator: torch.nn.Module,
    local_discriminator: torch.nn.Module | None,
    metadata: BundleMetadata,
    overwrite: bool = False,
) -> Path:
    """Write the bundle atomically and verified (``atomic.atomic_write``)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise BundleError(f"a bundle file must end in .safetensors, got {path.name!r}")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass --overwrite to replace it")
    if metadata.has_local_discriminator != (local_discriminator is not None):
        raise BundleError("has_local_discriminator does not match whether a local discriminator was given")
    tensors = {f"generator.{k}": v for k, v in generator.state_dict().items()}
    if local_discriminator is not None:
        tensors.update({f"local_discriminator.{k}": v for k, v in local_discriminator.state_dict().items()})
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    # what this code writes is this code's format, also when it re-saves metadata read from an older bundle
    metadata = replace(metadata, format_version=FORMAT_VERSION)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={METADATA_KEY: metadata.to_json()}),
                 safetensors_problem)
    return path


def _check_container(path: Path) -> None:
    """Recognise a safetensors file by its header before handing it to the parser, so that a
    pickle, a zip (``torch.save``) or a random file gets a sentence a user understands."""
    if not path.is_file():
        raise BundleError(f"model bundle {path} does not exist or is not a file")
    with path.open("rb") as fh:
        head = fh.read(9)
    size = path.stat().st_size
    # The safetensors layout is checked first: its first byte is the low byte of the header length and
    # can be anything, including the pickle opcode 0x80.
    if len(head) == 9:
        (n,) = struct.unpack("<Q", head[:8])
        if n <= _MAX_HEADER and 8 + n <= size and head[8:9] == b"{":
            return
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        raise BundleError(
            f"{path.name} is a PyTorch pickle (.pt/.pth), not a DualD safetensors bundle; "
            "pickles are never loaded because they can execute code"
        )
    if len(head) < 9:
        raise BundleError(f"{path.name} is too short to be a safetensors bundle")
    raise BundleError(f"{path.name} is not a safetensors file (its header is not a JSON table)")


def read_metadata(path: str | Path) -> BundleMetadata:
    """Read and validate only the metadata (cheap: no tensor is loaded)."""
    path = Path(path)
    _check_container(path)
    with path.open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = fh.read(n)
    try:
        meta = json.loads(header).get("__metadata__") or {}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise BundleError(f"{path.name} has a damaged safetensors header") from None
    if METADATA_KEY not in meta:
        raise BundleError(f"{path.name} is a safetensors file but not a DualD bundle (no '{METADATA_KEY}' metadata)")
    return BundleMetadata.from_json(meta[METADATA_KEY])


def _load_module(module: torch.nn.Module, prefix: str, tensors: dict[str, torch.Tensor], name: str) -> None:
    expected = module.state_dict()
    given = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    if missing or unexpected:
        what = f"lacks {missing[0]}" if missing else f"has an unexpected tensor {unexpected[0]}"
        raise BundleError(f"the bundle's {name} does not match its architecture: it {what}")
    for key, ref in expected.items():
        if tuple(given[key].shape) != tuple(ref.shape):
            raise BundleError(
                f"the bundle's {name} tensor {key} has shape {tuple(given[key].shape)}, "
                f"but its architecture needs {tuple(ref.shape)}"
            )
    module.load_state_dict(given, strict=True)


def load_bundle(path: str | Path, device: torch.device | str = "cpu") -> ModelBundle:
    """Load a bundle; anything that is not a valid bundle raises :class:`BundleError`."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    metadata = read_metadata(path)
    arch = metadata.architecture
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{path.name} could not be read as safetensors ({exc})") from None
    # NaN weights would synthesise an all-NaN image that shows as 0. One check over all weights (a per-tensor
    # check is ~200 small ops at every start-up); the tensor is named only when one is bad.
    floats = {key: tensor for key, tensor in tensors.items() if tensor.is_floating_point()}
    if floats and not bool(torch.isfinite(torch.cat([t.reshape(-1).float() for t in floats.values()])).all()):
        key = next(key for key, tensor in floats.items() if not bool(torch.isfinite(tensor).all()))
        raise BundleError(f"{path.name} holds NaN or infinite weights (tensor {key}); the model is broken")
    generator = arch.generator()
    _load_module(generator, "generator.", tensors, "generator")
    local = None
    if metadata.has_local_discriminator:
        local = arch.local_discriminator()
        _load_module(local, "local_discriminator.", tensors, "local discriminator")
    elif any(k.startswith("local_discriminator.") for k in tensors):
        raise BundleError("the bundle holds local-discriminator tensors but its metadata says it has none")
    bundle = ModelBundle(generator.eval(), None if local is None else local.eval(), metadata)
    return bundle.to(device)
