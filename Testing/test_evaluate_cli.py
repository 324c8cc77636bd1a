"""duald-evaluate on generated subjects with a tiny random bundle."""

import json
from pathlib import Path

import pytest
from _training_data import write_subjects
from bundles import make_bundle
from DualDTrainingLib.evaluate_cli import main


def test_evaluate_prints_the_table_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = write_subjects(tmp_path / "data", n=2, shape=(8, 36, 40))
    model = make_bundle(tmp_path / "m.safetensors")
    out = tmp_path / "eval.json"
    assert main(["--model", str(model), "--data", str(data), "--source", "t1", "--target", "t2", "--json", str(out),
                 "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "foreground" in text and "AUROC worst-10% error" in text
    report = json.loads(out.read_text(encoding="utf-8"))
    assert len(report["subjects"]) == 2
    labelled = [s for s in report["subjects"] if "tumour" in s["regions"]]
    assert len(labelled) == 1 and "label 2" in labelled[0]["regions"]
    fg = report["summary"]["foreground"]["psnr"]
    assert fg["n"] == 2 and isinstance(fg["mean"], float)
    assert 0.0 <= report["summary"]["heatmap"]["auroc"]["mean"] <= 1.0
    # refuses to overwrite its own report without --overwrite
    assert main(["--model", str(model), "--data", str(data), "--source", "t1", "--target", "t2",
                 "--json", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_evaluate_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = make_bundle(tmp_path / "m.safetensors")
    assert main(["--model", str(model), "--data", str(tmp_path / "none"), "--source", "t1", "--target", "t2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("duald-evaluate: error:") and "\n" not in err
    data = write_subjects(tmp_path / "data", n=1)
    (tmp_path / "bad.safetensors").write_bytes(b"not a model at all")
    assert main(["--model", str(tmp_path / "bad.safetensors"), "--data", str(data), "--source", "t1",
                 "--target", "t2"]) == 2
    assert "could not be loaded" in capsys.readouterr().err


def test_ct_target_gets_the_hu_quality_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import numpy as np
    import SimpleITK as sitk

    data = write_subjects(tmp_path / "data", n=1, shape=(8, 36, 40))
    subject = next(data.iterdir())
    t2 = next(subject.glob("*-t2w.nii.gz"))
    image = sitk.ReadImage(str(t2))
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    hu = np.where(arr > 0, arr - 300.0, -1000.0).astype(np.int16)  # soft tissue and bone-like HU, air outside
    ct = sitk.GetImageFromArray(hu)
    ct.CopyInformation(image)
    sitk.WriteImage(ct, str(subject / f"{subject.name}-ct.nii.gz"))
    t2.unlink()
    model = make_bundle(tmp_path / "ct.safetensors", target="ct")
    out = tmp_path / "eval.json"
    assert main(["--model", str(model), "--data", str(data), "--source", "t1", "--target", "ct", "--device", "cpu",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Synthetic CT quality in the body mask (HU): MAE" in text and "ME (bias)" in text
    summary = json.loads(out.read_text(encoding="utf-8"))["summary"]
    assert {"body", "soft tissue", "bone"} <= set(summary) and "me" in summary["body"]
    assert f"MAE {summary['bone']['mae']['mean']:.1f} HU" in text


def test_every_map_the_bundle_offers_is_scored_beside_the_edge_baseline(tmp_path: Path, capsys) -> None:
    from dataclasses import replace

    from bundles import TINY

    data = write_subjects(tmp_path / "data", n=2, shape=(8, 36, 40))
    model = make_bundle(tmp_path / "m.safetensors", replace(TINY, g_error_head=True))
    out = tmp_path / "eval.json"
    assert main(["--model", str(model), "--data", str(data), "--source", "t1", "--target", "t2", "--json", str(out),
                 "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "Spearman with |error|" in text
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["heatmap_source"] == "expected_error" and report["maps"] == ["expected_error", "d2", "edge"]
    assert report["heatmap_units"] == "expected absolute error (t2 intensity units)"
    for name in report["maps"]:
        scores = report["summary"][f"map {name}"]
        assert 0.0 <= scores["auroc"]["mean"] <= 1.0 and -1.0 <= scores["spearman"]["mean"] <= 1.0
        assert scores["auroc"]["n"] == 2
        assert any(line.startswith(f"{name} ") for line in text.splitlines())
    first = report["subjects"][0]
    assert first["heatmap_auroc"] == first["maps"]["expected_error"]["auroc"]
    assert first["maps"]["expected_error"] != first["maps"]["d2"]  # two different maps were scored
