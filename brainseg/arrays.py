"""Small numpy helpers shared by the library's layers (numpy only; imports nothing from brainseg)."""

from __future__ import annotations

import numpy as np


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """The bounding box of a boolean mask as one slice per axis, or None when it is empty.

    The box is grown by ``margin`` voxels on every side and clipped to the array, so
    ``mask[bounding_box(mask, m)]`` always works; its bounds are plain ints.
    """
    mask = np.asarray(mask)
    slices = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        if hit.size == 0:
            return None
        lo = max(int(hit[0]) - margin, 0)
        hi = min(int(hit[-1]) + 1 + margin, int(mask.shape[axis]))
        slices.append(slice(lo, hi))
    return tuple(slices)
