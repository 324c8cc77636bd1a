"""Hashes of what ``duald-synthesize`` writes (not a test): voxel arrays and geometry, not file bytes.

    .venv/bin/python benchmarks/output_hashes.py OUT_FOLDER [--mask PATH]

Runs the CLI (one process per case, as a user would) on nilearn's MNI152 T1 (what ``make demo`` runs)
and, when ../shared/data is present, on the raw clinical head ``Ljubljana-long-p01_t1`` with ``--skull
auto``, ``--skull strip``, a ``--mask`` and both; then prints, per written volume, the SHA-256 of its voxel array
(as float32 bytes after reading the file back) and of its size, spacing, origin and direction. Compare the
lines before and after a change that must not change outputs (a compression level changes the file bytes,
never these hashes).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
CLINICAL = ROOT.parent / "shared" / "data" / "brain-mri" / "Ljubljana-long-p01" / "Ljubljana-long-p01_t1.nii.gz"


def _mni152_t1() -> Path:
    sys.path.insert(0, str(ROOT / "DualDSynthesis"))
    from DualDSynthesisLib.cli.demo import mni152_t1

    return Path(mni152_t1())


def volume_hashes(path: Path) -> tuple[str, str]:
    """(voxels, geometry) SHA-256 prefixes of the volume file ``path``."""
    image = sitk.ReadImage(str(path))
    voxels = hashlib.sha256(np.ascontiguousarray(sitk.GetArrayViewFromImage(image), np.float32).tobytes())
    geometry = repr((image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()))
    return voxels.hexdigest()[:16], hashlib.sha256(geometry.encode()).hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--mask", type=Path, help="the --mask case's mask (default: none, the case is skipped)")
    parser.add_argument("--only", nargs="*", help="run only these cases")
    args = parser.parse_args()
    cases = {"mni": (_mni152_t1(), [])}
    if CLINICAL.exists():
        cases |= {"clinical_auto": (CLINICAL, ["--skull", "auto"]), "clinical_strip": (CLINICAL, ["--skull", "strip"])}
        if args.mask is not None:
            cases["clinical_mask"] = (CLINICAL, ["--mask", str(args.mask)])
            cases["clinical_strip_mask"] = (CLINICAL, ["--skull", "strip", "--mask", str(args.mask)])
    cases = {k: v for k, v in cases.items() if not args.only or k in args.only}
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (source, extra) in cases.items():
        synthetic, heatmap = args.out / f"{name}_synthetic.nii.gz", args.out / f"{name}_heatmap.nii.gz"
        cmd = [sys.executable, "-m", "DualDSynthesisLib.cli.synthesize", str(source), "-o", str(synthetic),
               "--heatmap", str(heatmap), "--device", "cpu", "--overwrite", "-q", *extra]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode:
            print(f"{name}: failed: {done.stderr.strip()[-500:]}")
            continue
        for label, path in (("synthetic", synthetic), ("heatmap", heatmap)):
            voxels, geometry = volume_hashes(path)
            print(f"{name:15s} {label:9s} voxels {voxels} geometry {geometry}")
        for line in done.stderr.strip().splitlines():
            print(f"{'':15s} {line}")


if __name__ == "__main__":
    main()
