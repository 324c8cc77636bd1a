"""Tumour-region QA: heatmap statistics (expected MAE with an expected-error map, no reference needed) and
(with a real target) image metrics per region.

``compute_qa`` is pure numpy (plus ``metrics``); ``write_qa_table`` and
``new_difference_node`` put the results into the MRML scene (slicer-core, never ``qt``).
Rows: the whole foreground first, then for a CT target the body (HU > -500), then one row per
segment / label value. A region with no voxel gets NaN metrics rather than an error, so one empty
segment does not hide the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from ..imaging import heatmap_kinds
from ..imaging.preprocess import PreprocessingSpec
from ..imaging.scoring import comparable
from ..model import metrics

if TYPE_CHECKING:
    from ..imaging.bundle import BundleMetadata

FOREGROUND_ROW = "foreground"
BODY_ROW = "body (HU > -500)"
DIFFICULTY_PERCENTILE = 95.0


@dataclass
class RegionMetrics:
    name: str
    voxels: int
    mean_difficulty: float = math.nan  # the heatmap's mean / 95th percentile in the region, whatever the map
    p95_difficulty: float = math.nan
    expected_mae: float = math.nan  # with an error map in target units: its mean, the MAE to expect
    psnr: float = math.nan
    mae: float = math.nan
    ssim: float = math.nan


def is_ct(modality: str | None) -> bool:
    return bool(modality) and modality.strip().upper() == "CT"


def region_masks(
    foreground: np.ndarray,
    labels: np.ndarray | None = None,
    label_names: dict[int, str] | None = None,
    body: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Ordered ``{row name: boolean mask}``: foreground, body (if given), then each label.

    Labels listed in ``label_names`` get a row even when empty; without names every non-zero
    value present gets a row named ``label <value>``.
    """
    regions = {FOREGROUND_ROW: np.asarray(foreground, dtype=bool)}
    if body is not None:
        regions[BODY_ROW] = np.asarray(body, dtype=bool)
    if labels is not None:
        if labels.shape != regions[FOREGROUND_ROW].shape:
            raise ValueError(f"label array shape {labels.shape} differs from the image shape {foreground.shape}")
        if label_names is None:
            label_names = {int(v): f"label {int(v)}" for v in np.unique(labels) if v != 0}
        used: set[str] = set(regions)
        for value, name in label_names.items():
            unique = name
            n = 2
            while unique in used:  # two segments may share a name; rows must stay distinct
                unique = f"{name} ({n})"
                n += 1
            used.add(unique)
            regions[unique] = labels == value
    return regions


def compute_region_metrics(
    regions: dict[str, np.ndarray],
    heatmap: np.ndarray | None = None,
    synthetic: np.ndarray | None = None,
    reference: np.ndarray | None = None,
    data_range: float | None = None,
    heatmap_source: str | None = None,
) -> list[RegionMetrics]:
    """One ``RegionMetrics`` per region; image metrics only when both synthetic and reference are given.
    With a ``heatmap_source`` in target units (``HeatmapKind.in_target_units``: G's expected error) the
    heatmap's mean is also the region's expected MAE: the error G itself expects there, in target units,
    known without a reference image."""
    error_map = heatmap is not None and heatmap_kinds.kind(heatmap_source).in_target_units
    with_reference = synthetic is not None and reference is not None
    if with_reference:
        if synthetic.shape != reference.shape:
            raise ValueError(f"synthetic shape {synthetic.shape} differs from the reference shape {reference.shape}")
        if data_range is None:
            data_range = float(np.ptp(reference))
        if data_range <= 0:
            raise ValueError("the reference volume is constant, so PSNR/SSIM have no data range")
    # One SSIM map for all regions: recomputing it per region costs seconds each on real volumes.
    smap = metrics.ssim_map(synthetic, reference, data_range) if with_reference else None
    rows = []
    for name, mask in regions.items():
        row = RegionMetrics(name=name, voxels=int(mask.sum()))
        if row.voxels > 0:
            if heatmap is not None:
                values = heatmap[mask].astype(np.float64)
                row.mean_difficulty = float(values.mean())
                row.p95_difficulty = float(np.percentile(values, DIFFICULTY_PERCENTILE))
                if error_map:
                    row.expected_mae = row.mean_difficulty
            if with_reference:
                row.mae = metrics.mae(synthetic, reference, mask)
                row.psnr = metrics.psnr(synthetic, reference, data_range, mask)  # inf when identical
                row.ssim = metrics.masked_mean(smap, mask)
        rows.append(row)
    return rows


def compute_qa(
    source: np.ndarray,
    spec: PreprocessingSpec,
    heatmap: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    label_names: dict[int, str] | None = None,
    synthetic: np.ndarray | None = None,
    reference: np.ndarray | None = None,
    heatmap_source: str | None = None,
) -> list[RegionMetrics]:
    """The QA rows for ``source`` (raw, on the synthetic's grid) and the bundle's ``spec``. Foreground,
    units and data range are those of ``duald-evaluate`` (``scoring.comparable``): the same volumes give
    the same PSNR in both. MRI: the source's foreground, normalised units, data range 1; CT: HU, data
    range 4095 HU and an extra body row (reference HU > -500). ``heatmap_source``: see
    :func:`compute_region_metrics`."""
    foreground = spec.source.foreground(source)
    body = None
    data_range = None
    if reference is not None and synthetic is not None:
        synthetic, reference, fg, data_range, _name = comparable(synthetic, reference, source, spec)
        if spec.target.absolute_units:  # CT: the body
            body = fg
    regions = region_masks(foreground, labels, label_names, body)
    return compute_region_metrics(regions, heatmap, synthetic, reference, data_range, heatmap_source)


