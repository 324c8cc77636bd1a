"""One way to write a file so that its final path holds either the old content or the complete new one.

``atomic_write(path, write, verify=...)``: ``write(tmp)`` fills a hidden temporary file in the same
folder (same file system, so the rename is atomic), the file is flushed to disk (fsync), ``verify``
reads it back, and only then is it renamed over ``path`` and the folder fsynced. Used for output
volumes, heatmaps and PNGs (through ``io.AtomicOutputs``), model bundles, training checkpoints and
JSON reports.

Why verify: some writers (SimpleITK's NIfTI writer) do not raise on a short write, so on a full disk the
rename would publish a truncated file as a success. A failed write or verification raises
:class:`OutputWriteError` with one line naming the file and the free space, and removes the temporary.
What a C writer prints on the process's stderr meanwhile (the NIfTI library's "** ERROR: NWAD: wrote only 0
of N bytes") is held back: dropped when the write fails (our line says it), passed on when it succeeds.

Temporary names are ``.<stem>.partial-<pid>-<hex8><suffix>``: the suffix is kept so format-sniffing
writers pick the right format, and the writer's process id lets a later run tell a leftover of a killed
run (process gone) from a file another run is writing right now (:func:`remove_stale_partials`).
No torch, SimpleITK, Slicer or Qt import.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import struct
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from ..core.errors import OutputWriteError

Verifier = Callable[[Path], "str | None"]  # the problem with a written file, or None when it is complete
_MB = 1024 * 1024
_FULL_ERRNOS = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)
_PARTIAL = re.compile(r"^\..+\.partial-(?:(\d+)-)?[0-9a-f]{8}(?:\.[A-Za-z0-9.]+)?$")
_STALE_AGE_S = 3600.0  # where liveness of a pid cannot be asked (Windows): older than this is stale


def _split_suffix(name: str) -> tuple[str, str]:
    lower = name.lower()
    for double in (".nii.gz", ".tar.gz"):
        if lower.endswith(double):
            return name[: -len(double)], name[-len(double) :]
    p = Path(name)
    return (p.stem, p.suffix) if p.suffix else (name, "")


def temporary_name(path: Path) -> Path:
    """A hidden name beside ``path`` (a file or a folder to be staged) with the same suffix, marked with this
    process's id so that :func:`remove_stale_partials` can tell a killed run's leftover from a live one's."""
    stem, suffix = _split_suffix(path.name)
    return path.with_name(f".{stem}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


def free_mb(folder: Path) -> float:
    try:
        return shutil.disk_usage(folder).free / _MB
    except OSError:
        return float("nan")


def write_error(path: Path, reason: str | None = None, exc: BaseException | None = None) -> OutputWriteError:
    """The one-line error for a file that could not be written: disk full (with the free space) or why."""
    free = free_mb(path.parent)
    full = isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS
    if full or (reason is not None and free < 1.0):
        return OutputWriteError(f"could not write {path}: disk full ({free:.0f} MB free)")
    if isinstance(exc, PermissionError) or (isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES)):
        return OutputWriteError(f"could not write {path}: the folder is not writable")
    if reason is None and isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror.lower()
    elif reason is None and exc is not None and str(exc).strip():
        reason = str(exc).strip().splitlines()[-1][:200]
    detail = reason or "the writer failed"
    return OutputWriteError(f"could not write {path}: {detail} ({free:.0f} MB free)")


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; folders cannot be opened for fsync on Windows)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems (e.g. network mounts) refuse fsync on folders: the data is synced
        pass
    finally:
        os.close(fd)


# fd 2 is the process's: one write redirects it at a time (what a concurrent write prints meanwhile lands in the
# same buffer and shares its fate).
_HOLDING = threading.Lock()


