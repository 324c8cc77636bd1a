"""Fine-tuning at a site: ``duald-train --init-from BUNDLE`` (and ``--recalibrate-only``) on tiny generated data.

The parent is a tiny ``local`` model (G with the expected-error head, and D2) trained for two steps; the
site is one generated subject the parent never saw.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from _training_data import TINY_ARCH_FLAGS, write_subjects
from DualDSynthesisLib.core.resources import MODELS_DIR
from DualDSynthesisLib.imaging.bundle import load_bundle, read_metadata, save_bundle
from DualDSynthesisLib.imaging.calibration import ErrorCalibration
from DualDSynthesisLib.imaging.fingerprint import TrainingFingerprint
from DualDSynthesisLib.model.losses import expected_error
from DualDSynthesisLib.model.slicestack import slice_stack
from DualDTrainingLib import cli
from DualDTrainingLib.config import FINETUNE_DEFAULTS, RunConfig
from DualDTrainingLib.dataset import prepare_subject
from DualDTrainingLib.discovery import discover
from DualDTrainingLib.distributed import init_from_env
from DualDTrainingLib.errors import TrainingError
from DualDTrainingLib.loop import Run


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_subjects(tmp_path_factory.mktemp("site") / "Testville", n=1, seed=5)


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("parent")
    data = write_subjects(root / "data", n=2)
    out = root / "run"
    argv = ["--data", str(data), "--source", "t1", "--target", "t2", "--output", str(out), "--iterations", "2",
            "--device", "cpu", "--variant", "local", "--batch-size", "2", *TINY_ARCH_FLAGS]
    assert cli.main(argv) == 0
    return out / "model-final.safetensors"


def _argv(site: Path, parent: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(site), "--source", "t1", "--target", "t2", "--output", str(out), "--device", "cpu",
            "--init-from", str(parent), "--batch-size", "2", *extra]


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str], out: Path, *words: str) -> None:
    """Exit 2, one line naming the problem, the output folder not created."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("duald-train: error: "), err
    for word in words:
        assert word in err[0], err[0]
    assert not out.exists()


# ----------------------------------------------------------------------------- options


def test_recipe_and_fine_tuning_defaults_come_from_the_parent(site: Path, parent: Path, tmp_path: Path) -> None:
    meta = read_metadata(parent)
    cfg = cli.resolved_config(_argv(site, parent, tmp_path / "o"))
    assert (cfg.base_width, cfg.depth, cfg.d2_base_width) == (4, 2, 4)  # the parent's, not RunConfig's 8/4/16
    assert cfg.context_slices == meta.preprocessing.context_slices and cfg.variant == meta.variant
    for name, value in FINETUNE_DEFAULTS.as_dict().items():
        if name != "batch_size":  # given on the command line above
            assert getattr(cfg, name) == value, name
    assert cfg.batch_size == 2
    # an option the user gives wins over the fine-tuning default; a recipe flag equal to the parent's is accepted
    cfg = cli.resolved_config(_argv(site, parent, tmp_path / "o", "--iterations", "7", "--base-width", "4"))
    assert cfg.iterations == 7
    # without --init-from nothing changes
    plain = _argv(site, parent, tmp_path / "o")[:-4]
    assert cli.resolved_config(plain) == cli._config(cli.build_parser().parse_args(plain), False)


def test_slicer_panel_values_at_their_defaults_count_as_not_given(site: Path, parent: Path, tmp_path: Path) -> None:
    """The panel passes every field: a value equal to RunConfig's default does not contradict the parent."""
    defaults = RunConfig.defaults()
    argv = [*_argv(site, parent, tmp_path / "o"), "--base_width", str(defaults["base_width"]), "--iterations",
            str(defaults["iterations"])]
    cfg = cli.resolved_config(argv, slicer=True)
    assert cfg.base_width == 4 and cfg.iterations == FINETUNE_DEFAULTS.iterations
    with pytest.raises(TrainingError, match="--base-width 8 contradicts"):
        cli.resolved_config(argv)  # on the command line the same flag was given


