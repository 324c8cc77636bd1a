"""Stand-in for SimpleITK on a GPU machine that lacks it, for runs that read no image file.

Training from prepared arrays (``loso.py``) and the training-step benchmark never read or write an
image, and the GPU machine's Python has no SimpleITK: its 52 MB wheel does not fit the transfer beside
the prepared data. The library modules use SimpleITK only at call time, apart from constants such as
``sitk.sitkLinear`` in default arguments: the stub provides those, and any real use fails loudly.
``DUALD_SITK_STUB=1`` forces the stub (to test this path where SimpleITK is installed).
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any


def install_if_missing() -> None:
    if os.environ.get("DUALD_SITK_STUB") != "1":
        try:
            import SimpleITK  # noqa: F401

            return
        except ImportError:
            pass
    stub = types.ModuleType("SimpleITK")

    def missing(name: str) -> Any:
        if name.startswith("sitk"):
            return 0
        raise AttributeError(f"SimpleITK is not installed here (needed for {name})")

    stub.__getattr__ = missing  # type: ignore[method-assign]
    sys.modules["SimpleITK"] = stub


def run_script(path: str, *argv: str) -> None:
    """Run a script as ``__main__`` with the stub in place (``python3 sitk_stub.py SCRIPT ARGS...``)."""
    import runpy

    install_if_missing()
    sys.argv = [path, *argv]
    runpy.run_path(path, run_name="__main__")


if __name__ == "__main__":
    run_script(sys.argv[1], *sys.argv[2:])
