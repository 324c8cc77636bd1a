"""DICOM export of a synthesis result, marked as synthetic, for a treatment-planning system (pydicom, highdicom).

Layout of a ``--dicom-out`` folder (one series per subfolder, one file per slice for the image):

- ``SYNTHETIC/``: the synthetic volume. CT Image Storage when the model's target is CT-valued (HU
  stored as int16 with RescaleSlope 1 / RescaleIntercept 0, so values are within ±0.5 HU of the
  float result), otherwise MR Image Storage: never a non-HU volume labelled CT.
- ``DIFFICULTY/``: the heatmap as one Parametric Map instance (float32) that references the synthetic
  series; its content description and real-world value mapping say which map it is and its units
  (expected |error| in HU or intensity units, or relative difficulty in [0, 1] from D2). A parametric
  map is DICOM's object for a derived quantity on an image grid: it keeps the geometry and frame of
  reference (so viewers overlay it on the sCT), and a planning system cannot take it for a planning CT,
  which a second CT-like series with heatmap values could be mistaken for. Subfolders let a planner
  import only ``SYNTHETIC/``.

Marking: ImageType DERIVED\\SECONDARY, SeriesDescription "SYNTHETIC CT <model>" (or "SYNTHETIC MR"),
DerivationDescription naming the bundle file, its version and the engine, BurnedInAnnotation NO and
ImageComments saying it is not for diagnosis. New Series/SOP Instance UIDs always. With a DICOM source
the patient, study (StudyInstanceUID included, so the sCT sits beside its MR) and frame-of-reference
attributes are copied, so the planning system registers sCT and MR without a new registration; with a
volume-file source they stay empty (patient ID/name only if the user gives them) and the study and
frame of reference are new.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from importlib import metadata as _metadata
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import format_number_as_ds

from ..core.errors import DualDError
from . import heatmap_kinds
from . import io as vio
from .heatmap_file import ascii_text

SYNTHETIC_FOLDER = "SYNTHETIC"
HEATMAP_FOLDER = "DIFFICULTY"
EXPORT_ENTRIES = (SYNTHETIC_FOLDER, HEATMAP_FOLDER)
NOT_FOR_DIAGNOSIS = (
    "NOT FOR DIAGNOSTIC USE: synthetic image computed by a neural network from another modality; "
    "verify against the source images before use in treatment planning."
)
_IMPLEMENTATION = "duald-synthesis"
# Attributes copied from a DICOM source so that the synthetic series joins the source's patient,
# study and frame of reference (Patient, General Study, Frame of Reference modules, patient position).
_COPIED = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "OtherPatientIDsSequence", "StudyInstanceUID", "StudyID", "StudyDate", "StudyTime", "AccessionNumber",
    "ReferringPhysicianName", "StudyDescription", "FrameOfReferenceUID", "PositionReferenceIndicator",
    "PatientPosition",
)


class DicomExportError(DualDError):
    """A DICOM export that cannot be made as asked; one sentence for the user."""


@dataclass
class DicomMarking:
    """What the series say about their origin: the model (name, bundle file, version) and the engine."""

    model_name: str
    bundle_file: str
    bundle_version: str
    ct_valued: bool
    patient_id: str = ""
    patient_name: str = ""

    @property
    def engine(self) -> str:
        try:
            return f"{_IMPLEMENTATION} {_metadata.version(_IMPLEMENTATION)}"
        except _metadata.PackageNotFoundError:  # running from a checkout that is not pip-installed
            return _IMPLEMENTATION

    @property
    def kind(self) -> str:
        return "CT" if self.ct_valued else "MR"

    def series_description(self, what: str = "") -> str:
        name = self.model_name.replace("→", "->")
        return f"SYNTHETIC {self.kind}{what} {name}"[:64]  # LO: at most 64 characters

    @property
    def derivation(self) -> str:
        text = (f"Synthetic {self.kind} computed by model bundle {self.bundle_file} ({self.model_name}, "
                f"{self.bundle_version}) with the {self.engine} engine")
        return text.replace("→", "->")[:1024]  # ST: at most 1024 characters

    def series_tags(self) -> dict[str, str]:
        """The marking as DICOM keyword → value (multi-valued ones joined by backslashes): written
        into every instance, and set on a Slicer volume node as ``DICOM.<keyword>`` attributes."""
        return {
            "Modality": self.kind,
            "SeriesDescription": self.series_description(),
            "SeriesNumber": "9001",  # a high number keeps the synthetic series after the acquired ones
            "Manufacturer": "DualD Synthesis",
            "ManufacturerModelName": self.model_name.replace("→", "->")[:64],
            "SoftwareVersions": self.engine,
            "ImageType": "DERIVED\\SECONDARY\\" + ("AXIAL" if self.ct_valued else "OTHER"),
            "DerivationDescription": self.derivation,
            "BurnedInAnnotation": "NO",
            "ImageComments": NOT_FOR_DIAGNOSIS,
        }


def marking_for(metadata, bundle_path: str | Path, ct_valued: bool, patient_id: str = "",
                patient_name: str = "") -> DicomMarking:
    """The marking for a :class:`BundleMetadata` (duck-typed: this module stays torch-free)."""
    prov = metadata.provenance or {}
    version = [f"bundle format {metadata.format_version}"]
    if prov.get("date"):
        version.append(f"trained {str(prov['date'])[:10]}")
    if prov.get("commit"):
        version.append(f"commit {str(prov['commit'])[:12]}")
    return DicomMarking(metadata.name, Path(bundle_path).name, ", ".join(version), ct_valued,
                        patient_id or "", patient_name or "")


# ----------------------------------------------------------------------------- source


def source_headers(source: str | Path, series_uid: str | None = None) -> list | None:
    """The headers (no pixels) of a DICOM source series in slice order, or None for a volume file."""
    source = Path(source)
    if not source.is_dir():
        return None
    files = vio.dicom_series_files(source, series_uid)
    try:
        return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    except (pydicom.errors.InvalidDicomError, OSError) as exc:
        raise DicomExportError(f"the DICOM source {source} could not be read for its patient data ({exc})") from None


def _source_references(headers: list | None, depth: int) -> list:
    """Per output slice, the source instance it was computed from (the output grid is the input's)."""
    if headers is None or len(headers) != depth:
        return [None] * depth
    return [(h.SOPClassUID, h.SOPInstanceUID) if "SOPInstanceUID" in h else None for h in headers]


# ----------------------------------------------------------------------------- datasets


def _stored_values(array: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(array), -32768, 32767).astype(np.int16)


def _decimal(value: float) -> str:
    """A DS value (at most 16 characters) for a coordinate or spacing."""
    return format_number_as_ds(float(value))


def image_series(image: sitk.Image, marking: DicomMarking, headers: list | None = None) -> list:
    """One CT (or MR) Image Storage dataset per slice of ``image``, on exactly its grid."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DicomExportError("only a scalar 3-D volume can be written as a DICOM series")
    array = sitk.GetArrayFromImage(image)
    stored = _stored_values(array)
    source = headers[0] if headers else None
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    series_uid = generate_uid()
    study_uid = source.StudyInstanceUID if source is not None and "StudyInstanceUID" in source else generate_uid()
    frame_uid = source.FrameOfReferenceUID if source is not None and "FrameOfReferenceUID" in source else generate_uid()
    sop_class = CTImageStorage if marking.ct_valued else MRImageStorage
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    orientation = [_decimal(v) for v in (*direction[:, 0], *direction[:, 1])]
    spacing = image.GetSpacing()
    refs = _source_references(headers, stored.shape[0])
    out = []
    for k in range(stored.shape[0]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: copied patient names may hold any script
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        # Patient, study, frame of reference: the source's when it is DICOM, else empty / new.
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                        "ReferringPhysicianName", "StudyID", "AccessionNumber", "PositionReferenceIndicator",
                        "PatientPosition", "Laterality"):  # type 2 / 2C: present, empty when unknown
            setattr(ds, keyword, "")
        if source is not None:
            for keyword in _COPIED:
                if keyword in source:
                    setattr(ds, keyword, source[keyword].value)
        else:
            ds.PatientID, ds.PatientName = marking.patient_id, marking.patient_name
            ds.StudyDate, ds.StudyTime = date, time
        ds.StudyInstanceUID, ds.FrameOfReferenceUID = study_uid, frame_uid
        # Series and marking.
        for keyword, value in marking.series_tags().items():
            setattr(ds, keyword, value.split("\\") if "\\" in value else value)
        ds.SeriesInstanceUID = series_uid
        ds.SeriesDate, ds.SeriesTime, ds.ContentDate, ds.ContentTime = date, time, date, time
        if refs[k] is not None:
            ref = Dataset()
            ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = refs[k]
            ds.SourceImageSequence = Sequence([ref])
        # Geometry: exactly the output grid.
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_decimal(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))]
        ds.ImageOrientationPatient = orientation
        ds.PixelSpacing = [_decimal(spacing[1]), _decimal(spacing[0])]  # row spacing (j), column spacing (i)
        ds.SliceThickness = _decimal(spacing[2])
        ds.PatientOrientation = ""
        ds.AcquisitionNumber = ""
        # Pixels.
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        if marking.ct_valued:
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
            ds.KVP = ""
            ds.WindowCenter, ds.WindowWidth = "40", "400"  # soft-tissue window
        else:
            _mr_acquisition_placeholders(ds)
        ds.PixelData = stored[k].tobytes()
        out.append(ds)
    return out


def _mr_acquisition_placeholders(ds) -> None:
    """MR Image module attributes that describe an acquisition; a synthetic image had none, so the
    type 1 ones take the standard's "none" values and the type 2 ones stay empty."""
    ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "RM", "NONE", "", "2D"
    ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "", "", ""


def heatmap_map(heatmap: sitk.Image, image_datasets: list, marking: DicomMarking, units: str = "",
                source: str | None = None):
    """The heatmap as one Parametric Map instance referencing the synthetic series. ``units``: the
    result's ``heatmap_units`` (empty: the kind's own sentence); ``source``: its ``heatmap_kinds`` name, which
    gives the map's label and units code (an expected-error map is in HU for a CT target)."""
    import highdicom as hd  # imported here: only the heatmap needs it (and it is slow to import)

    array = sitk.GetArrayFromImage(heatmap).astype(np.float32)
    if array.shape != (len(image_datasets), image_datasets[0].Rows, image_datasets[0].Columns):
        raise DicomExportError("the heatmap is not on the synthetic volume's grid")
    kind = heatmap_kinds.kind(source)
    high = max(float(array.max()), 1e-6) if kind.ceiling is None else kind.ceiling
    unit = getattr(codes.UCUM, kind.dicom_units_code(marking.ct_valued))
    description = ascii_text(kind.legend(units))[:64]  # LO: 64 chars
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=kind.dicom_label, lut_explanation=description,
        unit=unit, value_range=(0.0, high), slope=1, intercept=0,
    )
    pm = hd.pm.ParametricMap(
        source_images=image_datasets, pixel_array=array, series_instance_uid=generate_uid(), series_number=9002,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="DualD Synthesis",
        manufacturer_model_name=image_datasets[0].ManufacturerModelName, software_versions=marking.engine,
        device_serial_number="none", contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=high / 2, window_width=high)],
        content_label=kind.dicom_label.replace(" ", "_"), content_description=description,
    )
    pm.SeriesDescription = marking.series_description(" DIFFICULTY")
    pm.DerivationDescription = marking.derivation
    pm.ImageComments = NOT_FOR_DIAGNOSIS
    pm.BurnedInAnnotation = "NO"
    pm.Laterality = ""  # type 2C (paired body parts); the synthetic series leaves it empty too
    return pm


