"""Evaluate a model bundle on paired volumes: image metrics per region, and how well the
difficulty heatmap finds the voxels where the synthetic image is worst.

Everything is computed on each subject's own (source) grid from what the synthesis engine returns,
i.e. from exactly what a user gets. Units:
- MRI targets: both the real and the synthetic volume are brought to the normalised space (the real
  one with its own robust scale, the synthetic one with the bundle's reference scale), so PSNR uses
  a data range of 1.0 and MAE is in normalised units (fraction of the foreground's 99.5th percentile).
- CT targets: Hounsfield units clipped to [-1024, 3071]; MAE in HU, PSNR and SSIM with a data range
  of 4095 HU (the SynthRAD convention). The HU quality report for a synthetic CT adds the mean error
  (bias) and the MAE in the air, soft-tissue and bone parts of the body (by the real CT's HU, see
  ``CT_TISSUE_HU``), so a planner sees where the sCT would shift dose.

Trust maps: for every map the bundle offers (G's expected error, D2's difficulty; see
``SynthesisEngine.heatmap_sources``) and the edge baseline (gradient magnitude of the synthetic image,
which already ranks errors well because errors gather at edges), :func:`map_scores` gives the AUROC for
the foreground voxels whose absolute error lies in the worst 10 % of the foreground, and the Spearman
correlation with |error| there. Both are rank statistics, so a map's units do not matter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from DualDSynthesisLib.imaging import heatmap_kinds
from DualDSynthesisLib.imaging.calibration import error_ratio
from DualDSynthesisLib.imaging.preprocess import CT_HU_RANGE, PreprocessingSpec
from DualDSynthesisLib.imaging.scoring import WORST_FRACTION, auroc, comparable, gradient_magnitude, map_scores
from DualDSynthesisLib.model.metrics import mae, masked_mean, mean_error, psnr, ssim_map

EDGE_MAP = "edge"  # the gradient-magnitude baseline's name among the scored maps
MAP_PREFIX = "map "  # summary rows of the trust maps: "map expected_error", "map d2", "map edge"
# Tissue classes of the body by the real CT's HU, [low, high). SynthRAD2023 (Thummerer et al., challenge
# report arXiv:2403.08447) reports MAE, PSNR and SSIM in the body mask; it fixes no tissue split, so
# these are our choice, the usual one in MR-only radiotherapy sCT papers: below -200 HU air (sinuses,
# airways, gas), -200 to 200 HU soft tissue (fat, muscle, brain, fluid), from 200 HU bone. The outer
# bounds are the clipping range every CT is compared in.
CT_TISSUE_HU = {
    "air": (CT_HU_RANGE[0], -200.0),
    "soft tissue": (-200.0, 200.0),
    "bone": (200.0, CT_HU_RANGE[1] + 1.0),
}


@dataclass
class SubjectEvaluation:
    subject: str
    regions: dict[str, dict[str, float]] = field(default_factory=dict)  # region -> metric -> value
    heatmap_auroc: float | None = None  # the written heatmap's AUROC (the bundle's preferred map)
    gradient_auroc: float = float("nan")
    maps: dict[str, dict[str, float]] = field(default_factory=dict)  # map -> {"auroc", "spearman"}, edge included
    warnings: list[str] = field(default_factory=list)


def _region_metrics(
    pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None, data_range: float, smap: np.ndarray
) -> dict:
    voxels = int(pred.size if mask is None else mask.sum())
    return {
        "voxels": voxels,
        "psnr": psnr(pred, ref, data_range, mask),
        "mae": mae(pred, ref, mask),
        "me": mean_error(pred, ref, mask),
        "ssim": masked_mean(smap, mask),
    }


def evaluate_arrays(
    subject: str,
    synthetic: np.ndarray,
    real: np.ndarray,
    source: np.ndarray,
    spec: PreprocessingSpec,
    spacing_kji: tuple[float, float, float],
    heatmap: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    maps: dict[str, np.ndarray] | None = None,
) -> SubjectEvaluation:
    """Metrics for one subject from arrays on one grid (``synthetic``/``real`` in target units).
    ``heatmap``: the map a user gets (``--heatmap``); ``maps``: every map to score by name (the heatmap is
    scored as "heatmap" when ``maps`` is not given); the edge baseline is always scored as "edge"."""
    result = SubjectEvaluation(subject)
    pred, ref, fg, data_range, fg_name = comparable(synthetic, real, source, spec)
    if not fg.any():
        raise ValueError(f"subject {subject}: the foreground mask is empty, nothing to evaluate")
    smap = ssim_map(pred, ref, data_range)
    result.regions["whole"] = _region_metrics(pred, ref, None, data_range, smap)
    result.regions[fg_name] = _region_metrics(pred, ref, fg, data_range, smap)
    if spec.target.kind == "ct_hu":
        for tissue, (low, high) in CT_TISSUE_HU.items():
            region = fg & (ref >= low) & (ref < high)
            if region.any():
                result.regions[tissue] = _region_metrics(pred, ref, region, data_range, smap)
            else:
                result.warnings.append(f"subject {subject}: the body holds no {tissue} ({low:g} to {high:g} HU)")
    if labels is not None:
        tumour = labels > 0
        if tumour.any():
            result.regions["tumour"] = _region_metrics(pred, ref, tumour, data_range, smap)
            for value in np.unique(labels[tumour]):
                mask = labels == value
                result.regions[f"label {int(value)}"] = _region_metrics(pred, ref, mask, data_range, smap)
        else:
            result.warnings.append(f"subject {subject}: the label map is empty")
    if maps is None:
        maps = {} if heatmap is None else {"heatmap": heatmap}
    scored = {**maps, EDGE_MAP: gradient_magnitude(pred, spacing_kji)}
    result.maps = map_scores(scored, np.abs(pred - ref), fg)
    result.gradient_auroc = result.maps[EDGE_MAP]["auroc"]
    for name in [n for n in maps if n in heatmap_kinds.names() and heatmap_kinds.kind(n).in_target_units]:
        # an error map: are its values right, not only its ranking: expected / real MAE (1 = honest)
        expected = maps[name]
        if not spec.target.absolute_units:  # target units → the normalised units pred and ref are compared in
            expected = expected / np.float32(spec.target.units_per_normalised(spec.target.reference_params))
        result.maps[name]["mae_ratio"] = error_ratio(expected, np.abs(pred - ref), fg)
    if heatmap is not None:
        err = np.abs(pred - ref)[fg]
        result.heatmap_auroc = auroc(heatmap[fg], err >= np.quantile(err, 1.0 - WORST_FRACTION))
    return result


def evaluate_images(
    subject: str,
    synthetic: sitk.Image,
    real: sitk.Image,
    source: sitk.Image,
    spec: PreprocessingSpec,
    heatmap: sitk.Image | None = None,
    labels: sitk.Image | None = None,
    maps: dict[str, sitk.Image] | None = None,
) -> SubjectEvaluation:
    """:func:`evaluate_arrays` for images on the source grid (as the engine returns them)."""
    arr = sitk.GetArrayViewFromImage
    spacing = tuple(reversed(source.GetSpacing()))
    return evaluate_arrays(
        subject,
        arr(synthetic),
        arr(real),
        arr(source),
        spec,
        spacing,  # type: ignore[arg-type]
        None if heatmap is None else arr(heatmap),
        None if labels is None else np.rint(arr(labels)).astype(np.int32),
        None if maps is None else {name: arr(image) for name, image in maps.items()},
    )


def summarise(results: list[SubjectEvaluation]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and (population) std over subjects of each region's metrics, and of the AUROCs."""
    table: dict[str, dict[str, list[float]]] = {}
    for r in results:
        for region, metrics in r.regions.items():
            for name, value in metrics.items():
                if name != "voxels":
                    table.setdefault(region, {}).setdefault(name, []).append(value)
        if r.heatmap_auroc is not None:
            table.setdefault("heatmap", {}).setdefault("auroc", []).append(r.heatmap_auroc)
        table.setdefault("heatmap", {}).setdefault("gradient_baseline_auroc", []).append(r.gradient_auroc)
        for name, scores in r.maps.items():
            for metric, value in scores.items():
                table.setdefault(MAP_PREFIX + name, {}).setdefault(metric, []).append(value)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for region, metrics in table.items():
        out[region] = {}
        for name, values in metrics.items():
            finite = [v for v in values if math.isfinite(v)]
            out[region][name] = {
                "mean": float(np.mean(finite)) if finite else float("nan"),
                "std": float(np.std(finite)) if finite else float("nan"),
                "n": len(finite),
            }
    return out


