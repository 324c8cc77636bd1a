"""The gzip of the ``.nii.gz`` files this program writes (the synthetic volume and the heatmap): one place.

Speed over the last percent of size: compressing a 240×240×155 float32 synthetic (36 MB) took 0.6 s in ITK's
NIfTI writer (which ignores a compression level), a quarter of ``duald-synthesize``'s time outside the networks
on a 2-core CPU. ISA-L's deflate (``python-isal``, Intel's igzip) at level 1 takes 0.08 s for a file 2.6 %
larger; without it, zlib's level 1 (0.7 s, the same size as ITK's). The output is one ordinary gzip member:
ITK, Slicer, nibabel and ``gzip`` read it as before. docs/performance.md has the measurements. torch-free.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from pathlib import Path

try:  # a wheel for every platform Slicer runs on; the pure-zlib fall-back keeps working without it
    from isal import igzip as _gzip
except ImportError:  # pragma: no cover - exercised where python-isal is missing
    import gzip as _gzip

LEVEL = 1  # ISA-L's levels are 0-3, zlib's 1-9: 1 is the fast end of both
ENGINE = "isal" if _gzip.__name__.startswith("isal") else "zlib"


def gzip_file(plain: Path, path: Path) -> None:
    """Compress the file ``plain`` into ``path`` (a new gzip file)."""
    with open(plain, "rb") as src, _gzip.open(path, "wb", compresslevel=LEVEL) as dst:
        shutil.copyfileobj(src, dst, 1 << 22)


def write_gzipped(path: Path, write_plain: Callable[[Path], object]) -> None:
    """``write_plain(p)`` writes the uncompressed file at ``p`` (e.g. ITK's ``.nii`` writer, then a header patch);
    its bytes land gzipped in ``path`` (ending ``.gz``), and the plain file is removed whatever happens."""
    plain = path.with_name(path.name[: -len(".gz")])
    try:
        write_plain(plain)
        gzip_file(plain, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            plain.unlink()
