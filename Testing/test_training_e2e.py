"""End-to-end duald-train runs on tiny generated volumes (in-process, CPU, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from _training_data import TINY_ARCH_FLAGS, write_subjects
from DualDSynthesisLib.imaging.bundle import load_bundle
from DualDTrainingLib import checkpoint as ckpt
from DualDTrainingLib import cli, loop
from DualDTrainingLib.step import DualDTrainer, NonFiniteLossError


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_subjects(tmp_path_factory.mktemp("subjects") / "data")


def _args(data: Path, out: Path, *extra: str, variant: str = "dual_attention", iterations: int = 4) -> list[str]:
    return ["--data", str(data), "--source", "t1", "--target", "t2", "--variant", variant, "--iterations",
            str(iterations), "--output", str(out), "--batch-size", "2", "--val-every", "2", "--log-every", "1",
            "--checkpoint-every", "2", "--workers", "1", "--device", "cpu", *TINY_ARCH_FLAGS, *extra]


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def test_end_to_end_produces_loadable_bundles(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert cli.main(_args(data, out)) == 0
    final = load_bundle(out / "model-final.safetensors")
    best = load_bundle(out / "model-best.safetensors")
    meta = final.metadata
    assert meta.variant == "dual_attention" and meta.has_local_discriminator and final.local_discriminator is not None
    assert meta.source_modality == "t1" and meta.target_modality == "t2"
    assert meta.provenance["iterations"] == 4 and meta.provenance["validation_subjects"] == ["TCGA-DU-7001"]
    assert {"psnr_foreground", "mae_volume", "ssim_volume"} <= set(meta.metrics["metrics"])
    assert meta.metrics["data_range"] == 1.0
    assert best.metadata.metrics["step"] in (2, 4)
    # the expected-error map is calibrated on the validation subject, with the ratio validation measured
    ratio = meta.metrics["per_subject"]["TCGA-DU-7001"]["expected_error_ratio"]
    assert meta.error_calibration.held_out_ratios == {"TCGA-DU-7001": pytest.approx(ratio)}
    assert meta.error_calibration.scale == pytest.approx(1.0 / ratio)
    spec = meta.preprocessing
    assert spec.target.kind == "mri_percentile" and spec.target.reference_scale > 0
    assert spec.spacing == (1.0, 1.0) and spec.size_multiple % 4 == 0
    # the generator runs on a prepared slice size
    with torch.no_grad():
        # two outputs: the synthetic slice and the expected-error map (on by default)
        channels = meta.architecture.in_channels  # 3 with the default 2.5-D context (one slice each side)
        assert channels == 2 * spec.context_slices + 1 == 3
        assert final.generator(torch.zeros(1, channels, 48, 48)).shape == (1, 2, 48, 48)

    records = _records(out)
    kinds = [r["kind"] for r in records]
    assert kinds.count("train") == 4 and kinds.count("validation") == 2
    assert all(np.isfinite(r["l1"]) for r in records if r["kind"] == "train")
    png = sorted((out / "samples").glob("*.png"))
    assert [p.name for p in png] == ["step-0000002.png", "step-0000004.png"]
    grid = sitk.ReadImage(str(png[-1]))
    assert grid.GetNumberOfComponentsPerPixel() == 3
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    state = ckpt.load_checkpoint(out / ckpt.LAST)  # weights_only=True inside
    assert state["step"] == 4 and set(state["optimizers"]) == {"generator", "critic", "local"}


def test_unet_bundle_has_no_local_discriminator(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "unet"
    assert cli.main(_args(data, out, variant="unet", iterations=2)) == 0
    bundle = load_bundle(out / "model-final.safetensors")
    assert not bundle.metadata.has_local_discriminator and bundle.local_discriminator is None


def test_resume_continues_exactly(data: Path, tmp_path: Path) -> None:
    """4 steps, then --resume to 8, equals 8 steps in one go (RNG states and optimisers restored)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert cli.main(_args(data, straight, variant="local", iterations=8)) == 0
    assert cli.main(_args(data, split, variant="local", iterations=4)) == 0
    assert cli.main(_args(data, split, "--resume", variant="local", iterations=8)) == 0
    a = load_bundle(straight / "model-final.safetensors").generator.state_dict()
    b = load_bundle(split / "model-final.safetensors").generator.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    steps = [r["step"] for r in _records(split) if r["kind"] == "train"]
    assert steps == list(range(1, 9))
    assert [r["event"] for r in _records(split) if r["kind"] == "event"] == ["start", "finished", "resume", "finished"]


