"""Foreground, normalisation and padding that hold on any scan, not only skull-stripped ones.

Real files and real models: demo subjects of both background kinds (made from the MNI
template), NIfTI written to tmp_path, the tiny checkpoint of conftest.
"""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import torch

from brainseg.config import AugmentConfig, load_config
from brainseg.infer.sliding_window import SlidingWindow
from brainseg.io.images import Geometry, write_image
from brainseg.preprocessing.foreground import far_background, has_zero_background, threshold_mask
from brainseg.preprocessing.preprocess import preprocess
from brainseg.train.sampling import augment
from brainseg.train.sampling.patches import extract_patch

pytest.importorskip("nilearn")
demo = pytest.importorskip("brainseg.demo.tissue")
mni = pytest.importorskip("brainseg.demo.template")


@pytest.fixture(scope="module")
def subjects():
    """Subjects 0-2 of seed 11: 0 skull-stripped, 1 and 2 with noise over the field of view."""
    template = mni.load_template()
    brain = (template.t1 > 0).astype(np.float32)
    return [demo.make_subject(template, brain, 11, i) for i in range(3)]


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


def test_normalisation_is_the_same_with_and_without_background_noise(subjects):
    """A noisy-background scan normalises its brain like the same brain skull-stripped."""
    image, labels, geometry, _ = subjects[1]
    stripped = np.where(labels > 0, image, 0).astype(np.float32)
    a, lab_a, rec_a = preprocess(image[None], geometry, [1.5] * 3, label=labels)
    b, lab_b, rec_b = preprocess(stripped[None], geometry, [1.5] * 3, label=labels)
    assert (rec_a.zero_background, rec_b.zero_background) == (False, True)
    assert abs(rec_a.norm_mean[0] - rec_b.norm_mean[0]) < 0.1 * rec_b.norm_std[0]
    assert abs(rec_a.norm_std[0] / rec_b.norm_std[0] - 1) < 0.1
    # every voxel is normalised: background of the stripped scan is one constant, recorded
    assert np.all(b[0][lab_b == 0][:100] == np.float32(rec_b.background[0]))
    assert rec_b.background[0] < -1.0  # below the brain's mean, as raw 0 is
    assert rec_a.background[0] < -1.0 and np.std(a[0][lab_a == 0]) > 0.01  # noise stays noise
    # noise farther than the margin from the foreground is one constant (the recorded
    # background), found again by far_background, and never within the brain
    far = far_background(a, rec_a.background, rec_a.far_constant)
    assert 0.05 < far.mean() < 0.9 and not far[lab_a > 0].any()
    assert np.all(a[0][far] == np.float32(rec_a.background[0]))
    assert far_background(b, rec_b.background, rec_b.far_constant) is None
    # the crop keeps the whole brain with a margin on the noisy scan
    for axis, (lo, hi) in enumerate(rec_a.bbox):
        brain_ras = lab_a > 0
        assert brain_ras.any(axis=tuple(i for i in range(3) if i != axis)).sum() <= hi - lo


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


def test_sliding_window_pads_with_the_background_value():
    class WindowMean(torch.nn.Module):  # each output voxel is its window's mean: sees the padding
        def forward(self, x):
            return x.mean(dim=(2, 3, 4), keepdim=True).expand(-1, 2, *x.shape[2:]).clone()

    image = torch.full((1, 20, 20, 20), -2.0)
    sw = SlidingWindow(WindowMean(), [16, 16, 16], 2, margin=0.25)
    torch.testing.assert_close(sw(image, pad_value=[-2.0]), torch.full((2, 20, 20, 20), -2.0))
    assert sw(image).max() > -1.9  # zero padding pulls the windows' means up


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


def test_input_mask_rule_applies_only_to_zero_background_scans(subjects, tiny_checkpoint, tmp_path):
    """``input_mask: fill`` forces a foreground label wherever the scan is non-zero: on a noisy
    scan that would be everywhere, so there it is not applied (same masks as ``none``)."""
    scans = tmp_path / "scans"
    halved = {}  # every other voxel (twice the voxel size): the same rule, an eighth of the windows
    for name, (image, _, geometry, _) in zip(("stripped", "noisy"), subjects[:2]):
        affine = geometry.affine.copy()
        affine[:3, :3] *= 2.0
        halved[name] = np.ascontiguousarray(image[::2, ::2, ::2])
        write_image(scans / f"{name}_0000.nii.gz", halved[name], Geometry(halved[name].shape, affine))
    outs = {}
    for mode in ("fill", "none"):
        outs[mode] = tmp_path / mode
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "brainseg",
                "predict",
                "--model",
                str(tiny_checkpoint),
                "--input",
                str(scans),
                "--output",
                str(outs[mode]),
                "--device",
                "cpu",
                "--no-progress",
                "--set",
                f"postprocess.input_mask={mode}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
    import nibabel as nib

    masks = {
        m: {c: np.asarray(nib.load(str(outs[m] / f"{c}.nii.gz")).dataobj) for c in ("stripped", "noisy")} for m in outs
    }
    assert np.array_equal(masks["fill"]["noisy"], masks["none"]["noisy"])
    assert not np.array_equal(masks["fill"]["stripped"], masks["none"]["stripped"])
    assert np.all(masks["fill"]["stripped"][halved["stripped"] == 0] == 0)
    with open(outs["fill"] / "volumes.csv") as fh:
        rows = {r["case"]: r for r in csv.DictReader(fh)}
    assert rows["stripped"]["background"] == "zero" and rows["noisy"]["background"] == "noise"


def test_config_has_the_new_augmentations():
    cfg = load_config(None, ["augment.p_lowres=0.5", "augment.background_noise_std=[0.1, 0.2]"])
    assert cfg.augment.p_lowres == 0.5 and cfg.augment.background_noise_std == [0.1, 0.2]


def test_quantile_normalisation_undoes_monotone_intensity_changes(subjects):
    """The rank-based z-score gives (nearly) the same brain whatever scale, offset and gamma
    the scan has; the plain z-score does not undo a gamma."""
    from brainseg.preprocessing.normalisation import normalise

    image, labels, *_ = subjects[0]
    brain = labels > 0
    changed = (np.power(image / image.max(), 1.5) * 900.0 + 40.0) * brain
    ref, *_ = normalise(image[None], brain, "quantile")
    out, _, _, raw_zero = normalise(changed[None].astype(np.float32), brain, "quantile")
    q_err = np.abs(out[0][brain] - ref[0][brain]).mean()
    z_ref, *_ = normalise(image[None], brain, "zscore")
    z_out, *_ = normalise(changed[None].astype(np.float32), brain, "zscore")
    z_err = np.abs(z_out[0][brain] - z_ref[0][brain]).mean()
    assert q_err < 0.02 and q_err < 0.5 * z_err, (q_err, z_err)
    # a raw 0 becomes exactly the value of the volume's zeros (patch padding, background noise)
    assert np.all(out[0][~brain] == raw_zero[0]) and raw_zero[0] < -2.0
    with pytest.raises(ValueError, match="unknown normalization"):
        normalise(image[None], brain, "minmax")
