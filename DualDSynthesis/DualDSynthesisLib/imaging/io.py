"""Reading source volumes and writing results atomically (SimpleITK + numpy; no torch, Slicer or vtk)."""

from __future__ import annotations

import contextlib
import glob
import gzip
import math
import os
import shutil
import struct
import uuid
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.errors import DualDError, OutputExistsError
from .atomic import Verifier, commit, png_problem, temporary_name, write_temporary
from .compression import write_gzipped
from .dicom_slices import place_slices

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_MODALITY_TAG = "0008|0060"
SERIES_DESCRIPTION_TAG = "0008|103e"


class VolumeReadError(DualDError):
    """A path that does not hold a readable volume; one sentence for the user."""


def split_name(path: str | Path) -> tuple[str, str]:
    """``sub01_t1.nii.gz`` → (``sub01_t1``, ``.nii.gz``); a folder keeps its name and no suffix."""
    name = Path(path).name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    p = Path(name)
    return p.stem, p.suffix


def is_volume_file(path: Path) -> bool:
    return path.is_file() and any(path.name.lower().endswith(s) for s in VOLUME_SUFFIXES)


def dicom_series(folder: Path) -> list[str]:
    """IDs of the DICOM series directly in ``folder`` (empty when it holds none)."""
    # GDCM prints "No Series were found" warnings for every folder it probes: noise, not news.
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.GlobalWarningDisplayOff()
    try:
        return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ())
    except RuntimeError:
        return []
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _series_summary(folder: Path, uid: str) -> str:
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    try:
        reader.ReadImageInformation()
        tags = {key: reader.GetMetaData(key).strip() for key in reader.GetMetaDataKeys()}
        modality, about = tags.get(DICOM_MODALITY_TAG, "?"), tags.get(SERIES_DESCRIPTION_TAG, "")
    except RuntimeError:
        modality, about = "?", ""
    return f"{uid} ({modality}{', ' + repr(about) if about else ''}, {len(files)} files)"


def dicom_series_files(folder: Path, series_uid: str | None = None) -> list[str]:
    """The files of the one DICOM series in ``folder``, in slice order; with several series,
    ``series_uid`` must choose one (the error lists them: which one a user meant is not guessed).
    Slices that are not evenly spaced along their normal (gaps, duplicated positions) are refused with
    the positions named (``dicom_slices.place_slices``)."""
    series = dicom_series(folder)
    if not series:
        raise VolumeReadError(f"folder {folder} holds no DICOM series")
    if series_uid is not None:
        if series_uid not in series:
            raise VolumeReadError(f"folder {folder} holds no DICOM series with UID {series_uid}")
        chosen = series_uid
    elif len(series) > 1:
        listing = "; ".join(_series_summary(folder, uid) for uid in series)
        raise VolumeReadError(f"folder {folder} holds {len(series)} DICOM series, choose one with --series-uid: "
                              f"{listing}")
    else:
        chosen = series[0]
    placement = place_slices(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), chosen))
    if placement.problem is not None:  # ITK would stack them at one spacing anyway: a misplaced volume
        raise VolumeReadError(f"the DICOM series in {folder} cannot be read as one volume: {placement.problem}")
    return placement.files


def read_volume(path: str | Path, series_uid: str | None = None) -> sitk.Image:
    """A volume file SimpleITK reads, or a folder holding one DICOM series (``series_uid`` picks one
    of several, see :func:`dicom_series_files`).

    A DICOM series keeps its modality tag (0008|0060) as image metadata, so the engine can warn when
    it does not match the model's source modality."""
    path = Path(path)
    if not path.exists():
        raise VolumeReadError(f"{path} does not exist")
    if path.is_dir():
        files = dicom_series_files(path, series_uid)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        reader.MetaDataDictionaryArrayUpdateOn()
        try:
            image = reader.Execute()
        except RuntimeError:
            raise VolumeReadError(f"the DICOM series in {path} could not be read (damaged or incomplete)") from None
        if reader.HasMetaDataKey(0, DICOM_MODALITY_TAG):
            image.SetMetaData(DICOM_MODALITY_TAG, reader.GetMetaData(0, DICOM_MODALITY_TAG).strip())
        return image
    unreadable = f"{path.name} could not be read as an image (unreadable, truncated or of an unsupported format)"
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        raise VolumeReadError(unreadable) from None
    if nifti_integrity_problem(path) is not None:
        raise VolumeReadError(unreadable)
    bad = nifti_non_finite_voxels(path)
    if bad:
        raise VolumeReadError(f"{path.name} has {bad} NaN or infinite voxel{'s' if bad != 1 else ''}")
    return image