def test_non_finite_loss_stops_without_touching_the_checkpoint(data: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nan"
    real_step = DualDTrainer.step

    def step(self: DualDTrainer, source: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        if self.step_count == 5:
            raise NonFiniteLossError("G_adv_local", float("nan"), self.step_count + 1)
        return real_step(self, source, target)

    monkeypatch.setattr(DualDTrainer, "step", step)
    code = cli.main(_args(data, out, variant="local", iterations=10))
    assert code == 3
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "G_adv_local" in last and "step 6" in last and "Traceback" not in err
    assert ckpt.load_checkpoint(out / ckpt.LAST)["step"] == 4  # the last good one (checkpoint every 2)
    assert not (out / "model-final.safetensors").exists()


def test_deferred_non_finite_check_runs_before_the_checkpoint(data: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A real NaN at step 6 with losses read only every 100 steps: the deferred device-side check is read
    before the checkpoint of step 6, so the run stops naming step 6 and D2, and step 4's state stays."""
    out = tmp_path / "deferred"
    real_step = DualDTrainer.step

    def step(self: DualDTrainer, source: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        assert self.defer_checks  # single process: no host sync per step
        if self.step_count == 5:
            target = target.clone()
            target[0, 0, 0, 0] = float("nan")
        return real_step(self, source, target)  # no exception here: the check waits on the device

    monkeypatch.setattr(DualDTrainer, "step", step)
    args = _args(data, out, variant="local", iterations=10)
    args[args.index("--log-every") + 1] = "100"
    assert cli.main(args) == 3
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "loss term D2 became non-finite (nan) at step 6" in last
    assert ckpt.load_checkpoint(out / ckpt.LAST)["step"] == 4
    assert not (out / "model-final.safetensors").exists()


def test_device_sampler_forced_on_the_cpu_resumes_exactly(data: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA data path (DeviceSliceSampler, augmentation on its batches) run on the CPU: its generator
    state travels in the checkpoint, so 4 steps + --resume to 8 equals 8 steps in one go."""
    monkeypatch.setattr(loop, "use_device_sampler", lambda device: True)
    straight, split = tmp_path / "straight", tmp_path / "split"
    extra = ("--augment", "0.5")
    assert cli.main(_args(data, straight, *extra, variant="unet", iterations=8)) == 0
    assert cli.main(_args(data, split, *extra, variant="unet", iterations=4)) == 0
    state = ckpt.load_checkpoint(split / ckpt.LAST)
    assert state["rng"][0]["device_sampler"].dtype == torch.uint8
    assert cli.main(_args(data, split, "--resume", *extra, variant="unet", iterations=8)) == 0
    a = load_bundle(straight / "model-final.safetensors").generator.state_dict()
    b = load_bundle(split / "model-final.safetensors").generator.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_ct_target_uses_hu_mapping(tmp_path: Path) -> None:
    """--target-kind ct: HU mapping recorded, no reference scale."""
    data = write_subjects(tmp_path / "data", n=2)
    for path in data.rglob("*t2*.nii.gz"):  # pretend the target is CT: shift into HU
        img = sitk.ReadImage(str(path), sitk.sitkFloat32)
        sitk.WriteImage(sitk.Cast(img - 1000.0, sitk.sitkInt16), str(path))
    out = tmp_path / "ct"
    assert cli.main(_args(data, out, "--target-kind", "ct", variant="unet", iterations=2)) == 0
    spec = load_bundle(out / "model-final.safetensors").metadata.preprocessing
    assert spec.target.kind == "ct_hu" and spec.target.reference_scale is None


@pytest.mark.parametrize("norm", ["zscore", "rank"])
def test_source_norm_end_to_end(norm: str, data: Path, tmp_path: Path) -> None:
    """--source-norm zscore/rank: recorded in the bundle, applied again at synthesis, no input fingerprint
    warning."""
    from DualDSynthesisLib.inference.engine import SynthesisEngine
    from DualDSynthesisLib.model.intensity import SOURCE_NORMS

    out = tmp_path / norm
    assert cli.main(_args(data, out, "--source-norm", norm, variant="unet", iterations=2)) == 0
    path = out / "model-final.safetensors"
    meta = load_bundle(path).metadata
    assert meta.preprocessing.source == SOURCE_NORMS[norm] and meta.fingerprint
    assert meta.preprocessing.target.kind == "mri_percentile" and meta.preprocessing.target.reference_scale > 0
    t1 = next(data.rglob("*-t1n.nii.gz"))
    result = SynthesisEngine(path, "cpu").run(sitk.ReadImage(str(t1)))
    syn = sitk.GetArrayFromImage(result.synthetic)
    assert np.isfinite(syn).all() and syn.shape == sitk.GetArrayFromImage(sitk.ReadImage(str(t1))).shape
    # a training subject: no out-of-distribution warning (its fingerprint is computed as at training); a 2-step
    # model's synthetic is still one value everywhere, which the engine says (test_faults_engine.py)
    assert [w for w in result.warnings if "produced no image" not in w] == []
