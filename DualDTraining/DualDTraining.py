#!/usr/bin/env python-real
"""DualD Training as a Slicer scripted CLI module.

Slicer reads ``DualDTraining.xml`` to build the module panel and runs this file in a background
process with ``python-real``, passing the panel's values as ``--flag value`` arguments (boolean
flags only when ticked). Everything is delegated to :func:`DualDTrainingLib.cli.main`, the entry
point of the ``duald-train`` console script, with ``slicer=True`` so progress is reported as
``<filter-progress>`` lines on stdout (Slicer's progress bar) and log lines go to stdout (Slicer marks
a CLI whose stderr is not empty as failed). Slicer's Cancel kills the process: the checkpoint written
every ``checkpoint_every`` steps survives and *Resume* continues from it.
"""

import sys
from pathlib import Path


def _add_library_paths() -> None:
    """Make DualDTrainingLib and DualDSynthesisLib importable: in an installed extension they live in
    ``qt-scripted-modules`` beside this ``cli-modules`` folder; in a source checkout beside this file."""
    here = Path(__file__).resolve().parent
    candidates = [here.parent / "qt-scripted-modules", here, here.parent / "DualDSynthesis"]
    for path in candidates:
        if path.is_dir() and str(path) not in sys.path:
            sys.path.insert(0, str(path))


if __name__ == "__main__":
    _add_library_paths()
    from DualDTrainingLib.cli import main

    sys.exit(main(sys.argv[1:], slicer=True))
