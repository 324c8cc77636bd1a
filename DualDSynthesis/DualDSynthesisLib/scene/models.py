"""The models a user can pick: the bundles shipped with the extension, the user's own (fine-tuned) bundles
in a folder they choose, the devices and the Python requirements.

Torch-free: a bundle is described from its metadata alone (``bundle.read_metadata``), so the panel and the
viewer can list models before PyTorch is installed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import DualDError
from ..core.resources import DEFAULT_MODEL, RESOURCES_DIR
from ..imaging.bundle import BundleMetadata, read_metadata
from ..imaging.model_choice import BUNDLE_SUFFIX
from ..imaging.model_choice import bundled_models as bundled_models  # the panel's list (logic.bundled_models)

REQUIREMENTS_FILE = RESOURCES_DIR / "requirements.txt"


@dataclass(frozen=True)
class ModelEntry:
    """One bundle file of a models folder: its metadata, or (unreadable) the one-sentence reason why not."""

    path: Path
    metadata: BundleMetadata | None = None
    problem: str | None = None

    @property
    def readable(self) -> bool:
        return self.metadata is not None

    @property
    def label(self) -> str:
        """One line naming the bundle and, for a fine-tuned one, its parent and site."""
        if self.metadata is None:
            return f"{self.path.stem} (unreadable: {self.problem})"
        provenance = self.metadata.provenance
        parent, site = provenance.get("parent"), provenance.get("site")
        if not parent and not site:
            return self.path.stem
        parent_name = (parent.get("name") or parent.get("file")) if isinstance(parent, dict) else parent
        return f"{self.path.stem} (fine-tuned from {parent_name or 'an unknown parent'} at {site or 'an unknown site'})"


def models_in(folder: str | Path) -> list[ModelEntry]:
    """Every ``.safetensors`` file directly in ``folder`` (not recursive), sorted by name; an unreadable one
    is kept with its reason so a list can show why it cannot be picked. A missing folder is refused."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DualDError(f"the models folder {folder} does not exist or is not a folder")
    entries = []
    for path in sorted(folder.glob(f"*{BUNDLE_SUFFIX}")):
        try:
            entries.append(ModelEntry(path, metadata=read_metadata(path)))
        except (DualDError, OSError, ValueError) as error:
            entries.append(ModelEntry(path, problem=str(error)))
    return entries


def folder_models(folder: str | Path | None) -> tuple[list[ModelEntry], str]:
    """A model list's share of a models folder: its readable bundles, and one line per file not listed (or why
    the folder cannot be listed) for a tooltip or a note. No folder (None, "" or an unset path's "."): nothing."""
    if folder is None or str(folder) in ("", "."):
        return [], ""
    try:
        entries = models_in(folder)
    except DualDError as error:
        return [], str(error)
    return [e for e in entries if e.readable], "\n".join(f"not listed: {e.label}" for e in entries if not e.readable)


def describe_model(path: str | Path | None) -> str:
    """The panel's line about a chosen bundle: its metadata's summary, or why it cannot be read."""
    if path is None:
        return ""
    try:
        return read_metadata(path).summary()
    except ImportError:
        return "model details need PyTorch"
    except (OSError, ValueError) as error:  # BundleError, the metadata's own checks, an unreadable file
        return str(error)


def default_model_name() -> str:
    """The name (file stem) of the documented default model, as the panel's model list shows it."""
    return DEFAULT_MODEL.stem


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def available_devices() -> list[str]:
    """``auto``, ``cpu`` and ``cuda:<i>`` for each visible GPU (only if torch is already importable)."""
    devices = ["auto", "cpu"]
    if not torch_available():
        return devices
    import torch

    devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def missing_requirements(requirements_file: Path = REQUIREMENTS_FILE) -> list[str]:
    """Requirement lines of ``requirements_file`` whose distribution is not installed
    (torch excluded: it comes from the PyTorch extension). Versions are not checked."""
    missing = []
    for line in requirements_file.read_text(encoding="utf-8").splitlines():
        requirement = line.split("#", 1)[0].strip()
        if not requirement:
            continue
        name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]
        if name.lower() == "torch":
            continue
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(requirement)
    return missing
