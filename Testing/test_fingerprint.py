"""Training-data fingerprint and out-of-distribution warnings (issue 11, item 5)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SHARED_DATA
from DualDSynthesisLib.imaging.fingerprint import (
    FingerprintError,
    TrainingFingerprint,
    VolumeStats,
    fingerprint,
    ood_warnings,
    volume_stats,
)
from DualDSynthesisLib.imaging.preprocess import PreprocessingSpec, prepare_volume
from DualDSynthesisLib.model.intensity import PercentileScale, ZScore
from scipy import ndimage

SPEC = PreprocessingSpec(
    source=PercentileScale(),
    target=PercentileScale(),
    spacing=(1.0, 1.0),
    size_multiple=16,
)


# ----------------------------------------------------------------------------- generated phantoms


def phantom(seed: int, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), t2: bool = False) -> sitk.Image:
    """A brain-like ellipsoid: a white-matter core (~45 % of the volume), a grey-matter shell, CSF ventricles.

    T1-like: WM bright, GM mid, CSF dark; WM brightens with depth (partial volume with GM near its edge
    and deep WM brighter, as on real T1), so its brightest voxels form a thick core and not noise speckle.
    ``t2``: the contrast inverted (CSF bright, WM dark)."""
    rng = np.random.default_rng(seed)
    shape_mm = np.array([48.0, 96.0, 96.0])  # z, y, x
    n = np.maximum(1, np.round(shape_mm / np.array(spacing[::-1]))).astype(int)
    z, y, x = (np.arange(k) * s - k * s / 2 + s / 2 for k, s in zip(n, spacing[::-1], strict=True))
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    a, b, c = 20.0 * rng.uniform(0.9, 1.1), 40.0 * rng.uniform(0.9, 1.1), 34.0 * rng.uniform(0.9, 1.1)
    r = np.sqrt((zz / a) ** 2 + (yy / b) ** 2 + (xx / c) ** 2)  # 1 at the brain's edge
    brain = r <= 1.0
    r_wm = 0.77
    gm = brain & (r > r_wm)
    csf = (np.abs(xx) < 4) & (np.abs(yy) < 14) & (np.abs(zz) < 8)  # ventricles
    depth = np.clip(1.0 - r / r_wm, 0.0, 1.0)  # 0 at the WM's edge, 1 at the centre
    wm_v = 0.25 - 0.1 * depth if t2 else 0.8 + 0.2 * depth
    gm_v, csf_v = (0.55, 1.0) if t2 else (0.6, 0.2)
    arr = np.where(brain, wm_v, 0.0)
    arr[gm] = gm_v
    arr[csf & brain] = csf_v
    arr = arr * rng.uniform(300, 900) * (1 + 0.03 * rng.standard_normal(arr.shape)) * brain
    image = sitk.GetImageFromArray(arr.astype(np.float32))
    image.SetSpacing(spacing)
    return image


def stats_of(image: sitk.Image) -> VolumeStats:
    return volume_stats(prepare_volume(image, SPEC, "source"), SPEC.source)


@pytest.fixture(scope="module")
def toy_fp() -> TrainingFingerprint:
    return fingerprint([stats_of(phantom(seed)) for seed in range(4)])


def test_in_range_volume_does_not_warn(toy_fp):
    stats = stats_of(phantom(10))
    assert not stats.skull
    assert ood_warnings(toy_fp, stats) == []


def test_inverted_contrast_warns(toy_fp):
    warnings = ood_warnings(toy_fp, stats_of(phantom(10, t2=True)))
    assert len(warnings) == 1
    assert "intensities are unlike the training images'" in warnings[0]
    assert warnings[0].endswith("than the model was trained on.")


def test_six_mm_slices_warn(toy_fp):
    warnings = ood_warnings(toy_fp, stats_of(phantom(10, spacing=(1.0, 1.0, 6.0))))
    assert [w for w in warnings if "spacing" in w] == [
        "The input's voxel spacing is outside the training range (z 6.00 mm, training 1.00–1.00)."
    ]


def test_unseen_skull_kind_warns(toy_fp):
    # The heuristic itself is validated on real heads below; here only the decision on its result.
    stats = dataclasses.replace(stats_of(phantom(10)), skull=True)
    warnings = ood_warnings(toy_fp, stats)
    assert warnings and warnings[0].startswith("The input looks like a whole head with skull")
    assert "trained only on skull-stripped brains" in warnings[0]


@pytest.mark.parametrize("source", [PercentileScale(50.0, (0.0, 4.0)), ZScore()], ids=["median", "zscore"])
def test_quantiles_do_not_depend_on_the_source_mapping(source):
    # A median-scaled or z-scored bundle must get the same fingerprint values as a p99.5 one (see volume_stats).
    spec = dataclasses.replace(SPEC, source=source)
    image = phantom(3, t2=True)
    a = stats_of(image)
    b = volume_stats(prepare_volume(image, spec, "source"), spec.source)
    assert b.quantiles == pytest.approx(a.quantiles, abs=1e-4)
    assert b.bright_core == pytest.approx(a.bright_core, abs=1e-3)


def test_round_trip(toy_fp):
    d = json.loads(json.dumps(toy_fp.to_dict()))
    assert TrainingFingerprint.from_dict(d) == toy_fp
    assert toy_fp.skull_kinds == ("stripped",)


@pytest.mark.parametrize(
    ("where", "key"),
    [((), "colour"), (("stripped",), "mean_intensity")],
)
def test_unknown_key_refused(toy_fp, where, key):
    d = toy_fp.to_dict()
    target = d
    for k in where:
        target = target[k]
    target[key] = 1
    with pytest.raises(FingerprintError, match=f"unknown key '{key}'"):
        TrainingFingerprint.from_dict(d)


def test_bad_fingerprint_refused(toy_fp):
    d = toy_fp.to_dict()
    d["spacing_mm"][2] = [2.0, 1.0]
    with pytest.raises(FingerprintError, match="low <= high"):
        TrainingFingerprint.from_dict(d)
    with pytest.raises(FingerprintError, match="at least one volume"):
        fingerprint([])


# ----------------------------------------------------------------------------- the shared real data

BRAIN = SHARED_DATA / "brain-mri"
CT = SHARED_DATA / "ct-template" / "scct.nii"


def _cormack_to_hu(v: np.ndarray) -> np.ndarray:
    """The inverse of ct-template/README.md (dark 900, mid 200, k 10)."""
    dark, mid, k = 900.0, 200.0, 10.0
    k_max = mid * (k + 1)
    c = v - dark
    hu = np.where(c <= 0, c, np.where(c <= k_max, c / (k + 1), c - k_max + k_max / (k + 1)))
    return hu + dark - 1024


def _six_mm(image: sitk.Image) -> sitk.Image:
    """``image`` resampled (linear) to 6 mm along its third axis, the same extent."""
    size = list(image.GetSize())
    spacing = list(image.GetSpacing())
    size[2] = round(size[2] * spacing[2] / 6.0)
    spacing[2] = 6.0
    return sitk.Resample(
        image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing, image.GetDirection()
    )


def _source_of(subject: str) -> str:
    return "BraTS" if subject.startswith("BraTS") else subject.rsplit("-", 1)[0] if "Ljubljana" in subject else subject


@pytest.fixture(scope="module")
def real() -> dict[tuple[str, str], VolumeStats]:
    """Statistics of every subject's T1, T2, FLAIR and 6 mm T1, and the CT template (raw and in HU)."""
    if not BRAIN.is_dir() or not CT.is_file():
        pytest.skip(f"real data not found at {SHARED_DATA} (the shared/ folder beside the checkout)")
    from DualDTrainingLib.discovery import contrast_of

    out: dict[tuple[str, str], VolumeStats] = {}
    for folder in sorted(p for p in BRAIN.iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir()):
            contrast = contrast_of(path.name)
            if contrast in ("t1", "t2", "flair"):
                image = sitk.ReadImage(str(path))
                out[(folder.name, contrast)] = stats_of(image)
                if contrast == "t1":
                    out[(folder.name, "t1_6mm")] = stats_of(_six_mm(image))
    ct = sitk.ReadImage(str(CT))
    hu = sitk.GetImageFromArray(_cormack_to_hu(sitk.GetArrayFromImage(ct).astype(np.float32)).astype(np.float32))
    hu.CopyInformation(ct)
    out[("ct", "raw")] = stats_of(ct)
    out[("ct", "hu")] = stats_of(hu)
    return out