def write_series(folder: Path, synthetic: sitk.Image, heatmap: sitk.Image | None, marking: DicomMarking,
                 headers: list | None = None, heatmap_units: str = "",
                 heatmap_source: str | None = None) -> dict[str, object]:
    """Write the synthetic series (and the heatmap map, see :func:`heatmap_map` for ``heatmap_units``) into
    ``folder`` (created; the caller stages it)."""
    datasets = image_series(synthetic, marking, headers)
    series = folder / SYNTHETIC_FOLDER
    series.mkdir(parents=True)
    for k, ds in enumerate(datasets):
        ds.save_as(series / f"{marking.kind}{k + 1:05d}.dcm", enforce_file_format=True)
    written: dict[str, object] = {"synthetic": series, "series_uid": datasets[0].SeriesInstanceUID}
    if heatmap is not None:
        pm = heatmap_map(heatmap, datasets, marking, heatmap_units, heatmap_source)
        (folder / HEATMAP_FOLDER).mkdir()
        pm.save_as(folder / HEATMAP_FOLDER / "PM00001.dcm", enforce_file_format=True)
        written["heatmap"] = folder / HEATMAP_FOLDER
    return written


# ----------------------------------------------------------------------------- engine glue


@dataclass
class DicomRequest:
    """A ``--dicom-out`` folder and the patient fields a user may give for a non-DICOM source."""

    folder: Path
    patient_id: str = ""
    patient_name: str = ""

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)