def format_table(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    """A plain-text table like the paper's Table 1: mean (std) per region."""
    lines = [f"{'region':<14}{'PSNR (dB)':>18}{'MAE':>20}{'ME (bias)':>20}{'SSIM':>18}{'n':>4}"]
    for region, metrics in summary.items():
        if region == "heatmap" or region.startswith(MAP_PREFIX):
            continue

        def cell(name: str, fmt: str, metrics: dict = metrics) -> str:
            m = metrics.get(name)
            return "-" if m is None else f"{m['mean']:{fmt}} ({m['std']:{fmt}})"

        n = metrics["psnr"]["n"]
        lines.append(f"{region:<14}{cell('psnr', '.2f'):>18}{cell('mae', '.4g'):>20}{cell('me', '.4g'):>20}"
                     f"{cell('ssim', '.4f'):>18}{n:>4}")
    maps = [region for region in summary if region.startswith(MAP_PREFIX)]
    if maps:
        lines.append(f"{'trust map':<18}{'AUROC worst-10% error':>24}{'Spearman with |error|':>24}{'n':>4}"
                     f"{'expected / real MAE':>24}")
        for region in maps:
            m = summary[region]
            ratio = m.get("mae_ratio")
            lines.append(f"{region[len(MAP_PREFIX):]:<18}{m['auroc']['mean']:>15.3f} ({m['auroc']['std']:.3f})"
                         f"{m['spearman']['mean']:>15.3f} ({m['spearman']['std']:.3f}){m['auroc']['n']:>4}"
                         + ("" if ratio is None else f"{ratio['mean']:>15.3f} ({ratio['std']:.3f})"))
    return "\n".join(lines)



def hu_report(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    """The synthetic-CT quality report in HU (SynthRAD-style body metrics, then MAE per tissue class)."""
    body = summary["body"]
    lines = [
        "Synthetic CT quality in the body mask (HU): "
        f"MAE {body['mae']['mean']:.1f}, ME (bias) {body['me']['mean']:+.1f}, "
        f"PSNR {body['psnr']['mean']:.2f} dB, SSIM {body['ssim']['mean']:.4f}"
    ]
    for tissue, (low, high) in CT_TISSUE_HU.items():
        if tissue in summary:
            m = summary[tissue]
            lines.append(f"  {tissue:<12} ({low:g} to {high:g} HU): MAE {m['mae']['mean']:.1f} HU, "
                         f"ME {m['me']['mean']:+.1f} HU, n={m['mae']['n']}")
    lines.append("  (ME > 0: the sCT is denser than the CT there; dose calculation would over-attenuate)")
    return "\n".join(lines)