def _nifti_layout(header: bytes) -> tuple[int, int, int, int, str] | None:
    """(voxel offset, voxel count, bits per voxel, datatype code, byte order) of a NIfTI-1/2 header, or None."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            datatype, bitpix = struct.unpack(endian + "2h", header[12:16])
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        return None
    if not 1 <= dims[0] <= 7 or bitpix <= 0:
        return None
    return offset, math.prod(max(d, 1) for d in dims[1 : dims[0] + 1]), bitpix, datatype, endian


def _nifti_data_end(header: bytes) -> int | None:
    """Voxel offset + data size from a NIfTI-1/2 header, None if it is not one."""
    layout = _nifti_layout(header)
    return None if layout is None else layout[0] + layout[1] * layout[2] // 8


_NIFTI_FLOATS = {16: "f4", 64: "f8", 32: "f4", 1792: "f8"}  # float32, float64, complex64, complex128


def nifti_non_finite_voxels(path: Path) -> int:
    """NaN/inf values stored in a floating-point NIfTI file (0 for other files and integer data).

    ITK's NIfTI reader silently turns NaN and inf into 0, so they must be counted in the raw data,
    streamed in chunks (no second copy of the volume)."""
    name = path.name.lower()
    opener = gzip.open if name.endswith(".nii.gz") else open if name.endswith(".nii") else None
    if opener is None:
        return 0
    with opener(path, "rb") as f:
        layout = _nifti_layout(f.read(540))
        if layout is None or layout[3] not in _NIFTI_FLOATS:
            return 0
        offset, count, bitpix, datatype, endian = layout
        dtype = np.dtype(endian + _NIFTI_FLOATS[datatype])
        f.seek(offset)
        remaining, bad = count * bitpix // 8, 0
        chunk_bytes = (1 << 24) // dtype.itemsize * dtype.itemsize
        while remaining > 0:
            data = f.read(min(chunk_bytes, remaining))
            if not data:
                break
            values = np.frombuffer(data[: len(data) // dtype.itemsize * dtype.itemsize], dtype)
            bad += int(values.size - np.count_nonzero(np.isfinite(values)))
            remaining -= len(data)
    return bad


def nifti_integrity_problem(path: Path) -> str | None:
    """Why a NIfTI file is truncated/corrupt, or None (other formats are not checked here).

    ITK's NIfTI reader zero-fills a truncated file without complaint. The gzip trailer's size (or the
    ``.nii`` file size) is compared with what the header announces; only when they disagree (e.g. a
    multi-member gzip) is the whole stream decompressed to decide."""
    name = path.name.lower()
    try:
        if name.endswith(".nii.gz"):
            with gzip.open(path, "rb") as f:
                expected = _nifti_data_end(f.read(540))
            if expected is None:
                return None
            with open(path, "rb") as f:
                f.seek(-4, 2)
                isize = struct.unpack("<I", f.read(4))[0]
            if isize == expected % 2**32:
                return None
            total = 0  # trailer disagrees: decompress the whole stream to be sure
            with gzip.open(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    total += len(chunk)
        elif name.endswith(".nii"):
            with open(path, "rb") as f:
                expected = _nifti_data_end(f.read(540))
            if expected is None:
                return None
            total = path.stat().st_size
        else:
            return None
    except (EOFError, OSError, zlib.error) as exc:
        return f"is truncated or corrupt ({exc})"
    if total < expected:
        return f"is truncated ({total} of {expected} bytes)"
    return None


def array_to_image(
    array: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    direction: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
) -> sitk.Image:
    """A ``[k, j, i]`` array plus its geometry (LPS, as ITK) as an image; the array is copied."""
    array = np.asarray(array)
    image = sitk.GetImageFromArray(array)
    if image.GetDimension() == 3:
        try:
            image.SetSpacing([float(v) for v in spacing])
            image.SetOrigin([float(v) for v in origin])
            image.SetDirection([float(v) for v in direction])
        except RuntimeError:
            raise VolumeReadError("the spacing, origin or direction given with the array is invalid") from None
    return image


def expand_inputs(spec: str) -> list[Path]:
    """A file, a DICOM folder, a folder of volumes or a glob → the volumes to process, sorted."""
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        if dicom_series(path):
            return [path]
        found = sorted(p for p in path.iterdir() if is_volume_file(p))
        found += sorted(p for p in path.iterdir() if p.is_dir() and dicom_series(p))
        if not found:
            raise VolumeReadError(f"folder {path} holds no volume files and no DICOM series")
        return found
    if glob.has_magic(spec):
        found = sorted(Path(p) for p in glob.glob(spec) if is_volume_file(Path(p)) or Path(p).is_dir())
        if not found:
            raise VolumeReadError(f"no volume matches {spec!r}")
        return found
    raise VolumeReadError(f"{spec} does not exist")


def volume_problem(image: sitk.Image) -> Verifier:
    """A verifier for a written volume/PNG: complete NIfTI data and a header that reads back as ``image``'s size."""

    def verify(tmp: Path) -> str | None:
        if tmp.name.lower().endswith(".png"):
            problem = png_problem(tmp)
            if problem is not None:
                return problem
        problem = nifti_integrity_problem(tmp)
        if problem is not None:
            return problem
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(tmp))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            return "its header cannot be read back"
        if tuple(reader.GetSize()) != tuple(image.GetSize()):
            return f"its header reads back as size {reader.GetSize()}, not {image.GetSize()}"
        return None

    return verify


