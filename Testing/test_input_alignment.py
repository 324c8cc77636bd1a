"""Inputs as users have them: one patient's volumes on other grids, orientations and frames, brought onto the
reference input's grid (``input_alignment.align_inputs``), and the inputs it must refuse by name.

Synthetic heads are analytic functions of the physical point (a scalp, a brain with a pattern, ventricles and
lesions, soft edges), so the same head can be sampled on any grid, moved by a known rigid motion, or replaced by
another head; the real-data tests use ../shared/data/brain-mri.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from DualDSynthesisLib.core.errors import DualDError
from DualDSynthesisLib.imaging import rigid_registration as rr
from DualDSynthesisLib.imaging.input_alignment import InputAlignmentError, align_inputs

LPS = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
RAS = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
# Two "patients": head semi-axes (mm), ventricles' and lesions' centres and sizes, the brain pattern's periods.
HEADS = {
    "a": {"head": (68.0, 86.0, 60.0), "ventricles": ((-9, 4, 10, 6, 20, 9), (10, 6, 8, 5, 17, 8)),
          "lesions": ((24, -30, 18, 9), (-30, 22, -12, 7), (5, 40, 30, 5)), "periods": (9.0, 11.0, 13.0)},
    "b": {"head": (56.0, 70.0, 50.0), "ventricles": ((0, -12, -4, 12, 9, 6),),
          "lesions": ((-18, 10, 20, 11), (22, 28, -20, 6)), "periods": (5.0, 17.0, 7.0)},
}
# Intensities per tissue: scalp, brain (base, pattern amplitude), ventricle, lesion.
CONTRASTS = {"t1": (0.9, 0.7, 0.15, 0.15, 0.35), "t2": (0.5, 0.45, -0.12, 1.0, 0.9)}


def grid_image(size: tuple[int, int, int], spacing: tuple[float, float, float],
               direction: tuple[float, ...] = LPS, center: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> sitk.Image:
    """An empty float32 image whose field is centred on ``center`` (physical, LPS)."""
    image = sitk.Image(size, sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    half = np.array(direction).reshape(3, 3) @ ((np.array(size) - 1) * np.array(spacing) / 2)
    image.SetOrigin(tuple(np.array(center) - half))
    return image


def _inside(points: np.ndarray, center: tuple[float, ...], axes: tuple[float, ...], edge: float = 1.0) -> np.ndarray:
    """A soft ellipsoid indicator (1 inside, 0 outside, a ~``edge`` mm logistic rim)."""
    r = np.sqrt(sum(((points[..., a] - center[a]) / axes[a]) ** 2 for a in range(3)))
    return 1.0 / (1.0 + np.exp(np.clip((r - 1.0) * float(np.mean(axes)) / edge, -50, 50)))


def head(template: sitk.Image, contrast: str, patient: str = "a",
         motion: sitk.Euler3DTransform | None = None) -> sitk.Image:
    """``patient``'s head in ``contrast`` sampled on ``template``'s grid, moved by ``motion`` (the head's point
    x appears at motion(x))."""
    size = template.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in size[::-1]), indexing="ij")
    index = np.stack([i, j, k], axis=-1) * np.array(template.GetSpacing())
    points = np.array(template.GetOrigin()) + index @ np.array(template.GetDirection()).reshape(3, 3).T
    if motion is not None:  # sample the unmoved head at motion⁻¹(y)
        inverse = motion.GetInverse()
        rotation = np.array(inverse.GetMatrix()).reshape(3, 3)
        offset = np.array(inverse.TransformPoint((0.0, 0.0, 0.0)))
        points = points @ rotation.T + offset
    spec, (scalp, brain, pattern, ventricle, lesion) = HEADS[patient], CONTRASTS[contrast]
    outer = _inside(points, (0, 0, 0), spec["head"])
    inner = _inside(points, (0, 0, 0), tuple(a - 7 for a in spec["head"]))
    wave = np.prod([np.sin(points[..., a] / p) for a, p in enumerate(spec["periods"])], axis=0)
    value = scalp * (outer - inner) + inner * (brain + pattern * wave)
    for v in spec["ventricles"]:
        value += _inside(points, v[:3], v[3:]) * inner * (ventricle - brain - pattern * wave)
    for c in spec["lesions"]:
        value += _inside(points, c[:3], (c[3],) * 3) * inner * (lesion - brain - pattern * wave)
    out = sitk.GetImageFromArray((value * 1000).astype(np.float32))
    out.CopyInformation(template)
    return out


def motion(shift: tuple[float, float, float], degrees: tuple[float, float, float]) -> sitk.Euler3DTransform:
    t = sitk.Euler3DTransform()
    t.SetRotation(*(math.radians(d) for d in degrees))
    t.SetTranslation(shift)
    return t


def residual(found: sitk.Transform, truth: sitk.Euler3DTransform, center: tuple[float, ...]) -> tuple[float, float]:
    """Where ``found`` and ``truth`` send the head's centre apart (mm), and the angle between their rotations."""
    shift = float(np.linalg.norm(np.subtract(found.TransformPoint(center), truth.TransformPoint(center))))
    r = np.array(truth.GetMatrix()).reshape(3, 3).T @ np.array(found.GetMatrix()).reshape(3, 3)
    return shift, math.degrees(math.acos(float(np.clip((np.trace(r) - 1) / 2, -1, 1))))