@pytest.mark.parametrize(("flag", "value", "words"), [
    ("--base-width", "8", ("--base-width 8", "base width is 4")),
    ("--context-slices", "0", ("--context-slices 0", "is 1")),
    ("--source-norm", "p99.5", ("--source-norm p99.5", "is rank")),
    ("--target-kind", "ct", ("--target-kind ct", "is mri")),
    ("--spacing", "2", ("--spacing 2", "is 1,1")),
    ("--no-error-head", None, ("--no-error-head given", "an expected-error head")),
])
def test_a_contradicting_recipe_flag_is_refused(capsys: pytest.CaptureFixture[str], site: Path, parent: Path,
                                                tmp_path: Path, flag: str, value: str | None,
                                                words: tuple[str, ...]) -> None:
    extra = [flag] if value is None else [flag, value]
    _refused(capsys, _argv(site, parent, tmp_path / "o", *extra), tmp_path / "o", "contradicts", *words)


# ----------------------------------------------------------------------------- the start


def test_the_model_built_for_fine_tuning_gives_the_parents_first_forward_pass(site: Path, parent: Path,
                                                                              tmp_path: Path) -> None:
    cfg = cli.resolved_config(_argv(site, parent, tmp_path / "o"))
    ctx = init_from_env("cpu")
    run = Run(cfg, ctx)
    try:
        run.setup()
        run.build()
        ref = load_bundle(parent)
        assert run.spec.source == ref.metadata.preprocessing.source
        assert run.spec.context_slices == ref.metadata.preprocessing.context_slices
        subject = run.val_subjects[0]  # the held-out slab, prepared by the run's own spec
        x = torch.from_numpy(slice_stack(subject.source, np.arange(len(subject.source)), run.spec.context_slices))
        g = run.trainer.generator.eval()
        with torch.no_grad():
            assert torch.equal(g(x), ref.generator(x))
            fake = ref.generator(x)[:, :1]
            assert torch.equal(run.trainer.local.eval()(fake), ref.local_discriminator(fake))
    finally:
        run.close()
        ctx.close()


def test_fine_tune_records_parent_site_fingerprint_and_recalibration(capsys: pytest.CaptureFixture[str],
                                                                     site: Path, parent: Path,
                                                                     tmp_path: Path) -> None:
    before = _sha(parent)
    out = tmp_path / "ft"
    assert cli.main(_argv(site, parent, out, "--iterations", "2", "--site", "Testville General")) == 0
    log = capsys.readouterr().err
    assert "held-out slices of the one subject" in log
    assert _sha(parent) == before  # the parent's bytes are untouched
    meta, parent_meta = read_metadata(out / "model-final.safetensors"), read_metadata(parent)
    assert meta.provenance["parent"] == {"name": parent_meta.name, "file": parent.name, "sha256": before}
    assert meta.provenance["site"] == "Testville General"
    assert meta.provenance["training_subjects"] == ["BraTS-GLI-00000-000"]
    fp, parent_fp = (TrainingFingerprint.from_dict(m.fingerprint) for m in (meta, parent_meta))
    assert fp.n_subjects == parent_fp.n_subjects + 1
    for lo_hi, parent_lo_hi in zip(fp.spacing, parent_fp.spacing, strict=True):
        assert lo_hi[0] <= parent_lo_hi[0] and lo_hi[1] >= parent_lo_hi[1]
    cal = meta.error_calibration
    assert cal.calibrated and "site recalibration on 1 scan(s) of Testville General" in cal.evidence
    ratio = json.loads(json.dumps(meta.metrics))["per_subject"]
    (name, metrics), = ratio.items()
    assert "slices" in name and cal.scale == pytest.approx(1 / metrics["expected_error_ratio"])
    assert "site recalibration" in meta.summary()


def test_a_frozen_encoder_stays_bit_identical(site: Path, parent: Path, tmp_path: Path) -> None:
    out = tmp_path / "frozen"
    assert cli.main(_argv(site, parent, out, "--iterations", "3", "--freeze-encoder", "--lr-g", "0.01")) == 0
    ref, tuned = load_bundle(parent).generator, load_bundle(out / "model-final.safetensors").generator
    for (key, a), (_, b) in zip(ref.encoders.state_dict().items(), tuned.encoders.state_dict().items(), strict=True):
        assert torch.equal(a, b), key  # weights and batch-norm statistics
    changed = [k for k, v in tuned.decoders.state_dict().items() if not torch.equal(v, ref.decoders.state_dict()[k])]
    assert changed  # the decoder did learn


