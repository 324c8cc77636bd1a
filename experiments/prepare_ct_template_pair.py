"""Build the MRI→CT demo pair: nilearn's MNI152 2009a T1 ↔ the older-adult CT template in HU.

    python experiments/prepare_ct_template_pair.py --ct-template ../shared/data/ct-template --output /tmp/ct-pair

The CT template (Rorden et al. 2012) is stored in Cormack units; it is converted to Hounsfield units
with the inverse its authors' toolbox uses (see ../shared/data/README.md), then resampled (linear)
onto the T1's 1 mm grid. Both lie in (nearly) the same MNI space, so they form a pair that exercises
the CT path end to end — a template pair, not evidence of clinical accuracy. Writes a one-subject
BraTS-like folder (``<output>/mni152/mni152_t1.nii.gz``, ``mni152_ct.nii.gz``) for ``duald-train``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from DualDSynthesisLib.cli.demo import mni152_t1

DARK, MID, K = 900.0, 200.0, 10.0
K_MAX = MID * (K + 1)


def cormack_to_hu(c_units: np.ndarray) -> np.ndarray:
    """The authors' inverse of the Cormack transform (dark = 900, mid = 200, k = 10)."""
    c = c_units.astype(np.float64) - DARK
    hu = np.where(c <= 0, c, np.where(c <= K_MAX, c / (K + 1), c - K_MAX + K_MAX / (K + 1)))
    return (hu + DARK - 1024.0).astype(np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ct-template", type=Path, required=True, help="folder holding scct.nii")
    p.add_argument("--output", type=Path, required=True)
    args = p.parse_args()
    t1 = sitk.ReadImage(str(mni152_t1()), sitk.sitkFloat32)
    ct = sitk.ReadImage(str(args.ct_template / "scct.nii"), sitk.sitkFloat32)
    hu = sitk.GetImageFromArray(cormack_to_hu(sitk.GetArrayFromImage(ct)))
    hu.CopyInformation(ct)
    on_t1 = sitk.Resample(hu, t1, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    out = args.output / "mni152"
    out.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(t1, str(out / "mni152_t1.nii.gz"))
    sitk.WriteImage(sitk.Cast(sitk.Round(on_t1), sitk.sitkInt16), str(out / "mni152_ct.nii.gz"))
    a = sitk.GetArrayViewFromImage(on_t1)
    print(f"wrote {out}: CT on the T1 grid {t1.GetSize()}, HU range [{a.min():.0f}, {a.max():.0f}], "
          f"median inside the head {np.median(a[a > -500]):.0f} HU")


if __name__ == "__main__":
    main()
