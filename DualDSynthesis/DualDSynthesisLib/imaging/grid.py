"""A 3-D voxel grid (size, spacing, origin, direction) and "same grid": one definition for every module.

:meth:`Grid.matches` decides whether two volumes share a grid (``mrml_io.resample_to_grid``,
``brainmask.mask_on_grid``, the engine's mask check, discovery's headers); ``preprocess`` re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class Grid:
    """A 3-D voxel grid: size (i, j, k), spacing, origin and direction (row-major 3×3)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def from_image(cls, image: sitk.Image) -> Grid:
        return cls(
            tuple(int(v) for v in image.GetSize()),
            tuple(float(v) for v in image.GetSpacing()),
            tuple(float(v) for v in image.GetOrigin()),
            tuple(float(v) for v in image.GetDirection()),
        )

    def matches(self, other: Grid | sitk.Image, tol: float = 1e-4) -> bool:
        """Same size and, within ``tol`` (relative to the smallest spacing for the origin), geometry."""
        if isinstance(other, sitk.Image):
            other = Grid.from_image(other)
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, rtol=tol, atol=0)
            and np.allclose(self.origin, other.origin, rtol=0, atol=tol * min(self.spacing))
            and np.allclose(self.direction, other.direction, rtol=0, atol=tol)
        )

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def resample(self, image: sitk.Image, interpolator: int, default: float,
                 transform: sitk.Transform | None = None) -> sitk.Image:
        """``image`` resampled onto this grid, float32 (no reference image allocated); ``transform`` maps this
        grid's points into ``image``'s space (None: the identity)."""
        f = sitk.ResampleImageFilter()
        f.SetSize(self.size)
        f.SetOutputSpacing(self.spacing)
        f.SetOutputOrigin(self.origin)
        f.SetOutputDirection(self.direction)
        f.SetInterpolator(interpolator)
        f.SetDefaultPixelValue(float(default))
        f.SetOutputPixelType(sitk.sitkFloat32)
        if transform is not None:
            f.SetTransform(transform)
        return f.Execute(image)