def _stderr_sink() -> tuple[int, BinaryIO] | None:
    """(a copy of fd 2, an empty file to point fd 2 at), or None where fd 2 cannot be redirected."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no console (pythonw, a closed stderr)
        return None
    try:  # in memory where the OS allows it: the disk being written to may be the full one
        sink = os.fdopen(os.memfd_create("duald-stderr"), "w+b") if hasattr(os, "memfd_create") else (
            tempfile.TemporaryFile())  # noqa: SIM115  # closed by held_c_stderr
    except OSError:
        os.close(saved)
        return None
    return saved, sink


@contextlib.contextmanager
def held_c_stderr() -> Iterator[list[bytes]]:
    """Send what is written to file descriptor 2 (C libraries, not only Python) to a buffer while the block runs.

    Yields a list that holds the captured bytes after the block; the caller passes them on or drops them.
    Where fd 2 cannot be redirected (no console, another write holds it now) nothing is captured."""
    held: list[bytes] = []
    if not _HOLDING.acquire(blocking=False):
        yield held
        return
    try:
        redirect = _stderr_sink()
        if redirect is None:
            yield held
            return
        saved, sink = redirect
        with sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield held
            finally:
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    sys.stderr.flush()  # Python's own lines written meanwhile go to the sink too
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                held.append(sink.read())
    finally:
        _HOLDING.release()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file: the same path once symbolic links and ``..`` are resolved, or two
    names of one existing file (a hard link, a case-insensitive file system). An output path is compared
    with every input this way before anything is written, so a run never replaces what it reads."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:  # e.g. a permission error on stat: not provably the same file
        return False


def write_temporary(path: Path, write: Callable[[Path], object], verify: Verifier | None = None) -> Path:
    """Write, fsync and verify a temporary sibling of ``path``; returns it (the caller renames it with
    :func:`commit`). Any failure removes the temporary and raises :class:`OutputWriteError`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        try:
            with held_c_stderr() as printed:
                write(tmp)
            if not tmp.is_file():
                raise write_error(path, "the writer produced no file")
            # Some writers (safetensors) create 0600 files; outputs and bundles are meant to be shared, so
            # every file gets the mode a plain open() would give it under the user's umask.
            os.chmod(tmp, 0o666 & ~_umask())
            fsync_file(tmp)
        except OutputWriteError:
            raise
        except OSError as exc:
            raise write_error(path, exc=exc) from None
        except RuntimeError as exc:  # SimpleITK / torch writers report I/O failures as RuntimeError
            raise write_error(path, "the writer failed (disk full or folder not writable?)", exc) from None
        problem = "it is empty" if tmp.stat().st_size == 0 else (verify(tmp) if verify is not None else None)
        if problem is not None:
            raise write_error(path, f"the written file is incomplete ({problem})")
        for text in printed:  # a good write: whatever the writer said is not ours to hide
            if text:
                os.write(2, text)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def commit(tmp: Path, path: Path) -> None:
    """Rename a verified temporary over ``path`` and make the rename durable."""
    os.replace(tmp, path)
    fsync_folder(path.parent)


def atomic_write(path: str | Path, write: Callable[[Path], object], verify: Verifier | None = None) -> Path:
    """Write ``path`` atomically and verified: ``write(tmp)`` creates the content (see the module doc)."""
    path = Path(path)
    tmp = write_temporary(path, write, verify)
    try:
        commit(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(path, exc=exc) from None
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """A text file (UTF-8) written atomically; verified by reading it back."""
    data = text.encode("utf-8")

    def verify(tmp: Path) -> str | None:
        size = tmp.stat().st_size
        return None if size == len(data) else f"{size} of {len(data)} bytes"

    return atomic_write(path, lambda tmp: tmp.write_bytes(data), verify)


def atomic_write_json(path: str | Path, obj: object, **dump_kwargs: object) -> Path:
    return atomic_write_text(path, json.dumps(obj, **dump_kwargs))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- verifiers


_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def png_problem(path: Path) -> str | None:
    with open(path, "rb") as fh:
        head = fh.read(8)
        fh.seek(max(0, path.stat().st_size - len(_PNG_END)))
        tail = fh.read()
    if head != b"\x89PNG\r\n\x1a\n":
        return "not a PNG signature"
    return None if tail == _PNG_END else "no PNG end chunk"


def zip_problem(path: Path) -> str | None:
    """A ``torch.save`` file is a zip archive: its central directory (at the end) must be complete."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return f"not a complete archive ({exc})"
    return None if bad is None else f"member {bad} is damaged"


def safetensors_problem(path: Path) -> str | None:
    """Header length, JSON table and data size of a safetensors file agree."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return "shorter than a safetensors header"
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            return "the header is cut off"
        try:
            table = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "the header is not readable JSON"
    ends = [v["data_offsets"][1] for k, v in table.items() if k != "__metadata__" and isinstance(v, dict)]
    expected = 8 + n + max(ends, default=0)
    return None if size == expected else f"{size} of {expected} bytes"


# ----------------------------------------------------------------------------- stale temporaries


def _process_gone(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists but belongs to someone else
        return False
    return False


def _size(entry: Path) -> int:
    if entry.is_dir():
        return sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
    return entry.stat().st_size


def remove_stale_partials(folder: Path) -> list[tuple[Path, int]]:
    """Remove temporaries of our own naming left in ``folder`` by a killed run; returns (path, bytes) removed.

    Files and staged folders (a DICOM export is written into a hidden folder and renamed) alike. One whose
    writer process is still alive is left alone (another run may be writing it). Temporaries of the older
    naming without a process id are removed when older than an hour."""
    if not folder.is_dir():
        return []
    removed = []
    now = time.time()
    for entry in folder.iterdir():
        match = _PARTIAL.match(entry.name)
        if match is None or entry.is_symlink() or not (entry.is_file() or entry.is_dir()):
            continue
        try:
            if match.group(1) is not None and os.name == "posix":
                stale = _process_gone(int(match.group(1)))
            else:
                stale = now - entry.stat().st_mtime > _STALE_AGE_S
            if stale:
                size = _size(entry)
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append((entry, size))
        except OSError:
            continue
    return removed


def stale_note(folder: Path, removed: list[tuple[Path, int]]) -> str:
    """One line saying what :func:`remove_stale_partials` removed."""
    mb = sum(size for _path, size in removed) / _MB
    return f"removed {len(removed)} unfinished file(s) ({mb:.1f} MB) left in {folder} by an interrupted run"