def absolute_difference(synthetic: np.ndarray, reference: np.ndarray) -> np.ndarray:
    if synthetic.shape != reference.shape:
        raise ValueError(f"synthetic shape {synthetic.shape} differs from the reference shape {reference.shape}")
    return np.abs(synthetic.astype(np.float32) - reference.astype(np.float32))


# ---- scene side (imports slicer lazily so the numpy part works without it) ----

COLUMN_NAME = "Region"
COLUMN_VOXELS = "Voxels"
COLUMN_PSNR = "PSNR (dB)"
COLUMN_MAE = "MAE"  # with its units: mae_units
COLUMN_SSIM = "SSIM"
NORMALISED_UNITS = "normalised"


def mae_units(spec: PreprocessingSpec | None, target_modality: str | None = None) -> str:
    """The units the reference metrics compare in (``scoring.comparable``): the target's absolute units (HU)
    or the normalised MRI space; without a spec (a test double), HU for a CT target."""
    if spec is not None:
        return spec.target.units if spec.target.absolute_units else NORMALISED_UNITS
    return "HU" if is_ct(target_modality) else NORMALISED_UNITS


def table_columns(
    heatmap_source: str | None,
    spec: PreprocessingSpec | None = None,
    target_modality: str | None = None,
    with_heatmap: bool = True,
    with_reference: bool = True,
) -> list[tuple[str, str]]:
    """(title, ``RegionMetrics`` field) of every QA column, each value column titled with its units: the
    heatmap kind's two (``HeatmapKind.columns``, e.g. "Expected MAE (HU)"), then PSNR, MAE and SSIM. The
    Slicer table and the viewer's both come from here."""
    columns = [(COLUMN_NAME, "name"), (COLUMN_VOXELS, "voxels")]
    if with_heatmap:
        target = heatmap_kinds.target_units(spec.target if spec is not None else None, target_modality)
        columns += heatmap_kinds.kind(heatmap_source).columns(target)
    if with_reference:
        columns += [(COLUMN_PSNR, "psnr"), (f"{COLUMN_MAE} ({mae_units(spec, target_modality)})", "mae"),
                    (COLUMN_SSIM, "ssim")]
    return columns


def calibration_notes(heatmap_source: str | None, metadata: BundleMetadata | None) -> dict[str, str]:
    """{``RegionMetrics`` field: sentence} for the QA columns the bundle's expected-error calibration scales: its
    factor and where it was fitted (for a site recalibration, the site and the method: ``ErrorCalibration.
    describe``). {} for a relative map (D2's difficulty) or without a bundle."""
    if heatmap_source is None or metadata is None or not heatmap_kinds.kind(heatmap_source).in_target_units:
        return {}
    sentence = metadata.error_calibration.describe()
    return {field: sentence for _title, field in heatmap_kinds.kind(heatmap_source).qa_columns}


def calibration_caption(notes: dict[str, str]) -> str:
    """One caption for a QA table without tooltips (the viewer's): the distinct sentences of ``notes``."""
    return " ".join(dict.fromkeys(notes.values()))


def write_qa_table(scene, rows: list[RegionMetrics], columns: list[tuple[str, str]], name: str = "DualD QA",
                   notes: dict[str, str] | None = None):
    """A new ``vtkMRMLTableNode`` with one row per region and ``columns`` (:func:`table_columns`); ``notes``
    ({field: sentence}, :func:`calibration_notes`) become those columns' descriptions (Slicer's tooltip)."""
    import vtk

    arrays = []
    for title, field in columns:
        if field == "name":
            array = vtk.vtkStringArray()
        elif field == "voxels":
            array = vtk.vtkIntArray()
        else:
            array = vtk.vtkDoubleArray()
        array.SetName(title)
        for row in rows:
            array.InsertNextValue(getattr(row, field))
        arrays.append(array)
    table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    was_modifying = table_node.StartModify()
    try:
        for array in arrays:
            table_node.AddColumn(array)
        for title, field in columns:
            if (notes or {}).get(field):
                table_node.SetColumnDescription(title, notes[field])
        table_node.SetLocked(True)  # computed results: editing them in the table view makes no sense
    finally:
        table_node.EndModify(was_modifying)
    return table_node


def new_difference_node(
    scene, synthetic: sitk.Image, reference: sitk.Image, name: str = "DualD |synthetic - reference|"
):
    """A new scalar volume ``|synthetic - reference|`` on the synthetic's grid."""
    from .mrml_io import new_volume_node_from_image, resample_to_grid

    reference = resample_to_grid(reference, synthetic)
    difference = sitk.GetImageFromArray(
        absolute_difference(sitk.GetArrayFromImage(synthetic), sitk.GetArrayFromImage(reference))
    )
    difference.CopyInformation(synthetic)
    return new_volume_node_from_image(scene, difference, name)
