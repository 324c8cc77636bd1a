"""Tiny random bundles that read several input contrasts (issue 23), and a models folder of them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bundles import TINY, spec
from DualDSynthesisLib.imaging.bundle import BundleMetadata, save_bundle
from DualDSynthesisLib.model.inputs import InputDeclaration


def make_input_bundle(path: str | Path, sources: str = "t1,flair", target: str = "t2",
                      required: str | None = None) -> Path:
    """A random-weight U-Net bundle declaring ``sources`` (``InputDeclaration.parse``); G's input channels
    are the declaration's (``channels(context)``), so the engine can run it once it reads several inputs."""
    inputs = InputDeclaration.parse(sources, required)
    arch = dataclasses.replace(TINY, in_channels=inputs.channels(0))
    meta = BundleMetadata(architecture=arch.to_dict(), variant="unet", source_modality=inputs.reference,
                          target_modality=target, preprocessing=spec(target).to_dict(),
                          has_local_discriminator=False, inputs=inputs if len(inputs) > 1 else None)
    return save_bundle(path, arch.generator().eval(), None, meta, overwrite=True)


def models_folder(folder: Path, models: dict[str, tuple[str, str]]) -> dict[str, Path]:
    """``{stem: (sources, target)}`` → bundles ``folder/<stem>.safetensors``."""
    folder.mkdir(parents=True, exist_ok=True)
    return {stem: make_input_bundle(folder / f"{stem}.safetensors", sources, target)
            for stem, (sources, target) in models.items()}