def _subjects(real) -> list[str]:
    return sorted({s for s, c in real if c == "t1"})


def _fp(real, subjects) -> TrainingFingerprint:
    return fingerprint([real[(s, "t1")] for s in subjects])


@pytest.mark.shared_data
def test_real_skull_heuristic(real):
    subjects = _subjects(real)
    assert len(subjects) == 8
    for s in subjects:
        for contrast in ("t1", "t2", "flair"):
            assert real[(s, contrast)].skull == s.startswith("Ljubljana-long"), (s, contrast)
    assert real[("ct", "raw")].skull and real[("ct", "hu")].skull


@pytest.mark.shared_data
def test_real_t1_model(real):
    fp = _fp(real, _subjects(real))
    assert fp.skull_kinds == ("stripped", "head")
    for s in _subjects(real):
        assert ood_warnings(fp, real[(s, "t1")]) == [], s
        for contrast in ("t2", "flair"):
            warnings = ood_warnings(fp, real[(s, contrast)])
            assert any("another contrast or modality" in w for w in warnings), (s, contrast)
        warnings = ood_warnings(fp, real[(s, "t1_6mm")])
        assert any("spacing" in w and "z 6.00 mm" in w for w in warnings), s
    for kind in ("raw", "hu"):
        assert any("another contrast or modality" in w for w in ood_warnings(fp, real[("ct", kind)])), kind


