"""How a heatmap is stored on disk: 8 (or 16) bits per voxel where the format lets ITK read the scale back.

A heatmap is a display aid, not a measurement: 256 levels over its range are finer than anything an
inferno overlay shows, and the values come back within half a level (range / 510) of what the engine
computed. What ``sitk.ReadImage`` (ITK, hence 3D Slicer) returns is the check, per format:

- **NIfTI** (``.nii``, ``.nii.gz``): uint8 with the header's ``scl_slope``/``scl_inter`` so that
  value = stored × slope + inter (inter is 0 for the engine's non-negative maps). ITK's NIfTI reader
  applies them and returns float32; SimpleITK cannot set them when writing (it writes NaN, "no
  scaling", whatever metadata the image carries), so the two header fields are patched after ITK wrote
  the file. The units sentence goes into the header's ``descrip`` (ITK reads it back as the ``descrip``
  key) and the kind's name (``heatmap_kinds``) into ``intent_name`` (16 characters; ITK reads it back as
  ``intent_name`` but never writes it, so it is patched like the scale).
  uint16 instead of uint8 only when a few extreme voxels would leave the bulk of the map fewer than
  64 of the 256 levels (:func:`stored_levels`): the shipped T1→T2 expected-error head gives the MNI
  demo a brain of ~540–1250 with a few voxels up to ~88 000, which uint8 would flatten into 2–4 levels.
- **NRRD, MetaImage**: neither format has a scale ITK applies, so float32 is kept, but snapped to the
  same levels (long runs of equal values compress far better) and compressed where the format embeds
  its data (``.nrrd``, ``.mha``); the units and the kind are key/value pairs ITK reads back.

Which map a file holds is read from that record (:func:`stored_kind`); a file of an older version, which
recorded only the units sentence, is recognised by its start.

NIfTI-1 has no float16, so an integer type + scale is the smallest NIfTI that round-trips. No torch or Slicer.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.limits import slabs
from . import heatmap_kinds
from .compression import write_gzipped
from .heatmap_kinds import NAME_CHARS, HeatmapKind

LEVELS = 255  # stored values 0..255 (uint8)
WIDE_LEVELS = 65535  # uint16, for maps with extreme outliers (see stored_levels)
MIN_BULK_LEVELS = 64  # levels uint8 must leave for the bulk of the map, else uint16
# MRML node attributes the Slicer logic sets on a heatmap node (legend, DICOM export, saving in duald-view).
UNITS_ATTRIBUTE = "DualD.HeatmapUnits"
SOURCE_ATTRIBUTE = "DualD.HeatmapSource"
UNITS_KEY = "DualD_heatmap_units"  # NRRD / MetaImage key (NIfTI: the header's descrip)
SOURCE_KEY = "DualD_heatmap_source"  # NRRD / MetaImage key (NIfTI: the header's intent_name)
NIFTI_KIND_KEY = "intent_name"
_DESCRIP_CHARS = 79  # NIfTI-1 descrip is 80 bytes, NUL-terminated
# (scl_slope offset, scl_inter offset, struct format, intent_name offset) by header size: NIfTI-1 floats,
# NIfTI-2 doubles; intent_name is 16 bytes in both.
_SCALE_FIELDS = {348: (112, 116, "f", 328), 540: (176, 184, "d", 508)}


def ascii_text(text: str) -> str:
    """``text`` for a file header that only holds ASCII (minus signs and dashes become '-')."""
    text = text.replace("−", "-").replace("–", "-").replace("—", "-")
    return text.encode("ascii", "replace").decode("ascii")


def stored_levels(image: sitk.Image) -> int:
    """255 (uint8) when 256 levels over the whole range still give the bulk of the map (up to its 99th
    percentile of non-zero values, what the display window shows) at least 64 levels; 65535 (uint16)
    when a few extreme voxels stretch the range so far that uint8 would flatten the rest into a handful
    of levels (an expected-error head can put a few voxels 50× above the brain's typical value)."""
    view = sitk.GetArrayViewFromImage(image)
    low = min(0.0, float(view.min())) if view.size else 0.0
    span = (float(view.max()) - low) if view.size else 0.0
    nonzero = view[view != 0]
    if span <= 0 or nonzero.size == 0:
        return LEVELS
    bulk = float(np.percentile(nonzero, 99.0, overwrite_input=True)) - low  # ``nonzero`` is our own copy
    return LEVELS if span / LEVELS <= bulk / MIN_BULK_LEVELS else WIDE_LEVELS


def quantisation(image: sitk.Image, levels: int = LEVELS) -> tuple[float, float]:
    """(slope, intercept) with value = stored × slope + intercept, stored in 0..``levels``, covering the
    image's range; both representable as float32 (the NIfTI-1 header's type)."""
    view = sitk.GetArrayViewFromImage(image)
    low = float(min(0.0, view.min())) if view.size else 0.0
    high = float(view.max()) if view.size else 0.0
    span = high - low
    if span <= 0:
        return 1.0, float(np.float32(low))
    return float(np.float32(span / levels)), float(np.float32(low))


def _levels_of(view: np.ndarray, slope: float, inter: float, levels: int, dtype: type,
               snap: bool = False) -> np.ndarray:
    """round((value − inter) / slope) clipped to 0..``levels`` (``snap``: times slope plus inter, the value
    it stands for), as ``dtype``: computed in float64 as always, but a slab of slices at a time, so no
    whole-volume float64 copy is made."""
    stored = np.empty(view.shape, dtype)
    for slab in slabs(len(view), view[:1].size):
        values = view[slab].astype(np.float64)
        values -= inter
        values /= slope
        np.rint(values, out=values)
        np.clip(values, 0, levels, out=values)
        if snap:
            values *= slope
            values += inter
        stored[slab] = values
    return stored


def quantised(image: sitk.Image) -> tuple[sitk.Image, float, float]:
    """The uint8 (or uint16, see :func:`stored_levels`) image of stored values, with its slope and intercept."""
    levels = stored_levels(image)
    slope, inter = quantisation(image, levels)
    dtype = np.uint8 if levels == LEVELS else np.uint16
    stored = _levels_of(sitk.GetArrayViewFromImage(image), slope, inter, levels, dtype)
    out = sitk.GetImageFromArray(stored)
    out.CopyInformation(image)
    return out, slope, inter


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def _set_nifti_fields(path: Path, slope: float, inter: float, kind: str) -> None:
    """Write ``scl_slope``/``scl_inter`` and ``intent_name`` (the heatmap's kind, '' for none) into an
    uncompressed NIfTI-1/2 file's header in place."""
    with open(path, "r+b") as f:
        head = f.read(4)
        for endian in "<>":
            fields = _SCALE_FIELDS.get(struct.unpack(endian + "i", head)[0])
            if fields is not None:
                break
        else:
            raise ValueError(f"{path.name} is not a NIfTI file (unknown header size)")
        slope_at, inter_at, real, name_at = fields
        f.seek(slope_at)
        f.write(struct.pack(endian + real, slope))
        f.seek(inter_at)
        f.write(struct.pack(endian + real, inter))
        f.seek(name_at)
        f.write(kind.encode("ascii").ljust(NAME_CHARS, b"\0"))


def write_heatmap_file(image: sitk.Image, path: Path, units: str = "", source: str | None = None) -> None:
    """Write ``image`` (a float heatmap) to ``path`` in the format its name asks for, as the module
    docstring describes, recording ``units`` and the kind ``source`` (``heatmap_kinds``; None: none).
    ``path`` may be a temporary name; its suffix picks the format."""
    name = path.name.lower()
    kind = "" if source is None else heatmap_kinds.kind(source).name
    if is_nifti(path):
        stored, slope, inter = quantised(image)
        if units:  # ITK writes this key into the header's descrip
            stored.SetMetaData("ITK_FileNotes", ascii_text(units)[:_DESCRIP_CHARS])
        if not name.endswith(".gz"):
            sitk.WriteImage(stored, str(path), useCompression=False)
            _set_nifti_fields(path, slope, inter, kind)
            return
        # The gzip stream cannot be patched in place: write plain, patch, then compress into ``path``.
        def write_plain(plain: Path) -> None:
            sitk.WriteImage(stored, str(plain), useCompression=False)
            _set_nifti_fields(plain, slope, inter, kind)

        write_gzipped(path, write_plain)
        return
    levels = stored_levels(image)
    slope, inter = quantisation(image, levels)
    snapped = _levels_of(sitk.GetArrayViewFromImage(image), slope, inter, levels, np.float32, snap=True)
    out = sitk.GetImageFromArray(snapped)
    out.CopyInformation(image)
    if units:
        out.SetMetaData(UNITS_KEY, ascii_text(units))
    if kind:
        out.SetMetaData(SOURCE_KEY, kind)
    # Compression only where the data sits inside the one file (a detached header would get a second file).
    sitk.WriteImage(out, str(path), useCompression=name.endswith((".nrrd", ".mha", ".gz")))


def stored_units(image: sitk.Image) -> str:
    """The units a heatmap file recorded (as ``sitk.ReadImage`` returns it), or ''."""
    for key in (UNITS_KEY, "descrip"):
        if image.HasMetaDataKey(key):
            return image.GetMetaData(key).strip()
    return ""


def stored_kind(image: sitk.Image) -> HeatmapKind:
    """Which map a heatmap file holds: the kind it recorded (``intent_name`` in NIfTI, a key elsewhere); a file
    of an older version recorded only its units, and ``heatmap_kinds.recorded_kind`` recognises those."""
    recorded = ""
    for key in (SOURCE_KEY, NIFTI_KIND_KEY):
        if image.HasMetaDataKey(key):
            recorded = image.GetMetaData(key).strip().rstrip("\0")
            break
    return heatmap_kinds.recorded_kind(recorded, stored_units(image))
