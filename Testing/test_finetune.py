"""Fine-tuning at a site: ``duald-train --init-from BUNDLE`` (and ``--recalibrate-only``) on tiny generated data.

The parent is a tiny ``local`` model (G with the expected-error head, and D2) trained for two steps; the
site is one generated subject the parent never saw (fixtures ``parent`` and ``site`` in conftest.py). Which site
scans recalibrate the expected-error map: test_site_calibration.py.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from _training_data import TINY_ARCH_FLAGS
from DualDSynthesisLib.core.resources import MODELS_DIR
from DualDSynthesisLib.imaging.bundle import load_bundle, read_metadata, save_bundle
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
from finetune_helpers import _argv, _refused, _sha


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
