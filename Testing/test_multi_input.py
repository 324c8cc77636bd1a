"""Multi-input models end to end (issue 23): discovery of every input, a tiny duald-train run with --source
t1,flair, the bundle's declaration and per-input fingerprint, --init-from with the inputs in the recipe, and the
engine fed with and without the optional input, on the reference grid or any other."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from _training_data import TINY_ARCH_FLAGS, write_subjects
from DualDSynthesisLib.imaging.bundle import read_metadata
from DualDSynthesisLib.imaging.fingerprint import TrainingFingerprint
from DualDSynthesisLib.model.inputs import InputDeclaration
from DualDTrainingLib import cli
from DualDTrainingLib.discovery import discover
from DualDTrainingLib.errors import TrainingError


def flair_path(t2: Path) -> Path:
    return t2.with_name(t2.name.replace("-t2w", "-t2f").replace("_t2_", "_flair_"))


def add_flairs(root: Path, skip: int = 2) -> list[Path]:
    """A FLAIR-like volume (another monotone contrast of the T2) beside the T2 of every subject but the
    ``skip``-th (in name order)."""
    written = []
    for i, folder in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        if i == skip:
            continue
        t2 = next(p for p in folder.iterdir() if "t2w" in p.name or "_t2_" in p.name)
        image = sitk.Cast(sitk.ReadImage(str(t2)), sitk.sitkFloat32)
        sitk.WriteImage(sitk.Cast(sitk.Sqrt(image) * 20.0, sitk.sitkInt16), str(flair_path(t2)))
        written.append(flair_path(t2))
    return written


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_subjects(tmp_path_factory.mktemp("multi") / "data")
    add_flairs(root, skip=0)  # a training subject without FLAIR; the validation subject (the last) has one
    return root


def _train(data: Path, out: Path, *extra: str, source: str = "t1,flair") -> list[str]:
    return ["--data", str(data), "--source", source, "--target", "t2", "--variant", "unet", "--iterations", "4",
            "--output", str(out), "--batch-size", "2", "--val-every", "2", "--log-every", "1", "--workers", "1",
            "--device", "cpu", *TINY_ARCH_FLAGS, *extra]


@pytest.fixture(scope="module")
def bundle(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("multi-run") / "run"
    assert cli.main(_train(data, out)) == 0
    return out / "model-final.safetensors"


# ----------------------------------------------------------------------------- discovery


def test_discovery_finds_every_input_and_rejects_a_missing_required_one(data: Path) -> None:
    found = discover(data, "t1,flair", "t2")
    by_subject = {p.subject: dict(p.others) for p in found.pairs}
    assert len(found.pairs) == 3 and sum("flair" in o for o in by_subject.values()) == 2  # optional: kept without
    required = discover(data, "t1,flair", "t2", required="flair")
    assert len(required.pairs) == 2
    (rejection,) = required.rejected
    assert rejection.subject == "BraTS-GLI-00000-000" and "no flair image" in rejection.reason
    with pytest.raises(Exception, match="unknown source contrast 'bogus'"):
        discover(data, "t1,bogus", "t2")
    with pytest.raises(Exception, match="both t2"):
        discover(data, "t1,t2", "t2")


# ----------------------------------------------------------------------------- training and the bundle


def test_the_bundle_declares_its_inputs_and_fingerprints_each(bundle: Path) -> None:
    meta = read_metadata(bundle)
    assert meta.inputs == InputDeclaration.parse("t1,flair")
    assert meta.source_modality == "t1" and meta.architecture.in_channels == meta.inputs.channels(1) == 7
    fp = TrainingFingerprint.from_dict(meta.fingerprint)
    (name, flair), = fp.others
    assert name == "flair" and flair.n_subjects == 1  # of the two training subjects, one has a FLAIR
    assert fp.n_subjects == 2
    assert TrainingFingerprint.from_dict(fp.to_dict()) == fp  # the per-input fingerprint round-trips
    assert "t1 + optional flair" in meta.summary()


def test_required_sources_needs_several_sources(data: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="needs several --source"):
        cli.resolved_config(_train(data, tmp_path / "o", "--required-sources", "t1", source="t1"))
    with pytest.raises(TrainingError, match="'t2' is not one of the sources"):
        cli.resolved_config(_train(data, tmp_path / "o", "--required-sources", "t2"))


def test_init_from_takes_the_inputs_and_refuses_contradicting_sources(data: Path, bundle: Path,
                                                                       tmp_path: Path) -> None:
    argv = [*_train(data, tmp_path / "o", "--init-from", str(bundle), source="T1w,FLAIR")]
    cfg = cli.resolved_config(argv)  # the same inputs under aliases
    assert cfg.inputs() == read_metadata(bundle).inputs
    for source in ("t1", "t1,t1c", "flair,t1"):
        with pytest.raises(TrainingError) as err:
            cli.resolved_config(_train(data, tmp_path / "o", "--init-from", str(bundle), source=source))
        message = str(err.value)  # names both: the run's sources and the parent's
        assert (f"--source {source} contradicts" in message or f"source is {source}" in message), message
        assert "t1,flair" in message
    with pytest.raises(TrainingError, match="--required-sources flair contradicts"):
        cli.resolved_config(_train(data, tmp_path / "o", "--init-from", str(bundle), "--required-sources", "flair"))


def test_a_device_sampler_run_trains_a_multi_input_model(data: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from DualDTrainingLib import loop

    monkeypatch.setattr(loop, "use_device_sampler", lambda device: True)
    out = tmp_path / "run"
    assert cli.main(_train(data, out, "--iterations", "2", "--crop-size", "32", "--input-dropout", "1")) == 0
    assert read_metadata(out / "model-final.safetensors").inputs.names == ("t1", "flair")
    assert np.isfinite(read_metadata(out / "model-final.safetensors").metrics["metrics"]["psnr_foreground"])
