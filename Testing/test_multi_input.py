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
from DualDTrainingLib.discovery import contrast_of, discover
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
    # a manifest: a column per other input, named by its contrast; an empty required cell rejects the row
    rows = ["subject,source,target,flair"]
    for pair in found.pairs:
        rows.append(f"{pair.subject},{pair.source},{pair.target},{dict(pair.others).get('flair', '')}")
    (data.parent / "pairs.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    listed = discover(data.parent / "pairs.csv", "t1,flair", "t2")
    assert {p.subject: dict(p.others) for p in listed.pairs} == by_subject
    listed = discover(data.parent / "pairs.csv", "t1,flair", "t2", required="flair")
    assert len(listed.pairs) == 2 and "empty flair cell" in listed.rejected[0].reason
    with pytest.raises(Exception, match="needs a 't1c' column"):
        discover(data.parent / "pairs.csv", "t1,t1c", "t2", required="t1c")
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
    # validation scores the subject with every input it has, and with the reference alone
    scores = meta.metrics["per_subject"]["TCGA-DU-7001"]
    assert {"psnr_foreground", "psnr_foreground_required_only", "mae_volume_required_only"} <= set(scores)
    assert scores["psnr_foreground"] != scores["psnr_foreground_required_only"]


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


def test_a_multi_input_run_resumes_exactly(data: Path, tmp_path: Path) -> None:
    """The dropout draws come from the sampler's stream, which the checkpoint carries: 2 + 2 steps = 4 steps."""
    from DualDSynthesisLib.imaging.bundle import load_bundle

    straight, split = tmp_path / "straight", tmp_path / "split"
    assert cli.main(_train(data, straight, "--checkpoint-every", "2")) == 0
    assert cli.main(_train(data, split, "--iterations", "2", "--checkpoint-every", "2")) == 0
    assert cli.main(_train(data, split, "--resume", "--checkpoint-every", "2")) == 0
    a = load_bundle(straight / "model-final.safetensors").generator.state_dict()
    b = load_bundle(split / "model-final.safetensors").generator.state_dict()
    for key in a:
        np.testing.assert_allclose(b[key].numpy(), a[key].numpy(), rtol=1e-5, atol=1e-6, err_msg=key)


def test_a_device_sampler_run_trains_a_multi_input_model(data: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from DualDTrainingLib import loop

    monkeypatch.setattr(loop, "use_device_sampler", lambda device: True)
    out = tmp_path / "run"
    assert cli.main(_train(data, out, "--iterations", "2", "--crop-size", "32", "--input-dropout", "1")) == 0
    assert read_metadata(out / "model-final.safetensors").inputs.names == ("t1", "flair")
    assert np.isfinite(read_metadata(out / "model-final.safetensors").metrics["metrics"]["psnr_foreground"])


# ----------------------------------------------------------------------------- the engine


def _study(data: Path, subject: str = "TCGA-DU-7001") -> tuple[sitk.Image, sitk.Image]:
    files = {contrast_of(p.name): p for p in (data / subject).iterdir()}
    return tuple(sitk.ReadImage(str(files[c]), sitk.sitkFloat32) for c in ("t1", "flair"))  # type: ignore[return-value]


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


@pytest.fixture(scope="module")
def engine(bundle: Path):
    from DualDSynthesisLib.inference.engine import SynthesisEngine

    return SynthesisEngine(bundle, "cpu")


def test_a_multi_input_bundle_synthesises_with_and_without_its_optional_input(engine, data: Path) -> None:
    t1, flair = _study(data)
    alone, both = engine.run(t1), engine.run(t1, others={"FLAIR": flair})
    for result in (alone, both):
        assert result.synthetic.GetSize() == t1.GetSize() and result.synthetic.GetOrigin() == t1.GetOrigin()
        assert np.isfinite(_array(result.synthetic)).all() and result.heatmap is not None
    assert not np.array_equal(_array(alone.synthetic), _array(both.synthetic))  # G reads the FLAIR
    # the availability channel, not only the FLAIR's slices, reaches G: a given all-zero FLAIR is not "absent"
    from DualDSynthesisLib.model.slicestack import slice_stack

    stack = slice_stack(np.ones((3, 4, 4), np.float32), [1], 1)
    assert engine.metadata.inputs.stack_inputs([stack, None])[0, -1].max() == 0
    assert engine.metadata.inputs.stack_inputs([stack, stack])[0, -1].min() == 1


def test_inputs_on_another_grid_equal_inputs_pre_resampled_to_the_reference_grid(engine, data: Path) -> None:
    t1, flair = _study(data)
    # the FLAIR on its own grid: another orientation, finer, shifted (another acquisition of the same study)
    flipped = sitk.DICOMOrient(flair, "RAS" if flair.GetDirection()[0] > 0 else "LPS")
    grid = sitk.Image([int(s * 1.6) for s in flipped.GetSize()], sitk.sitkFloat32)
    grid.SetSpacing([s / 1.6 for s in flipped.GetSpacing()])
    grid.SetDirection(flipped.GetDirection())
    grid.SetOrigin([o + 0.3 for o in flipped.GetOrigin()])
    own = sitk.Resample(flipped, grid, sitk.Transform(), sitk.sitkLinear, 0.0)
    assert own.GetDirection() != t1.GetDirection() and own.GetSize() != t1.GetSize()
    pre = sitk.Resample(own, t1, sitk.Transform(), sitk.sitkLinear, 0.0)  # done by hand, onto the T1's grid
    a, b = engine.run(t1, others={"flair": own}), engine.run(t1, others={"flair": pre})
    np.testing.assert_allclose(_array(a.synthetic), _array(b.synthetic), rtol=0, atol=1e-5)
    np.testing.assert_allclose(_array(a.heatmap), _array(b.heatmap), rtol=0, atol=1e-5)
    assert any("the flair input: resampled" in n for n in a.notes)
    assert not any("resampled" in n for n in b.notes)


def test_bad_other_inputs_are_refused_by_name(engine, data: Path, tmp_path: Path) -> None:
    from DualDSynthesisLib.inference.contract import SynthesisError

    t1, flair = _study(data)
    far = sitk.Image(flair)
    far.SetOrigin([1000.0, 1000.0, 1000.0])
    for others, words in (({"bogus": flair}, "'bogus' is not a known image contrast"),
                          ({"t1w": flair}, "given twice"),
                          ({"t2": flair}, "does not read t2"),
                          ({"flair": far}, "input flair does not overlap the reference input t1"),
                          ({"flair": sitk.Image(flair.GetSize(), sitk.sitkFloat32)}, "the flair input")):
        with pytest.raises(SynthesisError, match=words):
            engine.run(t1, others=others)


def test_a_missing_required_input_is_refused_by_name() -> None:
    from DualDSynthesisLib.inference.contract import SynthesisError
    from DualDSynthesisLib.inference.multi_input import checked_others

    inputs = InputDeclaration.parse("t1,flair,t1c", required="flair")
    with pytest.raises(SynthesisError, match="this model needs a flair input"):
        checked_others(inputs, {"t1c": object()})
    assert list(checked_others(inputs, {"T1ce": 1, "t2f": 2})) == ["flair", "t1c"]  # canonical, declared order


def test_a_one_input_bundle_given_two_inputs_is_refused_naming_the_extra(data: Path, tmp_path: Path) -> None:
    from bundles import make_bundle
    from DualDSynthesisLib.inference.contract import SynthesisError
    from DualDSynthesisLib.inference.engine import SynthesisEngine, synthesize_file

    one = SynthesisEngine(make_bundle(tmp_path / "one.safetensors"), "cpu")
    t1, flair = _study(data)
    with pytest.raises(SynthesisError, match="this model reads only t1; it does not use the flair input"):
        one.run(t1, others={"flair": flair})
    folder = data / "TCGA-DU-7001"
    with pytest.raises(SynthesisError, match="it does not use the flair input"):
        synthesize_file(next(folder.glob("*_t1_*")), tmp_path / "out.nii.gz", engine=one,
                        others={"flair": next(folder.glob("*flair*"))})
    assert not (tmp_path / "out.nii.gz").exists()


def test_synthesize_file_reads_the_other_inputs_and_never_overwrites_them(engine, data: Path,
                                                                          tmp_path: Path) -> None:
    from DualDSynthesisLib.inference.contract import SynthesisError
    from DualDSynthesisLib.inference.engine import synthesize_file

    folder = data / "TCGA-DU-7001"
    t1, flair = next(folder.glob("*_t1_*")), next(folder.glob("*flair*"))
    out = tmp_path / "t2.nii.gz"
    result = synthesize_file(t1, out, engine=engine, others={"flair": flair})
    direct = engine.run(sitk.ReadImage(str(t1)), others={"flair": sitk.ReadImage(str(flair))})
    np.testing.assert_array_equal(_array(sitk.ReadImage(str(out))), _array(direct.synthetic))
    assert result.warnings == direct.warnings
    before = flair.read_bytes()
    with pytest.raises(SynthesisError, match="the flair input itself"):
        synthesize_file(t1, flair, engine=engine, others={"flair": flair}, overwrite=True)
    with pytest.raises(SynthesisError, match="the flair input"):
        synthesize_file(t1, tmp_path / "x.nii.gz", engine=engine, others={"flair": tmp_path / "missing.nii.gz"})
    assert flair.read_bytes() == before and not (tmp_path / "x.nii.gz").exists()


def test_the_out_of_distribution_warning_covers_each_input(engine, data: Path) -> None:
    t1, flair = _study(data, "BraTS-GLI-00002-000")  # a training subject: inside the fingerprint
    inverted = sitk.Mask(sitk.InvertIntensity(flair, 1000.0), sitk.Cast(flair > 0, sitk.sitkUInt8))
    warned = engine.run(t1, others={"flair": inverted}).warnings
    assert any(w.startswith("the flair input: the input's normalised intensities") for w in warned), warned
    assert not any(w.startswith("the flair input") for w in engine.run(t1, others={"flair": flair}).warnings)


def test_device_preparation_and_a_brain_mask_treat_every_input_alike(engine, bundle: Path, data: Path) -> None:
    from DualDSynthesisLib.inference.engine import SynthesisEngine

    t1, flair = _study(data)
    device = SynthesisEngine(bundle, "cpu", device_preprocessing=True)  # the CUDA path, forced on the CPU
    a, b = engine.run(t1, others={"flair": flair}), device.run(t1, others={"flair": flair})
    np.testing.assert_allclose(_array(b.synthetic), _array(a.synthetic), rtol=1e-5, atol=1e-5)
    # stripping inside a brain mask strips the FLAIR too: outside the brain nothing of it reaches G
    brain = sitk.Cast(t1 > 0, sitk.sitkUInt8)
    brain[:, :, : t1.GetSize()[2] // 2] = 0
    # changes only outside the brain (within the head, so the inputs still match as one patient's)
    values = sitk.GetArrayFromImage(flair)
    values[: t1.GetSize()[2] // 2] *= 3.0
    noisy = sitk.GetImageFromArray(values)
    noisy.CopyInformation(flair)
    clean = engine.run(t1, others={"flair": flair}, mask=brain, skull="strip")
    dirty = engine.run(t1, others={"flair": noisy}, mask=brain, skull="strip")
    np.testing.assert_array_equal(_array(clean.synthetic), _array(dirty.synthetic))


def test_an_unusable_optional_input_is_left_out_of_its_subject_alone(data: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A subject whose optional FLAIR cannot be used trains without it, with a line saying so (input dropout taught
    the model to do without); required, the same file rejects the subject, naming it. An unreadable file is caught
    by discovery (headers), NaN voxels by preparation (the full read)."""
    import shutil

    from DualDTrainingLib.dataset import base_spec
    from DualDTrainingLib.preparation import prepare_each

    copy = shutil.copytree(data, tmp_path / "data")
    unreadable, nan = sorted(copy.rglob("*t2f*"))[0], sorted(copy.rglob("*_flair_*"))[0]
    unreadable.write_bytes(b"not a NIfTI file at all")
    image = sitk.Cast(sitk.ReadImage(str(nan)), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    array[0, 0, 0] = np.nan
    spoiled = sitk.GetImageFromArray(array)
    spoiled.CopyInformation(image)
    sitk.WriteImage(spoiled, str(nan))
    found = discover(copy, "t1,flair", "t2")
    others = {p.subject: dict(p.others) for p in found.pairs}
    owner = next(name for name in others if name in unreadable.name)
    assert len(found.pairs) == 3 and "flair" not in others[owner]
    assert any(f"{owner}: optional input flair not used" in n and unreadable.name in n for n in found.notes)
    rejected = {r.subject: r.reason for r in discover(copy, "t1,flair", "t2", required="flair").rejected}
    assert unreadable.name in rejected[owner]  # (the fixture's first subject has no FLAIR at all)
    said: list[str] = []
    kept, dropped = prepare_each(found.pairs, base_spec("mri", (1.0, 1.0), 16), 1, ("flair",), said.append)
    spoilt = next(s for s in kept if s.name in nan.name)
    assert len(kept) == 3 and not dropped and "flair" not in spoilt.others
    assert said == [f"{spoilt.name}: optional input flair not used ({spoilt.dropped_inputs['flair']})"]
    assert nan.name in said[0] and "NaN" in said[0]
    kept, dropped = prepare_each(found.pairs, base_spec("mri", (1.0, 1.0), 16), 1)  # flair required
    assert len(kept) == 2 and dropped[0][0] == spoilt.name and nan.name in dropped[0][1]
    assert cli.main(_train(copy, tmp_path / "run")) == 0  # a training run takes both the same way
    log = "".join(capsys.readouterr())
    assert f"{owner}: optional input flair not used" in log and f"{spoilt.name}: optional input flair not used" in log
