"""SimpleITK images in brainseg's conventions: the one LPS-to-RAS conversion, (x, y, z) arrays.

ITK reports a header in the LPS world (origin, direction cosines as columns, spacing) and
hands voxels out as (z, y, x) arrays; brainseg's :class:`~brainseg.io.images.Geometry`
holds a RAS affine and arrays are in (x, y, z) order. Every SimpleITK read (``.mha``,
``.nrrd``, a DICOM series) goes through these two functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ItkHeader:
    """An ITK image's size (x, y, z), components per voxel and LPS geometry."""

    size: tuple[int, ...]
    components: int
    spacing: Sequence[float]
    direction: Sequence[float]  # row-major 3x3: its columns are the array axes' directions
    origin: Sequence[float]

    @classmethod
    def of(cls, reader: Any) -> ItkHeader:
        """The header of a SimpleITK reader (after ``ReadImageInformation``) or image."""
        return cls(
            size=tuple(int(s) for s in reader.GetSize()),
            components=int(reader.GetNumberOfComponents()) if hasattr(reader, "GetNumberOfComponents") else 1,
            spacing=tuple(float(v) for v in reader.GetSpacing()),
            direction=tuple(float(v) for v in reader.GetDirection()),
            origin=tuple(float(v) for v in reader.GetOrigin()),
        )

    def ras_affine(self) -> np.ndarray:
        """The voxel-to-world affine in RAS+ millimetres (nibabel's convention)."""
        lps_to_ras = np.diag([-1.0, -1.0, 1.0])
        affine = np.eye(4)
        direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        affine[:3, :3] = lps_to_ras @ direction @ np.diag(np.asarray(self.spacing, dtype=np.float64))
        affine[:3, 3] = lps_to_ras @ np.asarray(self.origin, dtype=np.float64)
        return affine


def array_xyz(image: Any, shape: Sequence[int]) -> np.ndarray:
    """A SimpleITK image's voxels as float32 in (x, y, z[, c]) order, reshaped to ``shape``."""
    import SimpleITK as sitk

    arr = np.asarray(sitk.GetArrayFromImage(image), dtype=np.float32)  # (z, y, x[, c])
    arr = np.transpose(arr, (2, 1, 0) + ((3,) if arr.ndim == 4 else ()))
    return np.ascontiguousarray(arr).reshape(tuple(shape))