@pytest.fixture(scope="module")
def reference() -> sitk.Image:
    return head(grid_image((84, 100, 72), (2.0, 2.0, 2.0)), "t1")


CLINICAL = grid_image((150, 180, 46), (1.1, 1.1, 3.0))  # a 2-D series' grid: fine in-plane, thick slices


def test_an_input_on_another_grid_equals_it_resampled_beforehand(reference: sitk.Image) -> None:
    t2 = head(CLINICAL, "t2")
    aligned = align_inputs("t1", {"t1": reference, "t2": t2})
    out = aligned["t2"]
    assert not out.registered and out.note.startswith("resampled from 1.1×1.1×3 mm"), out.note
    pre = sitk.Resample(t2, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(out.image), sitk.GetArrayViewFromImage(pre), atol=1e-3)
    # and to interpolation tolerance, the head the input shows, sampled on the reference grid directly
    truth = sitk.GetArrayFromImage(head(reference, "t2"))
    error = np.abs(sitk.GetArrayViewFromImage(out.image) - truth)
    assert float(np.median(error[truth > 100])) < 0.05 * float(truth.max())
    assert aligned["t1"].image.GetSize() == out.image.GetSize() and aligned.notes()[1].startswith("t2: ")


def test_an_aligned_input_on_the_reference_grid_is_left_as_it_is(reference: sitk.Image) -> None:
    t2 = head(reference, "t2")
    out = align_inputs("t1", {"t1": reference, "t2": t2})["t2"]
    assert out.note == "on the reference grid" and not out.registered and out.covered == 1.0
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(out.image), sitk.GetArrayViewFromImage(t2))


def test_a_moved_input_is_registered_back(reference: sitk.Image) -> None:
    truth = motion((5.0, -4.0, 3.0), (3.0, -2.0, 4.0))
    moved = head(CLINICAL, "t2", motion=truth)
    out = align_inputs("t1", {"t1": reference, "t2": moved})["t2"]
    assert out.registered and out.note.startswith("registered (rigid, mutual information): moved"), out.note
    shift, angle = residual(out.transform, truth, out.transform.GetCenter())
    assert shift < 1.0 and angle < 1.0, (shift, angle)
    truth_t2 = sitk.GetArrayFromImage(head(reference, "t2"))
    error = np.abs(sitk.GetArrayViewFromImage(out.image) - truth_t2)
    assert float(np.median(error[truth_t2 > 100])) < 0.05 * float(truth_t2.max())


def test_another_orientation_is_only_resampled(reference: sitk.Image) -> None:
    ras = head(grid_image((84, 100, 72), (2.0, 2.0, 2.0), RAS), "t2")
    out = align_inputs("t1", {"t1": reference, "t2": ras})["t2"]
    assert not out.registered and out.note == "resampled from 2×2×2 mm, RAS", out.note
    # the same physical head: the RAS grid's voxels are the reference's, flipped in i and j
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(out.image),
                               sitk.GetArrayFromImage(head(reference, "t2")), atol=0.5)


