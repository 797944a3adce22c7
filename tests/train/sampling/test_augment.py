"""Augmentation of patches: flips swap left and right, draws are seeded, intensities stay finite, labels keep their values."""

from __future__ import annotations

import numpy as np
import pytest

from brainseg.config import AugmentConfig
from brainseg.train.sampling import augment
from brainseg.train.sampling.patches import extract_patch


def test_bias_field_multiplies_raw_intensities_not_normalised_ones():
    """A bias field scales the scan's raw signal: in z-score units it scales about the value a
    raw 0 has (``-mean / std``), so an exact-zero background stays exactly where it was and
    every brain voxel keeps its sign of (x - raw zero); about 0 it would flip dark tissue's
    contrast instead. The field's level varies from patch to patch (a constant term)."""
    cfg = AugmentConfig(
        p_background_noise=0,
        p_lowres=0,
        p_noise=0,
        p_blur=0,
        p_brightness=0,
        p_contrast=0,
        p_gamma=0,
        p_bias=1.0,
        bias_strength=0.5,
    )
    raw = np.full((1, 32, 32, 32), 0.0, np.float32)
    raw[0, 4:28, 4:28, 4:28] = np.linspace(0.2, 1.0, 24**3, dtype=np.float32).reshape(24, 24, 24)
    mean, std = float(raw[raw > 0].mean()), float(raw[raw > 0].std())
    patch = (raw - mean) / std
    zero = -mean / std
    levels = []
    for seed in range(6):
        out = augment.intensity(patch, np.random.default_rng(seed), cfg, raw_zero=[zero])
        assert np.all(out[0][raw[0] == 0] == np.float32(zero))  # the background is not touched
        back = out * std + mean  # in raw units: the raw signal times a positive smooth field
        field = back[0, 4:28, 4:28, 4:28] / raw[0, 4:28, 4:28, 4:28]
        assert field.min() > 0  # positive everywhere: no voxel changes its side of the raw zero
        assert max(np.abs(np.diff(np.log(field), axis=a)).max() for a in range(3)) < 0.1  # smooth
        levels.append(float(np.log(field).mean()))
    assert np.std(levels) > 0.02, levels  # the level varies between patches
    about_zero = augment.intensity(patch, np.random.default_rng(0), cfg)  # the old reading: about 0
    assert not np.allclose(about_zero[0][raw[0] == 0], zero)


def test_background_noise_and_low_resolution_augmentations():
    cfg = AugmentConfig(
        p_background_noise=1.0, p_lowres=0.0, p_noise=0, p_blur=0, p_brightness=0, p_contrast=0, p_gamma=0, p_bias=0
    )
    patch = np.full((1, 8, 8, 8), -2.0, np.float32)
    patch[0, 2:6, 2:6, 2:6] = 1.0  # "brain"
    out = augment.intensity(patch, np.random.default_rng(0), cfg, background=[-2.0])
    assert np.all(out[0, 2:6, 2:6, 2:6] == 1.0)  # the brain is untouched
    bg = out[0][patch[0] == -2.0]
    assert np.all(bg >= -2.0) and bg.std() > 0.01  # Rayleigh noise only where the background was
    assert np.array_equal(augment.intensity(patch, np.random.default_rng(0), cfg, background=None), patch)
    low = augment.simulate_low_resolution(patch, [0.5, 0.5, 1.0])
    assert low.shape == patch.shape and np.isclose(low.mean(), patch.mean(), atol=0.05)
    assert not np.array_equal(low, patch)
    assert np.allclose(augment.simulate_low_resolution(np.full((1, 8, 8, 8), 3.0, np.float32), [0.5] * 3), 3.0)


ALL_INTENSITY = AugmentConfig(
    p_gamma=1.0,
    p_brightness=1.0,
    p_contrast=1.0,
    p_noise=1.0,
    p_blur=1.0,
    p_bias=1.0,
    p_background_noise=1.0,
    p_lowres=1.0,
)


def _hemispheres() -> tuple[np.ndarray, np.ndarray]:
    """A (1, 12, 10, 8) ramp image and its labels: 2 on the left half of axis 0, 3 on the right,
    1 in a block straddling the midline, 0 elsewhere."""
    image = np.arange(12 * 10 * 8, dtype=np.float32).reshape(1, 12, 10, 8)
    seg = np.zeros((12, 10, 8), np.uint8)
    seg[:6, 2:8, 2:6] = 2
    seg[6:, 2:8, 2:6] = 3
    seg[5:7, 4:6, 3:5] = 1
    return image, seg


