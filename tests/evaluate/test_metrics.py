"""brainseg.evaluate.metrics (Dice, HD95, BraTS region scores) on arrays with answers known by hand, and against MONAI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from brainseg.evaluate.metrics import (
    BRATS_HD95_PENALTY_MM,
    check_spacing,
    dice,
    dice_per_class,
    hd95,
    region_scores,
    side_confusion,
    surface_distances,
)
from brainseg.labels.regions import BRATS_2021, BRATS_2023


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


def _offset_cubes() -> tuple[np.ndarray, np.ndarray]:
    """Two 4x4x4 cubes, the second shifted by 2 voxels along axis 0."""
    a = np.zeros((12, 10, 10), dtype=bool)
    a[2:6, 2:6, 2:6] = True
    b = np.zeros_like(a)
    b[4:8, 2:6, 2:6] = True
    return a, b


def test_dice_offset_cubes_by_counting():
    a, b = _offset_cubes()
    # |A| = |B| = 64, overlap = x in {4, 5} x 4 x 4 = 32 -> 2*32 / 128.
    assert dice(a, b) == pytest.approx(0.5)
    b_far = np.roll(b, 3, axis=0)  # now x in 7..10: no overlap
    assert dice(a, b_far) == 0.0
    assert dice(a, a) == 1.0


def test_dice_empty_convention_is_monai_ignore_empty_false():
    from monai.metrics import DiceMetric

    empty = torch.zeros((1, 2, 4, 4, 4))
    empty[:, 0] = 1  # all background, class 1 empty in both
    ours = dice(np.zeros((4, 4, 4), bool), np.zeros((4, 4, 4), bool))
    strict = DiceMetric(include_background=False, reduction="none", ignore_empty=False)
    default = DiceMetric(include_background=False, reduction="none")
    assert float(strict(empty, empty)[0, 0]) == ours
    assert math.isnan(float(default(empty, empty)[0, 0]))  # what our docstring warns about


@pytest.mark.parametrize("s0", [2.0, 0.5, 3.0])
def test_hd95_offset_cubes_anisotropic(s0):
    a, b = _offset_cubes()
    assert hd95(a, b, (s0, 1.0, 1.0)) == pytest.approx(2 * s0)
    assert hd95(b, a, (s0, 1.0, 1.0)) == pytest.approx(2 * s0)


def test_hd95_spacing_applies_to_the_right_axis():
    a, b = _offset_cubes()
    # The shift is along axis 0; stretching axis 2 must not change it.
    assert hd95(a, b, (1.0, 1.0, 3.0)) == pytest.approx(2.0)


def test_hd95_interpolates_the_percentile():
    pred = np.zeros((12, 12, 12), dtype=bool)
    pred[5, 5, 5] = True
    ref = pred.copy()
    ref[5, 5, 9] = True
    # pred -> ref: {0}. ref -> pred: {0, 4 voxels * 0.5 mm = 2 mm};
    # 95th percentile of [0, 2] with linear interpolation = 0.95 * 2.
    assert hd95(pred, ref, (1.0, 1.0, 0.5)) == pytest.approx(1.9)


def test_hd95_ignores_one_outlier_voxel():
    ref = np.zeros((24, 24, 24), dtype=bool)
    ref[2:6, 2:6, 2:6] = True
    pred = ref.copy()
    pred[20, 20, 20] = True  # ~26 mm away, 1 of 57 pred surface voxels
    # pred -> ref: 56 zeros then one large value; rank 0.95 * 56 = 53.2 is still 0.
    assert hd95(pred, ref, (1.0, 1.0, 1.0)) == 0.0
    # A crude max-distance Hausdorff would not have ignored it:
    pred[19:22, 19:22, 19:22] = True  # now 26 of 82 surface voxels are far
    assert hd95(pred, ref, (1.0, 1.0, 1.0)) > 20.0


def test_hd95_crop_matches_whole_volume_transform():
    """The bounding-box shortcut gives the same answer as whole-volume transforms."""
    rng = np.random.default_rng(3)
    shape = (40, 30, 20)
    spacing = (0.8, 1.3, 2.1)
    pred = ndimage.gaussian_filter(rng.random(shape), 2) > 0.52
    ref = ndimage.gaussian_filter(rng.random(shape), 2) > 0.52
    pred[0, :, :] = True  # touch the volume border too

    def surface(m):
        return m & ~ndimage.binary_erosion(m)

    sp, sr = surface(pred), surface(ref)
    d1 = ndimage.distance_transform_edt(~sr, sampling=spacing)[sp]
    d2 = ndimage.distance_transform_edt(~sp, sampling=spacing)[sr]
    expected = max(np.percentile(d1, 95), np.percentile(d2, 95))
    assert expected > 0
    assert hd95(pred, ref, spacing) == pytest.approx(expected, rel=1e-12)


def test_region_scores_follow_the_brats_conventions():
    assert BRATS_HD95_PENALTY_MM == round(math.sqrt(240**2 + 240**2 + 155**2), 2)
    ref = np.zeros((20, 20, 20), dtype=np.uint8)
    ref[5:15, 5:15, 5:15] = 2  # oedema
    ref[8:12, 8:12, 8:12] = 4  # enhancing core, no necrosis
    scores = region_scores(ref, ref, BRATS_2021, (1, 1, 1))
    assert scores == {"WT": (1.0, 0.0), "TC": (1.0, 0.0), "ET": (1.0, 0.0)}
    # the prediction calls the core necrosis: TC right, ET missed (one empty -> Dice 0, the penalty)
    pred = ref.copy()
    pred[pred == 4] = 1
    scores = region_scores(pred, ref, BRATS_2021, (1, 1, 1))
    assert scores["WT"] == (1.0, 0.0) and scores["TC"] == (1.0, 0.0) and scores["ET"] == (0.0, 373.13)
    # both without ET: Dice 1, HD95 0
    no_et = np.where(ref == 4, 1, ref).astype(np.uint8)
    assert region_scores(no_et, no_et, BRATS_2021, (1, 1, 1))["ET"] == (1.0, 0.0)
    # a shifted WT: the plain metrics on the region masks, the spacing applied
    shifted = np.roll(ref, 2, axis=0)
    scores = region_scores(shifted, ref, BRATS_2021, (2.0, 1.0, 1.0))
    wt_p, wt_r = shifted > 0, ref > 0
    assert scores["WT"] == (dice(wt_p, wt_r), hd95(wt_p, wt_r, (2.0, 1.0, 1.0)))
    assert scores["WT"][0] == pytest.approx(0.8) and scores["WT"][1] == pytest.approx(4.0)
    # BraTS 2023 writes ET as 3; 2021's regions would not see it
    ref23 = np.where(ref == 4, 3, ref).astype(np.uint8)
    assert region_scores(ref23, ref23, BRATS_2023, (1, 1, 1))["ET"] == (1.0, 0.0)
    assert region_scores(ref23, ref, BRATS_2021, (1, 1, 1))["ET"] == (0.0, 373.13)
    assert region_scores(pred, ref, BRATS_2021, (1, 1, 1), penalty_mm=99.0)["ET"] == (0.0, 99.0)