def test_another_frame_of_reference_is_registered_even_far_away(reference: sitk.Image) -> None:
    # another frame: the scanner coordinates of the two series are unrelated (here 60 mm and 5° apart)
    truth = motion((60.0, 25.0, -30.0), (0.0, 0.0, 5.0))
    moved = head(grid_image((150, 180, 46), (1.1, 1.1, 3.0), center=(60.0, 25.0, -30.0)), "t2", motion=truth)
    out = align_inputs("t1", {"t1": reference, "t2": moved}, frames={"t1": "1.2.3", "t2": "1.2.4"})["t2"]
    assert out.registered and "another frame of reference" in out.note, out.note
    shift, angle = residual(out.transform, truth, out.transform.GetCenter())
    assert shift < 1.0 and angle < 1.0, (shift, angle)


def test_an_input_that_does_not_overlap_is_refused_by_name(reference: sitk.Image) -> None:
    far = head(grid_image((84, 100, 72), (2.0, 2.0, 2.0), center=(0.0, 0.0, 400.0)), "t2")
    with pytest.raises(InputAlignmentError, match=r"input far_flair does not overlap the reference input t1"):
        align_inputs("t1", {"t1": reference, "far_flair": far})


def test_another_patients_scan_is_refused_by_the_quality_check(reference: sitk.Image) -> None:
    other = head(CLINICAL, "t2", patient="b")
    with pytest.raises(InputAlignmentError, match=r"input t2_other .*another patient's scan") as caught:
        align_inputs("t1", {"t1": reference, "t2_other": other})
    message = caught.value.args[0]
    assert isinstance(caught.value, DualDError) and "\n" not in message and message.endswith("?")
    assert "edge alignment 0.3" in message  # the other head's edges are unrelated (1/3), whatever its outline


def test_an_input_covering_too_little_of_the_head_is_refused(reference: sitk.Image) -> None:
    top = head(grid_image((84, 100, 12), (2.0, 2.0, 2.0), center=(0.0, 0.0, 40.0)), "t2")
    with pytest.raises(InputAlignmentError, match=r"input top covers only \d+% of the reference input t1's head"):
        align_inputs("t1", {"t1": reference, "top": top})


def test_a_partial_field_is_noted_with_its_coverage(reference: sitk.Image) -> None:
    part = head(grid_image((84, 100, 48), (2.0, 2.0, 2.0), center=(0.0, 0.0, 20.0)), "t2")
    out = align_inputs("t1", {"t1": reference, "part": part})["part"]
    assert "its field covers" in out.note and 0.5 <= out.covered < 0.995, out.note
    outside = sitk.GetArrayViewFromImage(out.image)[:4]  # the slices below the input's field: its background
    assert not outside.any()


@pytest.mark.parametrize("images, message", [
    ({"t2": None}, r"the reference input t1 is not among the inputs \(t2\)"),
    ({"t1": None, "rgb": sitk.Image((8, 8, 8), sitk.sitkVectorFloat32, 3)}, r"input rgb is not a scalar 3-D volume"),
    ({"t1": sitk.Image((32, 32, 32), sitk.sitkFloat32)}, r"the reference input t1 has no foreground"),
])
def test_bad_inputs_are_refused_in_one_sentence(reference: sitk.Image, images: dict, message: str) -> None:
    images = {name: reference if image is None else image for name, image in images.items()}
    with pytest.raises(InputAlignmentError, match=message):
        align_inputs("t1", images)


def test_the_inputs_are_not_changed(reference: sitk.Image) -> None:
    moved = head(CLINICAL, "t2", motion=motion((4.0, 0.0, 0.0), (0.0, 0.0, 3.0)))
    before = [sitk.GetArrayFromImage(i).copy() for i in (reference, moved)]
    geometry = [(i.GetOrigin(), i.GetSpacing(), i.GetDirection()) for i in (reference, moved)]
    lines: list[str] = []
    align_inputs("t1", {"t1": reference, "t2": moved}, say=lines.append)
    for image, array, geo in zip((reference, moved), before, geometry, strict=True):
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), array)
        assert (image.GetOrigin(), image.GetSpacing(), image.GetDirection()) == geo
    assert lines[0].startswith("t1: the reference") and lines[1].startswith("t2: registered")


