"""brainseg.evaluate.metrics and brainseg.preprocessing.foreground on arrays with answers known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from brainseg.evaluate.metrics import check_spacing, dice, dice_per_class, hd95, side_confusion, surface_distances
from brainseg.preprocessing.foreground import bounding_box


def _cube(shape, lo, size) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, a + size) for a in lo)] = True
    return m


def _sphere(shape, centre_mm, radius_mm, spacing) -> np.ndarray:
    grid = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grid, centre_mm)) <= radius_mm**2


def test_dice_of_two_overlapping_cubes_is_exact():
    a = _cube((20, 20, 20), (2, 2, 2), 10)  # 1000 voxels
    b = _cube((20, 20, 20), (4, 2, 2), 10)  # moved 2 along x: 8 x 10 x 10 = 800 shared
    assert dice(a, b) == 2 * 800 / 2000
    assert dice(a, a) == 1.0
    assert dice(a, ~a) == 0.0


def test_dice_empty_conventions_and_shape_check():
    empty = np.zeros((5, 5, 5), dtype=bool)
    full = _cube((5, 5, 5), (1, 1, 1), 2)
    assert dice(empty, empty) == 1.0
    assert dice(empty, full) == 0.0 and dice(full, empty) == 0.0
    with pytest.raises(ValueError):
        dice(full, full[:4])


def test_dice_per_class_matches_dice_per_label():
    pred = np.zeros((6, 6, 6), dtype=np.uint8)
    ref = np.zeros((6, 6, 6), dtype=np.uint8)
    pred[:3], ref[:2] = 1, 1  # 108 vs 72 voxels, 72 shared
    pred[5, 5, 5] = 2  # label 2 only in pred; label 3 in neither
    out = dice_per_class(pred, ref, [1, 2, 3])
    assert out == {1: 2 * 72 / 180, 2: 0.0, 3: 1.0}


def test_hd95_of_a_shifted_sphere_on_anisotropic_spacing():
    spacing = (0.8, 1.0, 2.0)
    shape = (60, 50, 26)
    ref = _sphere(shape, (24.0, 25.0, 25.0), 12.0, spacing)
    pred = _sphere(shape, (24.0 + 4.0, 25.0, 25.0), 12.0, spacing)  # 4 mm along x = 5 voxels
    value = hd95(pred, ref, spacing)
    assert value == pytest.approx(4.0, abs=0.5)  # voxelised surfaces: not exactly 4
    assert hd95(ref, pred, spacing) == value  # symmetric
    assert hd95(ref, ref, spacing) == 0.0


def test_hd95_of_offset_cubes_in_whole_voxels():
    # B is A (8^3) moved by 3 voxels along axis 0, 2 mm voxels there: A's trailing face
    # (64 of its 296 surface voxels, more than 5 %) is 6 mm from B's leading face, and no
    # surface voxel of either is farther from the other surface, so HD95 is exactly 6 mm.
    a = _cube((20, 12, 12), (2, 2, 2), 8)
    b = _cube((20, 12, 12), (5, 2, 2), 8)
    d_ab, d_ba = surface_distances(a, b, (2.0, 1.0, 1.0))
    assert d_ab.size == d_ba.size == 296
    assert d_ab.max() == d_ba.max() == 6.0 and np.count_nonzero(d_ab == 6.0) == 64
    assert hd95(a, b, (2.0, 1.0, 1.0)) == 6.0


def test_hd95_empty_conventions():
    empty = np.zeros((6, 6, 6), dtype=bool)
    full = _cube((6, 6, 6), (1, 1, 1), 3)
    assert hd95(empty, empty, (1, 1, 1)) == 0.0
    assert math.isinf(hd95(empty, full, (1, 1, 1))) and math.isinf(hd95(full, empty, (1, 1, 1)))
    assert surface_distances(empty, full, (1, 1, 1)) is None


def test_spacing_is_checked():
    assert check_spacing([1, 2, 3], 3) == (1.0, 2.0, 3.0)
    for bad in ([1, 1], [1, 0, 1], [1, float("nan"), 1], [1, -1, 1]):
        with pytest.raises(ValueError):
            check_spacing(bad, 3)


def test_bounding_box_without_and_with_margin():
    m = np.zeros((10, 8, 6), dtype=bool)
    m[3:5, 2, 1:4] = True
    assert bounding_box(m) == (slice(3, 5), slice(2, 3), slice(1, 4))
    assert bounding_box(m, margin=2) == (slice(1, 7), slice(0, 5), slice(0, 6))  # clipped at 0 and 6
    assert np.array_equal(m[bounding_box(m)], m[3:5, 2:3, 1:4])


def test_bounding_box_at_the_array_borders_and_empty():
    m = np.zeros((5, 5, 5), dtype=bool)
    assert bounding_box(m) is None and bounding_box(m, margin=3) is None
    m[0, 0, 0] = m[4, 4, 4] = True
    full = (slice(0, 5),) * 3
    assert bounding_box(m) == full and bounding_box(m, margin=1) == full
    m[:] = False
    m[4, 0, 2] = True
    assert bounding_box(m, margin=10) == full
    assert bounding_box(m, margin=1) == (slice(3, 5), slice(0, 2), slice(1, 4))
    box = bounding_box(m, margin=1)
    assert all(type(s.start) is int and type(s.stop) is int for s in box)


def test_side_confusion_counts_voxels_given_the_other_hemisphere():
    ref = np.zeros((10, 4, 4), np.int16)
    ref[:5], ref[5:] = 2, 3  # left half 2, right half 3
    ref[:, 0] = 1  # an unlateralised label
    assert side_confusion(ref, ref, [(2, 3)]) == 0.0
    mirrored_wrong = ref[::-1].copy()  # flipped without swapping: every lateral voxel on the wrong side
    mirrored_wrong[:, 0] = 1
    assert side_confusion(mirrored_wrong, ref, [(2, 3)]) == 1.0
    pred = ref.copy()
    pred[4, 1:] = 3  # one slab of the left half called right: 12 of 120 lateral voxels
    assert side_confusion(pred, ref, [(2, 3)]) == pytest.approx(12 / 120)
    pred[6, 1:] = 0  # missed voxels are not confusion
    assert side_confusion(pred, ref, [(2, 3)]) == pytest.approx(12 / 120)
    assert side_confusion(np.zeros_like(ref), np.zeros_like(ref), [(2, 3)]) == 0.0
