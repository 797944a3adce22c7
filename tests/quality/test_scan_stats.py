"""What a scan looks like: the depth into the subject is computed on the subject's box and equals
the distance transform over the whole array, wherever the subject lies (inside, touching an edge,
filling everything, absent), on an anisotropic grid.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from brainseg.quality.scan_stats import depth_into

SPACING = (1.2, 0.9, 2.5)


def blob(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float64)
    return sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, SPACING)) < radius**2


@pytest.mark.parametrize(
    "mask",
    [
        blob((40, 50, 20), (20, 25, 10), 14.0),  # inside, background all round
        blob((40, 50, 20), (2, 25, 10), 14.0),  # cut by the first axis's low edge
        blob((40, 50, 20), (38, 48, 19), 20.0),  # a corner
        blob((40, 50, 20), (20, 25, 10), 14.0) | blob((40, 50, 20), (5, 5, 3), 4.0),  # two parts
        np.ones((12, 9, 7), bool),  # no background at all
        np.zeros((12, 9, 7), bool),  # no subject
    ],
)
def test_depth_on_the_box_equals_the_whole_array_transform(mask):
    whole = ndimage.distance_transform_edt(mask, sampling=SPACING) if mask.any() else np.zeros(mask.shape)
    got = depth_into(mask, SPACING)
    assert got.shape == mask.shape and np.array_equal(got, whole)
    assert not np.any(got[~mask])