# ------------------------------------------------------------------------------------------- real brain MRI


def _read(shared: object, subject: str, suffix: str) -> sitk.Image:
    return sitk.ReadImage(str(shared / "brain-mri" / subject / f"{subject}{suffix}.nii.gz"), sitk.sitkFloat32)


@pytest.mark.shared_data
def test_real_coregistered_contrasts_are_not_registered(shared_data) -> None:
    s = "BraTS-GLI-00001-000"
    out = align_inputs("t1", {"t1": _read(shared_data, s, "-t1n"), "flair": _read(shared_data, s, "-t2f")})
    assert out["flair"].note == "on the reference grid", out["flair"].note


@pytest.mark.shared_data
def test_real_series_on_another_grid_equals_it_resampled_beforehand(shared_data) -> None:
    # Kirby21's T1 (sagittal, 1.2 mm) is the reference; its FLAIR arrives as an axial 0.9×0.9×3 mm series
    s = "Kirby21-113-visit2"
    t1, flair = _read(shared_data, s, "_t1"), _read(shared_data, s, "_flair")
    series = grid_image((213, 213, 60), (0.9, 0.9, 3.0), LPS, center=_center(flair))
    axial = sitk.Resample(flair, series, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    out = align_inputs("t1", {"t1": t1, "flair": axial})["flair"]
    assert not out.registered and out.note.startswith("resampled from 0.9×0.9×3 mm"), out.note
    pre = sitk.Resample(axial, t1, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(out.image), sitk.GetArrayViewFromImage(pre), atol=1e-2)


@pytest.mark.shared_data
def test_real_moved_series_is_registered_back(shared_data) -> None:
    s = "Ljubljana-long-p01"  # whole head and neck, 0.72×0.72×4 mm
    t1, t2 = _read(shared_data, s, "_t1"), _read(shared_data, s, "_t2")
    truth = motion((4.0, -3.0, 2.0), (2.0, -3.0, 2.0))
    truth.SetCenter(_center(t1))
    moved = sitk.Resample(t2, t2, truth.GetInverse(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    out = align_inputs("t1", {"t1": t1, "t2": moved})["t2"]
    assert out.registered, out.note
    # the data set's own T1/T2 agree to about 1 mm (the mutual-information optimum of the unmoved pair)
    shift, angle = residual(out.transform, truth, out.transform.GetCenter())
    assert shift < 1.5 and angle < 1.0, (shift, angle)


@pytest.mark.shared_data
@pytest.mark.parametrize("reference, other", [
    (("Ljubljana-MS-p07", "_t1"), ("Ljubljana-MS-p19", "_flair")),  # both in MNI space: heads alike
    (("BraTS-GLI-00001-000", "-t1n"), ("TCGA-DU-7294", "_fla_bet")),  # both in SRI24 space
    (("Kirby21-113-visit2", "_t1"), ("Ljubljana-long-p12", "_flair")),  # a brain against a whole head
])
def test_real_scan_of_another_patient_is_refused(shared_data, reference: tuple, other: tuple) -> None:
    images = {"t1": _read(shared_data, *reference), "flair": _read(shared_data, *other)}
    refused = r"input flair (does not match|could not be registered to) .* another patient's scan"
    with pytest.raises(InputAlignmentError, match=refused):
        align_inputs("t1", images)


def _center(image: sitk.Image) -> tuple[float, float, float]:
    return image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])


def test_check_grids_cover_the_reference_field(reference: sitk.Image) -> None:
    grid = rr.check_grid(reference, rr.COARSE_MM)
    assert grid.spacing == (4.0, 4.0, 4.0) and grid.size == (42, 50, 36)
    # the coarse grid's centre is the reference's centre
    coarse = grid_image(grid.size, grid.spacing)
    coarse.SetOrigin(grid.origin)
    np.testing.assert_allclose(_center(coarse), _center(reference), atol=1e-6)