@pytest.mark.shared_data
def test_real_stripped_only_model_warns_about_skull(real):
    subjects = _subjects(real)
    fp = _fp(real, [s for s in subjects if not s.startswith("Ljubljana-long")])
    assert fp.skull_kinds == ("stripped",)
    for s in subjects:
        warnings = ood_warnings(fp, real[(s, "t1")])
        if s.startswith("Ljubljana-long"):
            assert warnings and "whole head with skull" in warnings[0], s
        else:
            assert warnings == [], s


@pytest.mark.shared_data
def test_real_leave_one_source_out(real):
    """Not a target to force green: records which held-out sources' T1s still warn (see the report).

    Measured: BraTS-GLI and Kirby21 pass; BraTS-MET (25th percentile 0.67 > 0.57), Ljubljana-MS (bright-core
    0.25/0.31 < 0.52) and TCGA (median 0.49 < 0.58) warn on intensity; Ljubljana-long warns about the skull
    since no other source is a whole head."""
    subjects = _subjects(real)
    warned = set()
    for source in sorted({_source_of(s) for s in subjects}):
        fp = _fp(real, [s for s in subjects if _source_of(s) != source])
        for s in subjects:
            if _source_of(s) == source and ood_warnings(fp, real[(s, "t1")]):
                warned.add(s)
    # Every whole head warns when the training set holds none; at least one stripped held-out T1 passes,
    # so the tolerances are not so tight that any new source warns.
    assert {"Ljubljana-long-p01", "Ljubljana-long-p12"} <= warned
    assert warned != set(subjects)


def test_stats_on_the_foreground_box_equal_the_whole_volume():
    # volume_stats reads only the foreground's bounding box; the same statistics from the whole padded volume
    prepared = prepare_volume(phantom(3), SPEC, "source")
    fg = prepared.foreground
    values = prepared.slices[fg]
    top = np.percentile(values, 99.5)
    bright = fg & (prepared.slices > np.quantile(values, 0.70))
    core = ndimage.binary_erosion(bright, structure=_disk_2mm()).sum() / bright.sum()
    stats = volume_stats(prepared, SPEC.source)
    assert stats.quantiles == tuple(float(q) / float(top) for q in np.quantile(values, (0.25, 0.5, 0.75, 0.9, 0.95)))
    assert stats.bright_core == float(core) and 0.0 < core < 1.0
    assert fg.sum() < 0.5 * fg.size  # the box really is smaller than the volume


def _disk_2mm() -> np.ndarray:
    y, x = np.mgrid[-2:3, -2:3]
    return ((y / 2) ** 2 + (x / 2) ** 2 <= 1.0)[None]