def non_finite_voxels(image: sitk.Image) -> int:
    """How many voxels of a floating-point image are NaN or infinite (0 for integer images)."""
    if "float" not in image.GetPixelIDTypeAsString():
        return 0
    view = sitk.GetArrayViewFromImage(image)
    return int(view.size - np.count_nonzero(np.isfinite(view)))


def write_image_file(image: sitk.Image, path: Path) -> None:
    """Write ``image`` in the format ``path``'s name asks for; a ``.nii.gz`` is gzipped by ``compression`` (fast)
    rather than by ITK's NIfTI writer, other formats compress as ITK does (``.gz`` names only)."""
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        write_gzipped(path, lambda plain: sitk.WriteImage(image, str(plain), useCompression=False))
    else:
        sitk.WriteImage(image, str(path), useCompression=name.endswith(".gz"))


class AtomicOutputs:
    """Write several files under temporary names and rename them all on :meth:`commit`; anything
    not committed (cancel, error) is deleted, so a failed run leaves no output behind. Every temporary
    is fsynced and read back (``atomic.write_temporary``) before it may be committed."""

    def __init__(self, overwrite: bool = False) -> None:
        self.overwrite = overwrite
        self._pending: list[tuple[Path, Path]] = []

    def check(self, path: Path, suffixes: tuple[str, ...] = VOLUME_SUFFIXES) -> None:
        if not path.name.lower().endswith(suffixes):
            raise DualDError(
                f"cannot tell which format to write {path.name!r} in; end the name with one of {', '.join(suffixes)}"
            )
        if path.exists() and not self.overwrite:
            raise OutputExistsError(f"{path} already exists; pass --overwrite to replace it")
        if path.is_dir():
            raise OutputExistsError(f"{path} is a folder, not a file name")

    def write_image(self, image: sitk.Image, path: Path, suffixes: tuple[str, ...] = VOLUME_SUFFIXES) -> None:
        self._write(image, path, suffixes, lambda t: write_image_file(image, t))

    def write_heatmap(self, image: sitk.Image, path: Path, units: str = "", source: str | None = None) -> None:
        """A heatmap in 8 bits with its scale and units in the header where the format allows (see
        ``heatmap_file``): every caller that writes a heatmap file goes through here."""
        from .heatmap_file import write_heatmap_file

        self._write(image, path, VOLUME_SUFFIXES, lambda t: write_heatmap_file(image, t, units, source))

    def _write(self, image: sitk.Image, path: Path, suffixes: tuple[str, ...], write) -> None:
        self.check(path, suffixes)
        bad = non_finite_voxels(image)
        if bad:  # Slicer and ITK show NaN as 0: a silent "no difficulty anywhere" must never be written
            raise DualDError(f"{path.name} was not written: the result has {bad} NaN or infinite voxels "
                             "(the model or the input is broken)")
        tmp = write_temporary(path, write, volume_problem(image))
        self._pending.append((tmp, path))

    def check_folder(self, path: Path, ours: tuple[str, ...] = ()) -> None:
        """An output folder (a DICOM export): it must be new or empty, unless overwrite; even then only
        a folder holding nothing but entries named in ``ours`` (a previous export) is replaced, so
        --overwrite never deletes files this program did not write."""
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"{path} is a file, not a folder")
        entries = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
        if entries and not self.overwrite:
            raise FileExistsError(f"folder {path} is not empty; pass --overwrite (overwrite=True) to replace it")
        foreign = [name for name in entries if name not in ours]
        if foreign:
            raise FileExistsError(f"folder {path} holds {foreign[0]!r}, which an export does not write; "
                                  "--overwrite only replaces a previous export, so choose another folder")

    def stage_folder(self, path: Path, ours: tuple[str, ...] = ()) -> Path:
        """A new hidden folder beside ``path`` to fill; :meth:`commit` puts it in place of ``path``."""
        self.check_folder(path, ours)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_name(path)  # with this process's id: a killed run's folder is swept by the next run
        tmp.mkdir()
        self._pending.append((tmp, path))
        return tmp

    def commit(self) -> None:
        for tmp, final in self._pending:
            if tmp.is_dir() and final.exists():  # a folder is not replaced by rename: move the old one aside first
                old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            elif tmp.is_dir():
                os.replace(tmp, final)
            else:
                commit(tmp, final)
        self._pending.clear()

    def discard(self) -> None:
        for tmp, _final in self._pending:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self._pending.clear()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[AtomicOutputs]:
        try:
            yield self
            self.commit()
        finally:
            self.discard()
