"""Patches: foreground-centred patches hold foreground, border patches are padded to the patch size, locations are honoured."""

from __future__ import annotations

import numpy as np
import pytest

from brainseg.labels.regions import BRATS_2021
from brainseg.train.sampling.patches import extract_patch, foreground_center, region_locations
from tests.conftest import BRATS_VALUES


@pytest.mark.parametrize(
    "matrix", [None, np.diag([1.2, 0.9, 1.1]), np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) * 1.1]
)
def test_patches_are_padded_with_the_background_value_per_channel(matrix):
    image = np.stack([np.full((10, 10, 10), -2.5, np.float32), np.full((10, 10, 10), -1.0, np.float32)])
    seg = np.zeros((10, 10, 10), np.uint8)
    img, lab = extract_patch(image, seg, [0.0, 0.0, 0.0], [12, 12, 12], matrix, fill=[-2.5, -1.0])
    np.testing.assert_allclose(img[0], -2.5, atol=1e-5)
    np.testing.assert_allclose(img[1], -1.0, atol=1e-5)
    zero_fill, _ = extract_patch(image, seg, [0.0, 0.0, 0.0], [12, 12, 12], matrix)
    assert np.isclose(zero_fill[0].max(), 0.0, atol=1e-5)  # without fill the outside reads 0


def test_foreground_centres_fall_in_a_present_region():
    locations = {1: np.array([[1, 1, 1]]), 2: np.array([[5, 5, 5], [6, 6, 6]]), 3: np.zeros((0, 3), dtype=np.int32)}
    table = BRATS_2021.class_table(BRATS_VALUES)  # class 3 = label 4 (ET), absent from this case
    regions = region_locations(locations, table)
    assert sorted(map(tuple, regions[0])) == [(1, 1, 1), (5, 5, 5), (6, 6, 6)]  # WT: classes 1, 2 (3 absent)
    assert sorted(map(tuple, regions[1])) == [(1, 1, 1)]  # TC: classes 1 and 3
    assert len(regions[2]) == 0  # ET absent: never chosen
    rng = np.random.default_rng(0)
    centres = {tuple(foreground_center(regions, rng) - 0.5) for _ in range(200)}
    assert centres == {(1, 1, 1), (5, 5, 5), (6, 6, 6)}


def _case() -> tuple[np.ndarray, np.ndarray]:
    """A (2, 20, 18, 16) image (a ramp and its negative) with a 3-voxel foreground blob in a corner."""
    ramp = np.arange(20 * 18 * 16, dtype=np.float32).reshape(20, 18, 16)
    seg = np.zeros((20, 18, 16), np.uint8)
    seg[15:17, 1:3, 12:14] = 1
    seg[16, 2, 13] = 2
    return np.stack([ramp, -ramp]), seg


@pytest.mark.parametrize("seed", range(10))
def test_a_foreground_centred_patch_contains_foreground(seed):
    image, seg = _case()
    locations = {c: np.argwhere(seg == c).astype(np.int32) for c in (1, 2)}
    rng = np.random.default_rng(seed)
    centre = foreground_center(locations, rng)
    assert tuple(np.floor(centre).astype(int)) in {tuple(v) for v in np.argwhere(seg > 0)}
    img, lab = extract_patch(image, seg, centre, [6, 6, 6])
    assert img.shape == (2, 6, 6, 6) and lab.shape == (6, 6, 6)
    assert lab[3, 3, 3] > 0  # the centre voxel of the patch is the foreground voxel chosen
    assert foreground_center({1: np.zeros((0, 3), np.int32)}, rng) is None  # no foreground: no centre


def test_patches_at_the_border_are_padded_to_the_patch_size():
    image, seg = _case()
    img, lab = extract_patch(image, seg, [0.0, 0.0, 0.0], [12, 12, 12], fill=[-7.0, 3.0])
    assert img.shape == (2, 12, 12, 12) and lab.shape == (12, 12, 12)
    # The patch spans -6..5 on each axis: its last 6 voxels are the case's first 6, the rest padding.
    np.testing.assert_array_equal(img[:, 6:, 6:, 6:], image[:, :6, :6, :6])
    np.testing.assert_array_equal(lab[6:, 6:, 6:], seg[:6, :6, :6])
    assert np.all(img[0, :6] == -7.0) and np.all(img[1, :, :6] == 3.0)
    assert np.all(lab[:6] == 0)
    # The opposite corner: the patch spans 15..22, 13..20, 11..18; 5 voxels a side lie inside.
    far, far_lab = extract_patch(image, seg, [19.5, 17.5, 15.5], [8, 8, 8])
    assert far.shape == (2, 8, 8, 8)
    np.testing.assert_array_equal(far[:, :5, :5, :5], image[:, 15:, 13:, 11:])
    np.testing.assert_array_equal(far_lab[:5, :5, :5], seg[15:, 13:, 11:])
    assert np.all(far[:, 5:] == 0) and np.all(far_lab[5:] == 0)


def test_explicit_locations_are_honoured():
    image, seg = _case()
    # A centre given in voxel-centre coordinates cuts exactly the box around it.
    img, lab = extract_patch(image, seg, [16.0, 2.0, 13.0], [4, 4, 4])
    np.testing.assert_array_equal(img, image[:, 14:18, 0:4, 11:15])
    np.testing.assert_array_equal(lab, seg[14:18, 0:4, 11:15])
    # Centres come only from the locations given, however many draws.
    locations = {1: np.array([[3, 4, 5], [10, 11, 12]], np.int32), 2: np.array([[7, 7, 7]], np.int32)}
    rng = np.random.default_rng(1)
    drawn = {tuple(foreground_center(locations, rng) - 0.5) for _ in range(300)}
    assert drawn == {(3, 4, 5), (10, 11, 12), (7, 7, 7)}