def test_a_flip_of_axis_0_swaps_left_and_right_labels():
    image, seg = _hemispheres()
    swap = np.array([0, 1, 3, 2])  # class 2 <-> class 3 under a left-right flip
    cfg = AugmentConfig(p_flip=1.0)  # every axis flips
    out_img, out_seg = augment.flip(image, seg, np.random.default_rng(0), cfg, swap=swap)
    np.testing.assert_array_equal(out_img, np.flip(image, axis=(1, 2, 3)))
    np.testing.assert_array_equal(out_seg, swap[np.flip(seg, axis=(0, 1, 2))])
    # The left half now holds the flipped right half's label swapped: still 2 on the left.
    assert set(np.unique(out_seg[:6][out_seg[:6] > 1])) == {2}
    assert set(np.unique(out_seg[6:][out_seg[6:] > 1])) == {3}
    # Without a partner for a lateralised label, axis 0 is never flipped (and nothing swapped).
    kept_img, kept_seg = augment.flip(image, seg, np.random.default_rng(0), cfg, swap=swap, left_right=False)
    np.testing.assert_array_equal(kept_img, np.flip(image, axis=(2, 3)))
    np.testing.assert_array_equal(kept_seg, np.flip(seg, axis=(1, 2)))
    # Flipping twice gives the patch back.
    twice_img, twice_seg = augment.flip(out_img, out_seg, np.random.default_rng(0), cfg, swap=swap)
    np.testing.assert_array_equal(twice_img, image)
    np.testing.assert_array_equal(twice_seg, seg)


def test_the_same_seed_gives_the_same_augmentation_and_another_seed_another():
    image, seg = _hemispheres()
    patch = (image - image.mean()) / image.std()

    def draw(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        img, lab = augment.flip(patch, seg, rng, AugmentConfig(), swap=np.array([0, 1, 3, 2]))
        return img, lab, augment.intensity(img, rng, ALL_INTENSITY, background=[float(patch.min())])

    first, again, other = draw(7), draw(7), draw(8)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[2], other[2])
    assert augment.spatial_matrix(np.random.default_rng(3), AugmentConfig(p_rotate=1.0, p_scale=1.0)) == pytest.approx(
        augment.spatial_matrix(np.random.default_rng(3), AugmentConfig(p_rotate=1.0, p_scale=1.0))
    )


@pytest.mark.parametrize("seed", range(5))
def test_intensities_stay_finite_and_the_label_map_keeps_its_values(seed):
    image, seg = _hemispheres()
    patch = (image - image.mean()) / image.std()
    rng = np.random.default_rng(seed)
    out = augment.intensity(patch, rng, ALL_INTENSITY, background=[float(patch.min())], raw_zero=[-1.0])
    assert out.shape == patch.shape and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert not np.array_equal(out, patch)  # every augmentation fired
    np.testing.assert_array_equal(patch, (image - image.mean()) / image.std())  # the input is not modified
    # Spatial augmentation resamples the labels by nearest neighbour: no new (interpolated) label value.
    matrix = augment.spatial_matrix(rng, AugmentConfig(p_rotate=1.0, p_scale=1.0))
    assert matrix is not None
    img, lab = extract_patch(patch, seg, [6.0, 5.0, 4.0], [12, 10, 8], matrix)
    assert np.isfinite(img).all()
    assert set(np.unique(lab)) <= {0, 1, 2, 3} and lab.dtype == seg.dtype
    assert {2, 3} <= set(np.unique(lab))  # both hemispheres are still in the patch


@pytest.mark.parametrize("transform", ["brightness", "contrast", "gamma", "bias"])
def test_per_channel_draws_each_channels_parameters_on_its_own(transform):
    """``per_channel``: two identical channels come out different (each its own factor, gamma or
    field); without it one draw serves both and they stay identical, and the first channel is what
    a one-channel patch gets from the same seed (the draws are those of one channel)."""
    off = dict(p_background_noise=0, p_lowres=0, p_noise=0, p_blur=0, p_brightness=0, p_contrast=0, p_gamma=0)
    cfg = {**off, "p_bias": 0, f"p_{transform}": 1.0}
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, 16, 16, 16)).astype(np.float32)
    both = np.concatenate([one, one])
    for seed in range(3):
        shared = augment.intensity(both, np.random.default_rng(seed), AugmentConfig(**cfg))
        alone = augment.intensity(one, np.random.default_rng(seed), AugmentConfig(**cfg))
        assert np.array_equal(shared[0], shared[1]) and np.array_equal(shared[0], alone[0])
        apart = augment.intensity(both, np.random.default_rng(seed), AugmentConfig(**cfg, per_channel=True))
        assert not np.allclose(apart[0], apart[1]) and np.array_equal(apart[0], alone[0])
        assert np.isfinite(apart).all()