# ----------------------------------------------------------------------------- recalibration only


def test_recalibration_equals_the_hand_computed_factor(site: Path, parent: Path, tmp_path: Path) -> None:
    before = _sha(parent)
    out = tmp_path / "recal"
    assert cli.main(_argv(site, parent, out, "--recalibrate-only", "--site", "Testville")) == 0
    assert _sha(parent) == before
    meta = read_metadata(out / "model-recalibrated.safetensors")
    # by hand: the parent over every slice of the site's one scan; the prediction clipped as the product
    # writes it; mean expected error / mean |error| over the foreground inside the unpadded region
    ref = load_bundle(parent)
    spec = ref.metadata.preprocessing
    s = prepare_subject(discover(site, "t1", "t2").pairs[0], spec)
    x = torch.from_numpy(slice_stack(s.source, np.arange(len(s.source)), spec.context_slices))
    with torch.no_grad():
        y = ref.generator(x)
    pred = np.clip(y[:, 0].numpy(), *spec.target.clip)
    err = expected_error(y[:, 1:])[:, 0].numpy()
    ys, xs = s.crop
    fg = s.foreground[:, ys, xs]
    ratio = err[:, ys, xs][fg].mean(dtype=np.float64) / np.abs(pred - s.target)[:, ys, xs][fg].mean(dtype=np.float64)
    assert meta.error_calibration.scale == pytest.approx(1 / ratio, rel=1e-5)
    assert "site recalibration on 1 scan(s) of Testville" in meta.error_calibration.evidence
    assert meta.provenance["parent"]["sha256"] == before
    tuned, parent_bundle = load_bundle(out / "model-recalibrated.safetensors"), ref
    for k, v in parent_bundle.generator.state_dict().items():  # the weights are the parent's
        assert torch.equal(v, tuned.generator.state_dict()[k])


# ----------------------------------------------------------------------------- bad input


def _edited(parent: Path, path: Path, **changes: object) -> Path:
    b = load_bundle(parent)
    save_bundle(path, b.generator, b.local_discriminator, dataclasses.replace(b.metadata, **changes))
    return path


