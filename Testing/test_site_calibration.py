"""Site recalibration when fine-tuning (``duald-train --init-from ... --site-calibration``): which scans re-fit the
expected-error factor (slab, leave-one-subject-out, validation, every subject for ``--recalibrate-only``), and site
scans the data cannot support. Fixtures ``parent`` and ``site`` in conftest.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _training_data import TINY_ARCH_FLAGS, write_subjects
from DualDSynthesisLib.imaging.bundle import load_bundle, read_metadata
from DualDSynthesisLib.imaging.calibration import ErrorCalibration
from DualDSynthesisLib.model.losses import expected_error
from DualDSynthesisLib.model.slicestack import slice_stack
from DualDTrainingLib import cli
from DualDTrainingLib.dataset import prepare_subject
from DualDTrainingLib.discovery import discover
from finetune_helpers import _argv, _refused, _sha


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