# The value representations of the strings a user gives (PS3.5 6.2): what pydicom does not check itself.
_VR_NAMES = {"LO": "Long String", "PN": "Person Name"}
_PN_COMPONENTS = 5  # family^given^middle^prefix^suffix in each of the (at most 3) "="-separated groups


def check_dicom_string(option: str, value: str, vr: str) -> None:
    """Refuse ``value`` for an attribute of ``vr`` (LO, PN) with one sentence naming ``option`` and the
    rule it breaks, so no export holds a value dciodvfy or a planning system rejects. Lengths count the
    bytes of the files' UTF-8 (SpecificCharacterSet ISO_IR 192), as DICOM validators do."""
    from pydicom.config import RAISE
    from pydicom.valuerep import validate_value

    rule = None
    if "\\" in value:
        rule = "a backslash separates values in DICOM, so it cannot be part of one value"
    elif any(ord(c) < 32 or ord(c) == 127 for c in value):
        rule = "it holds a control character (tab, newline, ...), which this VR does not allow"
    elif vr == "PN" and any(group.count("^") >= _PN_COMPONENTS for group in value.split("=")):
        rule = f"a person name has at most {_PN_COMPONENTS} ^-separated components (family^given^middle^prefix^suffix)"
    else:
        try:
            validate_value(vr, value.encode("utf-8"), RAISE)
        except ValueError as exc:
            rule = str(exc).rstrip(".").replace("The ", "the ", 1).replace("PN components length", "PN groups")
            rule = rule.replace("length (", "length in UTF-8 bytes (", 1)
    if rule is not None:
        shown = repr(value) if any(ord(c) < 32 for c in value) else f"'{value}'"
        shown = shown if len(shown) <= 40 else f"{shown[:36]}...' ({len(value)} characters)"
        raise DicomExportError(f"{option} {shown} is not a valid DICOM {_VR_NAMES.get(vr, vr)} ({vr}) value: {rule}")