def _raw_metadata_edit(parent: Path, path: Path, section: str, key: str, value: object) -> Path:
    """A copy whose metadata JSON says ``section[key] = value`` (no validation on the way)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(parent))
    with parent.open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        meta = json.loads(json.loads(fh.read(n))["__metadata__"]["duald"])
    meta[section][key] = value
    save_file(tensors, str(path), metadata={"duald": json.dumps(meta)})
    return path


def test_bundles_of_another_task_are_refused(capsys: pytest.CaptureFixture[str], site: Path, parent: Path,
                                            tmp_path: Path) -> None:
    ct = _edited(parent, tmp_path / "ct.safetensors", target_modality="ct")
    _refused(capsys, _argv(site, ct, tmp_path / "o"), tmp_path / "o", "maps t1 → ct", "target is t2")
    flair = _edited(parent, tmp_path / "flair.safetensors", source_modality="flair")
    _refused(capsys, _argv(site, flair, tmp_path / "o"), tmp_path / "o", "maps flair → t2", "source is t1")


def test_a_checkpoint_a_pickle_and_broken_weights_are_refused(capsys: pytest.CaptureFixture[str], site: Path,
                                                               parent: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    _refused(capsys, _argv(site, parent.parent / "checkpoint-last.pt", out), out, "training checkpoint")
    pickle = tmp_path / "model.safetensors"
    shutil.copy(parent.parent / "checkpoint-last.pt", pickle)
    _refused(capsys, _argv(site, pickle, out), out, "pickle")
    b = load_bundle(parent)
    with torch.no_grad():
        b.generator.head.weight.fill_(float("nan"))
    nan = save_bundle(tmp_path / "nan.safetensors", b.generator, b.local_discriminator, b.metadata)
    _refused(capsys, _argv(site, nan, out), out, "NaN")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(parent.read_bytes()[:-200])
    _refused(capsys, _argv(site, truncated, out), out, "could not be read")


def test_an_architecture_the_code_cannot_build_is_refused(capsys: pytest.CaptureFixture[str], site: Path,
                                                          parent: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    deeper = _raw_metadata_edit(parent, tmp_path / "deeper.safetensors", "architecture", "g_depth", 3)
    _refused(capsys, _argv(site, deeper, out), out, "does not match its architecture")
    unknown = _raw_metadata_edit(parent, tmp_path / "norm.safetensors", "architecture", "g_norm", "group9")
    _refused(capsys, _argv(site, unknown, out), out, "architecture")


def test_the_parent_and_the_shipped_models_are_never_written(capsys: pytest.CaptureFixture[str], site: Path,
                                                              parent: Path, tmp_path: Path) -> None:
    before = _sha(parent)
    assert cli.main(_argv(site, parent, parent.parent, "--overwrite")) == 2
    assert "would overwrite the parent" in capsys.readouterr().err
    assert _sha(parent) == before
    shipped = MODELS_DIR / "site-run"
    _refused(capsys, _argv(site, parent, shipped), shipped, "shipped models")


def test_fine_tuning_flags_need_init_from(capsys: pytest.CaptureFixture[str], site: Path, parent: Path,
                                          tmp_path: Path) -> None:
    out = tmp_path / "o"
    plain = [*_argv(site, parent, out)[:-4], *TINY_ARCH_FLAGS]
    _refused(capsys, [*plain, "--freeze-encoder"], out, "--freeze-encoder needs --init-from")
    _refused(capsys, [*plain, "--recalibrate-only"], out, "--recalibrate-only needs --init-from")


# ----------------------------------------------------------------------------- several site subjects, bad scans


def test_two_site_subjects_can_calibrate_on_the_validation_subject(capsys: pytest.CaptureFixture[str],
                                                                    parent: Path, tmp_path: Path) -> None:
    site = write_subjects(tmp_path / "Twoville", n=2, seed=9)
    out = tmp_path / "ft"
    assert cli.main(_argv(site, parent, out, "--iterations", "1", "--site-calibration", "validation")) == 0
    log = capsys.readouterr().err
    assert "held-out slices" not in log and "extra fine-tunes" not in log
    meta = read_metadata(out / "model-final.safetensors")
    assert meta.provenance["validation_subjects"] == ["TCGA-DU-7001"]  # the last subject, as without --init-from
    evidence = meta.error_calibration.evidence
    assert "site recalibration on 1 scan(s) of Twoville" in evidence and "not leave-one-subject-out" in evidence
    assert set(meta.error_calibration.held_out_ratios) == {"TCGA-DU-7001"}
    assert meta.provenance["site_calibration"]["ratios"] == meta.error_calibration.held_out_ratios
    assert not (out / "site-calibration").exists()


def test_a_site_scan_failing_the_training_checks_is_refused_with_its_reason(
        capsys: pytest.CaptureFixture[str], parent: Path, tmp_path: Path) -> None:
    import SimpleITK as sitk
    from DualDTrainingLib.discovery import discover as find

    site = write_subjects(tmp_path / "Blankville", n=1, seed=3)
    pair = find(site, "t1", "t2").pairs[0]
    image = sitk.ReadImage(str(pair.target))
    blank = sitk.Image(image.GetSize(), image.GetPixelID())
    blank.CopyInformation(image)
    sitk.WriteImage(blank, str(pair.target))
    out = tmp_path / "o"
    assert cli.main(_argv(site, parent, out)) == 2
    err = capsys.readouterr().err
    assert f"target file {pair.target.name} is constant" in err
    assert "no training subject could be prepared" in err.strip().splitlines()[-1]
    assert not out.exists()


# ----------------------------------------------------------------------------- site recalibration: which scans


def _held_out_ratio(bundle: Path, pair: object) -> float:
    """By hand: ``bundle``'s G over every slice of ``pair`` (prepared with the bundle's own spec), the prediction
    clipped as the product writes it; mean expected error / mean |error| in the foreground of the unpadded region."""
    ref = load_bundle(bundle)
    spec = ref.metadata.preprocessing
    s = prepare_subject(pair, spec)
    x = torch.from_numpy(slice_stack(s.source, np.arange(len(s.source)), spec.context_slices))
    with torch.no_grad():
        y = ref.generator.eval()(x)
    pred = np.clip(y[:, 0].numpy(), *spec.target.clip)
    err = expected_error(y[:, 1:])[:, 0].numpy()
    ys, xs = s.crop
    fg = s.foreground[:, ys, xs]
    return float(err[:, ys, xs][fg].mean(dtype=np.float64) / np.abs(pred - s.target)[:, ys, xs][fg].mean(
        dtype=np.float64))


def test_two_to_five_site_subjects_recalibrate_leave_one_subject_out(capsys: pytest.CaptureFixture[str],
                                                                    parent: Path, tmp_path: Path) -> None:
    site = write_subjects(tmp_path / "Threeville", n=3, seed=11)
    pairs = {p.subject: p for p in discover(site, "t1", "t2").pairs}
    out = tmp_path / "ft"
    before = _sha(parent)
    assert cli.main(_argv(site, parent, out, "--iterations", "2")) == 0  # --site-calibration auto
    log = capsys.readouterr().err
    assert "3 extra fine-tunes of 2 steps" in log  # the plan, printed before the folds
    assert log.index("extra fine-tunes") < log.index("leave-one-subject-out 1/3")
    meta = read_metadata(out / "model-final.safetensors")
    assert sorted(meta.provenance["training_subjects"]) == sorted(pairs)  # the final model saw every subject
    assert meta.provenance["validation_subjects"] == []
    record = meta.provenance["site_calibration"]
    assert record["method"].startswith("leave-one-subject-out over 3 site subjects")
    assert record["method"] in meta.error_calibration.evidence and record["method"] in meta.summary()
    # by hand, from each fold's model: the subject it held out, predicted by a fine-tune on the other two
    ratios = {}
    for name, pair in pairs.items():
        fold = out / record["held_out_models"][name]
        fold_meta = read_metadata(fold)
        assert name not in fold_meta.provenance["training_subjects"]
        assert len(fold_meta.provenance["training_subjects"]) == 2
        assert fold_meta.provenance["parent"]["sha256"] == before  # each fold starts from the same parent
        ratios[name] = _held_out_ratio(fold, pair)
    fit = ErrorCalibration.from_ratios(ratios, "by hand")  # the one calibration fit, on the pooled hold-outs
    assert meta.error_calibration.scale == pytest.approx(fit.scale, rel=1e-5)
    assert meta.error_calibration.held_out_ratios == pytest.approx(ratios, rel=1e-5)
    assert record["ratios"] == pytest.approx(ratios, rel=1e-5)
    assert not any((fold.parent / "checkpoint-last.pt").exists()
                   for fold in (out / m for m in record["held_out_models"].values()))
    assert _sha(parent) == before
    # --resume reuses the folds that finished with the same --iterations (nothing is trained again here)
    folds = {m: _sha(out / m) for m in record["held_out_models"].values()}
    assert cli.main(_argv(site, parent, out, "--iterations", "2", "--resume")) == 0
    assert "fine-tuning without" not in capsys.readouterr().err
    assert {m: _sha(out / m) for m in folds} == folds


def test_one_site_subject_recalibrates_on_its_slab(capsys: pytest.CaptureFixture[str], site: Path, parent: Path,
                                                   tmp_path: Path) -> None:
    out = tmp_path / "ft"
    assert cli.main(_argv(site, parent, out, "--iterations", "1")) == 0
    assert "extra fine-tunes" not in capsys.readouterr().err
    meta = read_metadata(out / "model-final.safetensors")  # auto: the held-out slab
    assert meta.provenance["site_calibration"]["method"].startswith("held-out slices of the one subject")
    assert not (out / "site-calibration").exists()
    _refused(capsys, _argv(site, parent, tmp_path / "o", "--site-calibration", "loso"), tmp_path / "o",
             "--site-calibration loso needs two or more site subjects, found 1")


def test_slab_with_two_subjects_holds_out_a_slab_of_each(capsys: pytest.CaptureFixture[str], parent: Path,
                                                         tmp_path: Path) -> None:
    site = write_subjects(tmp_path / "Slabville", n=2, seed=4)
    out = tmp_path / "ft"
    assert cli.main(_argv(site, parent, out, "--iterations", "1", "--site-calibration", "slab")) == 0
    meta = read_metadata(out / "model-final.safetensors")
    held = meta.error_calibration.held_out_ratios
    assert len(held) == 2 and all("slices" in name for name in held)
    assert meta.provenance["site_calibration"]["method"].startswith("held-out slices of each subject")
    assert len(meta.provenance["training_subjects"]) == 2


def test_recalibrate_only_uses_every_site_subject(capsys: pytest.CaptureFixture[str], parent: Path,
                                                  tmp_path: Path) -> None:
    site = write_subjects(tmp_path / "Recalville", n=2, seed=7)
    pairs = discover(site, "t1", "t2").pairs
    out = tmp_path / "recal"
    assert cli.main(_argv(site, parent, out, "--recalibrate-only")) == 0
    cal = read_metadata(out / "model-recalibrated.safetensors").error_calibration
    ratios = {p.subject: _held_out_ratio(parent, p) for p in pairs}  # the parent never saw them: no hold-out
    assert cal.held_out_ratios == pytest.approx(ratios, rel=1e-5)
    assert cal.scale == pytest.approx(ErrorCalibration.from_ratios(ratios, "by hand").scale, rel=1e-5)
    assert "every site subject directly" in cal.evidence and "none needs holding out" in cal.evidence
    assert not (out / "site-calibration").exists()
    capsys.readouterr()
    _refused(capsys, _argv(site, parent, tmp_path / "o", "--recalibrate-only", "--site-calibration", "loso"),
             tmp_path / "o", "contradicts --recalibrate-only")


@pytest.mark.parametrize(("extra", "words"), [
    (("--site-calibration", "loso", "--val-subjects", "TCGA-DU-7001"), ("--val-subjects", "loso")),
    (("--site-calibration", "validation"), ("needs two or more site subjects, found 1",)),
])
def test_a_site_calibration_the_data_cannot_support_is_refused(capsys: pytest.CaptureFixture[str], site: Path,
                                                               parent: Path, tmp_path: Path, extra: tuple[str, ...],
                                                               words: tuple[str, ...]) -> None:
    data = write_subjects(tmp_path / "Twoville", n=2) if "--val-subjects" in extra else site
    _refused(capsys, _argv(data, parent, tmp_path / "o", *extra), tmp_path / "o", *words)


def test_site_calibration_needs_init_from(capsys: pytest.CaptureFixture[str], site: Path, parent: Path,
                                         tmp_path: Path) -> None:
    plain = [*_argv(site, parent, tmp_path / "o")[:-4], *TINY_ARCH_FLAGS, "--site-calibration", "slab"]
    _refused(capsys, plain, tmp_path / "o", "--site-calibration needs --init-from")


# ----------------------------------------------------------------------------- contrasts from the parent


def test_source_and_target_default_to_the_parents(capsys: pytest.CaptureFixture[str], site: Path, parent: Path,
                                                  tmp_path: Path) -> None:
    argv = ["--data", str(site), "--output", str(tmp_path / "o"), "--init-from", str(parent)]
    cfg = cli.resolved_config(argv)
    meta = read_metadata(parent)
    assert (cfg.source, cfg.target) == (meta.source_modality, meta.target_modality)
    _refused(capsys, [*argv, "--target", "flair"], tmp_path / "o", "maps t1 → t2", "target is flair")
    # without --init-from they are still required (a usage error)
    with pytest.raises(SystemExit) as exc:
        cli.main(["--data", str(site), "--output", str(tmp_path / "o"), "--target", "t2"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "the following arguments are required: --source (or --init-from" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()
