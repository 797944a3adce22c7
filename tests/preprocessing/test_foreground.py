"""Foreground on any scan, not only skull-stripped ones: background kinds, thresholds, bounding boxes.

Real files: demo subjects of both background kinds (made from the MNI template).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from brainseg.preprocessing.foreground import bounding_box, fill_holes, has_zero_background, threshold_mask


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


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_background_kind_is_decided_per_case(subjects):
    kinds = [has_zero_background(image[None]) for image, *_ in subjects]
    assert kinds == [True, False, False]


def test_threshold_foreground_is_the_brain_whatever_the_scale_and_offset(subjects):
    for image, labels, *_ in subjects[1:]:
        brain = labels > 0
        mask = threshold_mask(image[None])
        assert _dice(mask, brain) > 0.98
        rescaled = threshold_mask((image * 731.0 + 55.0)[None])
        assert _dice(rescaled, mask) > 0.999


def test_integer_noise_with_many_zeros_is_not_a_zero_background(subjects):
    image, labels, *_ = subjects[1]
    # an int16 scan whose noise floor rounds to 0 in about half the background voxels
    floor = image.min()  # the offset
    background_level = np.median(image[labels == 0]) - floor
    as_int = np.round((image - floor) / background_level * 0.7).astype(np.int16)
    assert 0.2 < np.mean(as_int[labels == 0] == 0) < 0.8
    assert not has_zero_background(as_int[None].astype(np.float32))
    # a skull-stripped scan with a few zero voxels inside the brain is still one
    stripped = subjects[0][0].copy()
    stripped[tuple(np.argwhere(subjects[0][1] == 3)[::50].T)] = 0
    assert has_zero_background(stripped[None])


def shell(shape=(20, 22, 18)) -> np.ndarray:
    """A hollow ball (a closed cavity inside) cut open by the first axis's border."""
    grid = np.indices(shape, dtype=np.float64)
    r = np.sqrt((grid[0] - 2.0) ** 2 + (grid[1] - 11.0) ** 2 + (grid[2] - 9.0) ** 2)
    inner = np.sqrt((grid[0] - 10.0) ** 2 + (grid[1] - 11.0) ** 2 + (grid[2] - 9.0) ** 2)
    return ((r < 15) & (r > 12)) | ((inner < 5) & (inner > 3))


@pytest.mark.parametrize("seed", range(4))
def test_fill_holes_is_scipys_binary_fill_holes(subjects, seed):
    """One labelling pass gives scipy's mask: random masks (many small holes, diagonal walls that do
    not close a hole), a cavity closed inside the volume, one open to the border, a real head's mask,
    a subject in a large empty frame and cut by the border."""
    rng = np.random.default_rng(seed)
    masks = [rng.random((17, 23, 19)) < p for p in (0.3, 0.55, 0.7)]
    masks += [shell(), np.zeros((5, 6, 7), bool), np.ones((5, 6, 7), bool), rng.random((40, 30)) < 0.6]
    masks.append(threshold_mask(subjects[1 + seed % 2][0][None]))
    framed = np.zeros((40, 44, 36), bool)  # a small subject in a large empty frame: only its box is labelled
    framed[5 + seed : 25 + seed, 9:31, 3:21] = shell()
    masks += [framed, framed[5 + seed :]]  # and the same cut open by the border
    for mask in masks:
        got = fill_holes(mask)
        assert got.dtype == bool and np.array_equal(got, ndimage.binary_fill_holes(mask))
    assert fill_holes(shell()).sum() > shell().sum()  # the closed cavity is filled, the open one not
