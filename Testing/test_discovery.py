"""Tests for DualDTrainingLib.discovery on small generated folders (plus one shared-data check)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from DualDTrainingLib.discovery import (
    Discovery,
    DiscoveryError,
    SubjectPair,
    contrast_of,
    discover,
)
from DualDTrainingLib.pair_files import load_pair

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _write(
    path: Path, size=(24, 20, 8), origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.0), seed: int = 0, dtype=np.int16
) -> Path:
    rng = np.random.default_rng(seed)
    img = sitk.GetImageFromArray(rng.integers(0, 1000, size=size[::-1]).astype(dtype))
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture()
def mixed(tmp_path: Path) -> Path:
    """Both naming conventions, a truncated file, a target elsewhere, a target on another grid."""
    root = tmp_path / "data"
    s = "BraTS-GLI-00001-000"
    for c in ("t1n", "t1c", "t2w", "seg"):
        _write(root / s / f"{s}-{c}.nii.gz", seed=len(c))
    s = "TCGA-DU-7294"
    for c in ("t1_bet", "t1c_bet", "t2_bet", "fla_bet", "seg_fusion"):
        _write(root / s / f"{s}_{c}.nii.gz", seed=len(c))
    s = "BraTS-MET-00110-000"  # t1 only has a t1c sibling: t1 must not match t1c
    for c in ("t1", "t1c", "t2"):
        _write(root / s / f"{s}-{c}.nii.gz")
    _truncate(root / s / f"{s}-t2.nii.gz")
    s = "far-away"
    _write(root / s / f"{s}_t1.nii.gz")
    _write(root / s / f"{s}_t2.nii.gz", origin=(500.0, 0.0, 0.0))
    s = "regrid"  # shifted by 25 % and finer: overlaps, will be resampled
    _write(root / s / f"{s}-t1.nii.gz")
    _write(root / s / f"{s}-t2.nii.gz", size=(48, 40, 8), spacing=(0.5, 0.5, 1.0), origin=(6.0, 0.0, 0.0))
    _write(root / "no-target" / "no-target-t1.nii.gz")
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a subject")
    return root


def test_contrast_names():
    assert contrast_of("BraTS-GLI-00001-000-t1n.nii.gz") == "t1"
    assert contrast_of("BraTS-GLI-00001-000-t1c.nii.gz") == "t1c"
    assert contrast_of("BraTS-MET-00110-000-t1.nii.gz") == "t1"
    assert contrast_of("TCGA-DU-7294_t1_bet.nii.gz") == "t1"
    assert contrast_of("TCGA-DU-7294_t1c_bet.nii.gz") == "t1c"
    assert contrast_of("TCGA-DU-7294_fla_bet.nii.gz") == "flair"
    assert contrast_of("TCGA-DU-7294_seg_fusion.nii.gz") == "seg"
    assert contrast_of("sub-01_T2W.nrrd") == "t2"
    assert contrast_of("sub-01_t1cx.nii.gz") is None
    assert contrast_of("readme.txt") is None


def test_discover_mixed_folder(mixed: Path):
    found = discover(mixed, "t1", "t2")
    assert isinstance(found, Discovery)
    by_subject = {p.subject: p for p in found.pairs}
    assert sorted(by_subject) == ["BraTS-GLI-00001-000", "TCGA-DU-7294", "regrid"]
    gli = by_subject["BraTS-GLI-00001-000"]
    assert gli.source.name.endswith("-t1n.nii.gz") and gli.target.name.endswith("-t2w.nii.gz")
    assert gli.mask is not None and gli.mask.name.endswith("-seg.nii.gz")
    tcga = by_subject["TCGA-DU-7294"]
    assert tcga.source.name == "TCGA-DU-7294_t1_bet.nii.gz" and tcga.target.name == "TCGA-DU-7294_t2_bet.nii.gz"
    assert tcga.mask is not None and tcga.mask.name == "TCGA-DU-7294_seg_fusion.nii.gz"
    reasons = {r.subject: r.reason for r in found.rejected}
    assert "truncated" in reasons["BraTS-MET-00110-000"] and "target file" in reasons["BraTS-MET-00110-000"]
    assert "covers only 0%" in reasons["far-away"]
    assert "no t2 image" in reasons["no-target"] and "t2/t2w" in reasons["no-target"]
    assert "no image files" in reasons["notes"]
    assert found.notes == ["subject regrid: target will be resampled onto the source grid"]


def test_load_pair_resamples_target_and_rejects_truncated(mixed: Path):
    found = discover(mixed, "t1", "t2")
    regrid = next(p for p in found.pairs if p.subject == "regrid")
    src, tgt, mask = load_pair(regrid)
    assert mask is None
    assert tgt.GetSize() == src.GetSize() and tgt.GetOrigin() == src.GetOrigin()
    gli = next(p for p in found.pairs if p.subject.startswith("BraTS-GLI"))
    _, _, mask = load_pair(gli)
    assert mask is not None and mask.GetPixelID() == sitk.sitkInt16
    met = mixed / "BraTS-MET-00110-000"
    broken = SubjectPair(
        "BraTS-MET-00110-000", met / "BraTS-MET-00110-000-t1.nii.gz", met / "BraTS-MET-00110-000-t2.nii.gz"
    )
    with pytest.raises(DiscoveryError, match=r"BraTS-MET-00110-000.*truncated"):
        load_pair(broken)


def test_discover_split_folders(tmp_path: Path):
    for split, subject in (("train", "a"), ("train", "b"), ("val", "c")):
        _write(tmp_path / split / subject / f"{subject}_t1.nii.gz")
        _write(tmp_path / split / subject / f"{subject}_flair.nii.gz")
    found = discover(tmp_path, "t1n", "FLAIR")
    assert [(p.subject, p.split) for p in found.pairs] == [("a", "train"), ("b", "train"), ("c", "val")]


def test_discover_csv_manifest(tmp_path: Path):
    _write(tmp_path / "img" / "s1_src.nii.gz")
    _write(tmp_path / "img" / "s1_tgt.nii.gz")
    _write(tmp_path / "img" / "s1_lbl.nii.gz")
    _write(tmp_path / "img" / "s2_src.nii.gz")
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(
        "subject,source,target,mask,split\n"
        "s1,img/s1_src.nii.gz,img/s1_tgt.nii.gz,img/s1_lbl.nii.gz,train\n"
        f"s2,{tmp_path / 'img' / 's2_src.nii.gz'},img/missing.nii.gz,,val\n"
    )
    found = discover(manifest, "t1", "ct")
    assert [p.subject for p in found.pairs] == ["s1"]
    pair = found.pairs[0]
    assert pair.source == (tmp_path / "img" / "s1_src.nii.gz").resolve() and pair.split == "train"
    assert pair.mask is not None and pair.foreground is None
    assert found.rejected[0].subject == "s2" and "not found" in found.rejected[0].reason
    bad = tmp_path / "bad.csv"
    bad.write_text("t1,t2\na,b\n")
    with pytest.raises(DiscoveryError, match="'source' and 'target'"):
        discover(bad, "t1", "t2")


def test_discover_errors(tmp_path: Path, mixed: Path):
    with pytest.raises(DiscoveryError, match=r"unknown target contrast 'pet'.*t1, t1c, t2, flair"):
        discover(mixed, "t1", "pet")
    with pytest.raises(DiscoveryError, match="does not exist"):
        discover(tmp_path / "nowhere", "t1", "t2")
    with pytest.raises(DiscoveryError, match="both t1"):
        discover(mixed, "t1", "t1n")
    empty = tmp_path / "empty"
    (empty / "subject").mkdir(parents=True)
    _write(empty / "subject" / "subject_t1.nii.gz")
    with pytest.raises(DiscoveryError, match=r"no usable t1→flair pair.*flair/t2f/fla"):
        discover(empty, "t1", "flair")


@pytest.mark.shared_data
def test_discover_shared_brain_mri():
    data = SHARED_DATA / "brain-mri"
    if not data.is_dir():
        pytest.skip(f"shared data not available at {data}")
    found = discover(data, "t1", "t2")
    # Eight subjects from five sources (see ../shared/data/README.md); the contrast names differ per source.
    assert sorted(p.subject for p in found.pairs) == [
        "BraTS-GLI-00001-000", "BraTS-MET-00110-000", "Kirby21-113-visit2", "Ljubljana-MS-p07",
        "Ljubljana-MS-p19", "Ljubljana-long-p01", "Ljubljana-long-p12", "TCGA-DU-7294",
    ]
    assert not found.rejected
    masks = {p.subject: p.mask.name if p.mask else None for p in found.pairs}
    assert masks == {
        "BraTS-GLI-00001-000": "BraTS-GLI-00001-000-seg.nii.gz",
        "BraTS-MET-00110-000": None,
        "Kirby21-113-visit2": None,
        "Ljubljana-MS-p07": "Ljubljana-MS-p07_seg.nii.gz",
        "Ljubljana-MS-p19": "Ljubljana-MS-p19_seg.nii.gz",
        "Ljubljana-long-p01": None,
        "Ljubljana-long-p12": None,
        "TCGA-DU-7294": "TCGA-DU-7294_seg_fusion.nii.gz",
    }
    sources = {p.subject: p.source.name for p in found.pairs}
    assert sources["BraTS-GLI-00001-000"].endswith("-t1n.nii.gz")  # t1n, never the post-contrast t1c
    assert sources["TCGA-DU-7294"].endswith("_t1_bet.nii.gz")
