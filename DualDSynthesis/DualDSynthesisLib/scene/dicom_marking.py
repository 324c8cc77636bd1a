"""The "synthetic" marking on a Slicer volume node, and its DICOM export (Slicer-core: ``slicer``, never ``qt``).

After synthesis the logic marks the synthetic node: the model/bundle/engine as JSON (``DualD.DicomMarking``),
the source node's ID, and every marking tag as a ``DICOM.<keyword>`` node attribute (SeriesDescription
"SYNTHETIC CT …", Modality, ImageType DERIVED\\SECONDARY, DerivationDescription, BurnedInAnnotation NO,
ImageComments "NOT FOR DIAGNOSTIC USE …"), so anything exporting the node (a script, Slicer's DICOM
export dialog, where these are the values to enter) finds them on it.

:func:`export_node` is what the module's "Export to DICOM" button runs: the same writer as
``duald-synthesize --dicom-out`` (``dicom_export``), so the series carry the full marking and pass the
same validator; when the source node was loaded from Slicer's DICOM database, its patient, study and
frame of reference are copied from the source files.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pydicom
import slicer

from ..imaging import io as vio
from ..imaging.dicom_export import EXPORT_ENTRIES, DicomMarking, marking_for, write_series
from ..imaging.heatmap_file import SOURCE_ATTRIBUTE as HEATMAP_SOURCE_ATTRIBUTE
from ..imaging.heatmap_file import UNITS_ATTRIBUTE
from ..inference.contract import SynthesisEngine
from . import mrml_io

MARKING_ATTRIBUTE = "DualD.DicomMarking"
SOURCE_ATTRIBUTE = "DualD.SourceNodeID"


def marking_from_engine(engine: SynthesisEngine) -> DicomMarking | None:
    """The marking for an engine's model; None for an engine without bundle metadata (a test double)."""
    metadata = engine.metadata
    if metadata is None:
        return None
    bundle = engine.bundle_path or Path(f"{metadata.name}.safetensors")
    return marking_for(metadata, bundle, metadata.preprocessing.target.kind == "ct_hu")


def mark_node(node: Any, marking: DicomMarking, source_node: Any = None) -> None:
    node.SetAttribute(MARKING_ATTRIBUTE, json.dumps(asdict(marking)))
    for keyword, value in marking.series_tags().items():
        node.SetAttribute(f"DICOM.{keyword}", value)
    if source_node is not None:
        node.SetAttribute(SOURCE_ATTRIBUTE, source_node.GetID())


def node_marking(node: Any) -> DicomMarking:
    text = node.GetAttribute(MARKING_ATTRIBUTE) if node is not None else None
    if not text:
        name = "no volume" if node is None else f"volume {node.GetName()!r}"
        raise ValueError(f"{name} is not a synthetic volume made by this module, so it is not exported as one")
    return DicomMarking(**json.loads(text))


def _source_headers(node: Any) -> list | None:
    """The first DICOM header of the source node's series, when it was loaded from Slicer's DICOM
    database (only its patient, study and frame of reference are used); None otherwise."""
    scene = node.GetScene()
    source_id = node.GetAttribute(SOURCE_ATTRIBUTE)
    source = scene.GetNodeByID(source_id) if scene is not None and source_id else None
    uids = (source.GetAttribute("DICOM.instanceUIDs") or "").split() if source is not None else []
    database = getattr(slicer, "dicomDatabase", None)
    if not uids or database is None:
        return None
    path = database.fileForInstance(uids[0])
    return [pydicom.dcmread(path, stop_before_pixels=True)] if path else None


def export_node(node: Any, folder: str | Path, heatmap_node: Any = None) -> Path:
    """Write the marked synthetic ``node`` (and a heatmap node) as DICOM into a new sub-folder of ``folder``
    named after the node; an existing sub-folder is refused (nothing is replaced from the GUI)."""
    marking = node_marking(node)
    if not str(folder).strip():
        raise ValueError("no folder was chosen for the DICOM export")
    target = Path(folder) / (re.sub(r"[^\w.-]+", "_", node.GetName()).strip("_") + "_DICOM")
    heatmap = mrml_io.image_from_volume_node(heatmap_node) if heatmap_node is not None else None
    outputs = vio.AtomicOutputs(overwrite=False)
    with outputs.transaction():
        staged = outputs.stage_folder(target, EXPORT_ENTRIES)
        units = (heatmap_node.GetAttribute(UNITS_ATTRIBUTE) or "") if heatmap_node is not None else ""
        kind = heatmap_node.GetAttribute(HEATMAP_SOURCE_ATTRIBUTE) if heatmap_node is not None else None
        write_series(staged, mrml_io.image_from_volume_node(node), heatmap, marking, _source_headers(node), units,
                     kind)
    return target
