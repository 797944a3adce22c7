"""What a scan looks like: the depth into the subject is computed on the subject's box and equals
the distance transform over the whole array, wherever the subject lies (inside, touching an edge,
filling everything, absent), on an anisotropic grid; a scan too large to measure whole is measured
on every k-th voxel and gives the whole-resolution figures, skull-stripped or in noise.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from brainseg.io.images import Geometry
from brainseg.preprocessing.foreground import bounding_box
from brainseg.quality.scan_stats import (
    STATS_VOXELS,
    channel_stats,
    decimation,
    depth_into,
    scan_foreground,
    scan_statistics,
)

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


def test_decimation_leaves_at_most_the_budget():
    assert decimation((64, 64, 64)) == 1
    for shape in [(128, 128, 128), (197, 233, 189), (256, 256, 256), (512, 512, 40)]:
        k = decimation(shape)
        assert np.prod(shape) / k**3 <= STATS_VOXELS < np.prod(shape) / (k - 1) ** 3


def head(shape, noisy: bool, seed: int = 0) -> np.ndarray:
    """A T1-like head: brighter with depth into an ellipsoid, in exact zeros or in Rician-like noise."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    radii = [0.4 * n for n in shape]
    q = np.sqrt(sum(((g - n / 2) / r) ** 2 for g, n, r in zip(grid, shape, radii)))
    inside = q < 1
    image = np.where(inside, 300 + 500 * (1 - q) + rng.normal(0, 20, shape), 0).astype(np.float32)
    if noisy:
        image += np.abs(rng.normal(0, 15, shape)).astype(np.float32)
    return image[None]


@pytest.mark.parametrize("noisy", [False, True])
def test_a_large_scan_measured_on_every_kth_voxel_gives_the_whole_resolution_figures(noisy):
    shape, spacing = (136, 150, 120), (1.0, 0.9, 1.1)
    data = head(shape, noisy)
    assert decimation(shape) == 2
    geom = Geometry(affine=np.diag([*spacing, 1.0]), shape=shape)
    channels, extent, foreground = scan_statistics(data, geom)
    assert foreground.shape == tuple((n + 1) // 2 for n in shape)
    # the same measures at full resolution
    full, zero_bg = scan_foreground(data)
    assert zero_bg == (not noisy)
    reference = channel_stats(data[0], full, zero_bg, depth_into(full, spacing))
    box = bounding_box(full)
    full_extent = [(s.stop - s.start) * d for s, d in zip(box, spacing)]
    assert np.allclose(extent, full_extent, atol=2 * max(spacing) + 1e-6)
    got = channels[0]
    assert got.zero_background == reference.zero_background
    assert got.depth_correlation > 0.8 and abs(got.depth_correlation - reference.depth_correlation) < 0.02
    assert np.allclose(got.profile, reference.profile, atol=0.01)
    assert abs(got.mean - reference.mean) < 0.01 * reference.mean