def check_dicom_request(request: DicomRequest, source: str | Path, outputs: vio.AtomicOutputs) -> None:
    """Before any work: the folder passes the output policy and does not hold the source, and the patient
    fields are valid DICOM strings."""
    outputs.check_folder(request.folder, EXPORT_ENTRIES)
    folder, source = request.folder.resolve(), Path(source).resolve()
    if source == folder or folder in source.parents:
        raise DicomExportError(f"the input {source} lies inside the DICOM output folder {request.folder}")
    if source.is_dir() and (request.patient_id or request.patient_name):
        raise DicomExportError("a DICOM source brings its own patient identity; drop --patient-id/--patient-name")
    check_dicom_string("--patient-id", request.patient_id, "LO")
    check_dicom_string("--patient-name", request.patient_name, "PN")


def write_dicom(request: DicomRequest, outputs: vio.AtomicOutputs, source: str | Path, series_uid: str | None,
                result, engine) -> dict[str, object]:
    """Stage the export of ``result`` (a SynthesisResult) into a hidden folder beside the target;
    ``outputs.commit()`` renames it into place with the other outputs."""
    headers = source_headers(source, series_uid)
    ct_valued = engine.spec.target.kind == "ct_hu"
    bundle = engine.bundle_path or Path(f"{engine.metadata.name}.safetensors")
    marking = marking_for(engine.metadata, bundle, ct_valued, request.patient_id, request.patient_name)
    staged = outputs.stage_folder(request.folder, EXPORT_ENTRIES)
    return write_series(staged, result.synthetic, result.heatmap, marking, headers,
                        getattr(result, "heatmap_units", ""), getattr(result, "heatmap_source", None))
