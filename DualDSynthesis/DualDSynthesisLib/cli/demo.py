"""``make demo``: synthesize from the embedded default input with the default model.

The input is the skull-stripped MNI152 2009a T1 template (1 mm) that the nilearn wheel ships, so the
demo needs no download and no data of the user's. Everything else is exactly ``duald-synthesize``.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from ..core.errors import DualDError
from ..core.resources import DEFAULT_MODEL
from ..imaging.bundle import read_metadata
from ..imaging.output_names import SYNTHETIC_SUFFIX, heatmap_suffix
from . import synthesize as cli

MNI152_T1 = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
STEM = "mni152_t1"


def heatmap_name(model: str | Path) -> str:
    """The demo's heatmap file, named for the model's preferred map (``output_names.heatmap_suffix``) as
    ``duald-synthesize`` names a cohort's; a bundle that cannot be read gets D2's name (the CLI then says why)."""
    try:
        offered = read_metadata(Path(model)).heatmap_sources
    except (DualDError, OSError):
        offered = ()
    return STEM + heatmap_suffix(offered[0] if offered else None)


# What the demo writes into --output with the default model (the Makefile's view-demo target names the same files).
OUTPUTS = {"synthetic": STEM + SYNTHETIC_SUFFIX, "heatmap": heatmap_name(DEFAULT_MODEL), "png": "overview.png"}


def mni152_t1() -> Path:
    """Path of nilearn's MNI152 T1 template inside its installed wheel."""
    try:
        path = resources.files("nilearn.datasets") / "data" / MNI152_T1
    except ModuleNotFoundError:
        raise SystemExit("the demo input comes from the nilearn wheel: pip install nilearn") from None
    if not path.is_file():
        raise SystemExit(f"nilearn is installed but lacks {MNI152_T1}; reinstall nilearn")
    return Path(str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m DualDSynthesisLib.cli.demo", description=__doc__)
    parser.add_argument("--output", type=Path, default=Path("demo-output"), help="folder for the results")
    parser.add_argument("--model", help="model bundle (default: the bundled T1→T2 model)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    out: Path = args.output
    out.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(mni152_t1()),
        "-o",
        str(out / OUTPUTS["synthetic"]),
        "--heatmap",
        str(out / heatmap_name(args.model or DEFAULT_MODEL)),
        "--png",
        str(out / OUTPUTS["png"]),
        "--device",
        args.device,
        "--overwrite",  # the demo folder is ours: re-running the demo replaces its own outputs
    ]
    if args.model:
        cmd += ["--model", args.model]
    print("duald-synthesize " + " ".join(cmd), flush=True)
    return cli.main(cmd)


if __name__ == "__main__":
    sys.exit(main())
