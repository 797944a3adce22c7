"""Probabilities to labels: argmax with class offsets, region thresholds by class order, the enhancing-tumour rule."""

from __future__ import annotations

import numpy as np
import pytest

from brainseg.labels.regions import BRATS_2021, BRATS_2023
from brainseg.postprocess.decision import (
    innermost_rule,
    labels_within_input,
    probabilities_to_labels,
    regions_within_input,
)
from tests.conftest import BRATS_VALUES, tumour_label


def test_weights_move_the_argmax_towards_the_weighted_class():
    probs = np.array([0.5, 0.4, 0.1], dtype=np.float32).reshape(3, 1, 1, 1)
    nonzero = np.ones((1, 1, 1), dtype=bool)
    assert labels_within_input(probs, nonzero)[0, 0, 0] == 0
    assert labels_within_input(probs, nonzero, weights=np.exp([0.0, 0.4, 0.0]))[0, 0, 0] == 1
    assert labels_within_input(probs, nonzero, weights=np.exp([0.0, 0.2, 0.0]))[0, 0, 0] == 0
    # the input-mask rule still wins outside the scan's non-zero region
    assert labels_within_input(probs, ~nonzero, "restrict", np.exp([0.0, 0.4, 0.0]))[0, 0, 0] == 0


def test_probabilities_to_labels_argmax_and_dtype():
    rng = np.random.default_rng(0)
    probs = rng.random((4, 5, 6, 7)).astype(np.float32)
    labels = probabilities_to_labels(probs)
    assert labels.dtype == np.uint8
    assert labels.shape == (5, 6, 7)
    # Every voxel's label is the class with the highest score there.
    picked = np.take_along_axis(probs, labels[None].astype(np.intp), axis=0)[0]
    assert np.array_equal(picked, probs.max(axis=0))
    assert set(np.unique(labels)) == {0, 1, 2, 3}


def test_probabilities_to_labels_many_classes_use_int16():
    probs = np.zeros((300, 2, 2, 2), dtype=np.float32)
    probs[299, 0, 0, 0] = 1.0
    probs[5, 1, 1, 1] = 1.0
    labels = probabilities_to_labels(probs)
    assert labels.dtype == np.int16
    assert labels[0, 0, 0] == 299 and labels[1, 1, 1] == 5 and labels[0, 1, 0] == 0


def test_probabilities_to_labels_rejects_3d():
    with pytest.raises(ValueError):
        probabilities_to_labels(np.zeros((3, 4, 5)))


def test_regions_become_labels_by_class_order_within_the_input():
    label = tumour_label((20, 20, 20), (10, 10, 10), (7, 4, 2))
    probs = BRATS_2021.masks(label).astype(np.float32) * 0.9 + 0.05
    nonzero = np.ones(label.shape, dtype=bool)
    nonzero[:, :, :10] = False
    out = regions_within_input(probs, nonzero, "restrict", BRATS_2021, (0.5, 0.5, 0.5))
    expected = label.copy()
    expected[~nonzero] = 0
    assert np.array_equal(out, expected) and set(np.unique(out)) <= set(BRATS_VALUES)
    high = regions_within_input(probs, nonzero, "none", BRATS_2021, (0.5, 0.5, 0.96))  # ET never reaches 0.96
    assert 4 not in high and np.array_equal(high == 1, np.isin(label, (1, 4)))  # TC without ET: necrosis


def test_small_enhancing_tumour_becomes_core_large_stays_and_zero_is_off():
    spacing = (1.0, 1.0, 2.0)  # 2 mm^3 voxels
    small = tumour_label((24, 24, 24), (12, 12, 12), (8, 5, 1.5))  # ET: 19 voxels = 38 mm^3
    n_et = int((small == 4).sum())
    assert 0 < n_et * 2 < 100
    out = innermost_rule(small, spacing, BRATS_2021, 100.0)
    assert 4 not in out and np.array_equal(out == 1, np.isin(small, (1, 4)))  # ET -> TC's label (necrosis)
    assert np.array_equal(out == 2, small == 2)
    assert np.array_equal(innermost_rule(small, spacing, BRATS_2021, 0.0), small)  # 0 = off
    large = tumour_label((24, 24, 24), (12, 12, 12), (9, 7, 4))
    assert int((large == 4).sum()) * 2 >= 100
    assert np.array_equal(innermost_rule(large, spacing, BRATS_2021, 100.0), large)
    assert np.array_equal(innermost_rule(small, spacing, BRATS_2023, 100.0), small)  # 2023: ET is 3, absent here
