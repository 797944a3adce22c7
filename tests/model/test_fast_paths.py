"""The fast implementations compute what the plain ones do (to float rounding).

Each speed-up of issue 5 replaced a straightforward computation by a cheaper one; these
tests hold them to the straightforward version on random data (seconds in total).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from brainseg.model.fast_paths import InstanceNormLeakyReLU, fold_batch_norm, fuse_instance_norm
from brainseg.model.unet import UNet3D
from brainseg.train.sampling import augment, patches


@pytest.mark.parametrize("shape", [(40, 33, 28), (5, 1, 7), (2, 3, 9)])
@pytest.mark.parametrize("sigma", [0.2, 0.5, 0.8, 1.0])
def test_gaussian_blur_is_scipys_nearest_mode_filter(shape, sigma):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    expected = ndimage.gaussian_filter(x, sigma, mode="nearest", truncate=2.0)
    got = augment.gaussian_blur(x, sigma)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, expected, atol=2e-6)


def test_power_matches_numpy_and_keeps_zero():
    x = np.random.default_rng(1).random((20, 20, 20)).astype(np.float32)
    x[0] = 0.0
    for gamma in (0.7, 1.0, 1.5):
        got = augment._power(x, gamma)
        np.testing.assert_allclose(got, x ** np.float32(gamma), rtol=1e-5, atol=1e-7)
        assert not got[0].any()


def test_scaling_only_patches_match_the_general_resampling_path():
    """A diagonal matrix takes the separable path; a rotation by 1e-12 rad the grid_sample one."""
    rng = np.random.default_rng(2)
    image = rng.standard_normal((2, 30, 26, 22)).astype(np.float32)
    seg = rng.integers(0, 4, (30, 26, 22)).astype(np.uint8)
    for trial in range(20):
        patch = [int(v) for v in rng.choice([8, 12, 20, 40], 3)]
        center = rng.uniform(-10, 40, 3) if trial % 3 == 0 else patches.random_center(seg.shape, patch, rng)
        scale = rng.uniform(0.5, 2.0)
        diagonal = np.eye(3) * scale
        general = diagonal.copy()
        general[0, 1] = 1e-12
        img_a, lab_a = patches.extract_patch(image, seg, center, patch, diagonal)
        img_b, lab_b = patches.extract_patch(image, seg, center, patch, general)
        assert img_a.shape == img_b.shape == (2, *patch) and lab_a.dtype == lab_b.dtype == np.uint8
        np.testing.assert_allclose(img_a, img_b, atol=1e-4)
        assert (lab_a != lab_b).mean() < 1e-3  # nearest: only exact half-voxel ties may round apart


def test_fused_instance_norm_is_the_same_network_and_shares_its_weights():
    torch.manual_seed(0)
    model = UNet3D(1, 3, levels=3, base_features=4).eval()
    fused = fuse_instance_norm(model)
    assert any(isinstance(m, InstanceNormLeakyReLU) for m in fused.modules())
    assert not any(isinstance(m, InstanceNormLeakyReLU) for m in model.modules())  # the original is untouched
    assert all(a is b for a, b in zip(model.parameters(), fused.parameters()))
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.inference_mode():
        for memory_format in (torch.contiguous_format, torch.channels_last_3d):
            xm = x.contiguous(memory_format=memory_format)
            torch.testing.assert_close(fused(xm), model(xm), atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        model.encoder[0][0].weight.mul_(2.0)  # a later weight update is seen by the fused view
        torch.testing.assert_close(fused(x), model(x), atol=1e-5, rtol=1e-4)


def test_folded_batch_norm_is_the_same_network_in_eval_mode():
    torch.manual_seed(0)
    model = UNet3D(1, 3, levels=3, base_features=4, norm="batch")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):  # non-trivial running statistics and affine parameters
        loss = model(torch.randn(2, 1, 16, 16, 16) * 3 + 1).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert fold_batch_norm(model) is model  # training mode: batch statistics, nothing to fold
    model.eval()
    folded = fold_batch_norm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm3d) for m in model.modules()) == 2 * (3 + 2)  # untouched
    x = torch.randn(2, 1, 20, 16, 12) * 2 + 0.5
    with torch.inference_mode():
        for memory_format in (torch.contiguous_format, torch.channels_last_3d):
            model.to(memory_format=memory_format)
            view = fold_batch_norm(model)
            xm = x.contiguous(memory_format=memory_format)
            torch.testing.assert_close(view(xm), model(xm), atol=1e-4, rtol=1e-4)


def test_inversion_in_slabs_matches_the_full_inverse():
    """Any slab size gives the values invert_to_original gives (background one-hot outside the region)."""
    from brainseg.preprocessing.preprocess import PreprocessRecord, invert_region_slabs, invert_to_original

    rng = np.random.default_rng(3)
    for trial in range(30):
        ras = [int(v) for v in rng.integers(5, 25, 3)]
        res = (
            list(ras) if trial % 5 == 0 else [max(1, int(round(r * f))) for r, f in zip(ras, rng.uniform(0.3, 2.5, 3))]
        )
        bbox = [sorted(int(v) for v in rng.choice(np.arange(n + 1), 2, replace=False)) for n in res]
        scores = torch.softmax(torch.randn(3, *[b - a for a, b in bbox]), dim=0)
        record = PreprocessRecord(
            original_shape=ras,
            ornt=[[0, 1], [1, 1], [2, 1]],
            ras_shape=ras,
            ras_spacing=[n / r for n, r in zip(res, ras)],
            target_spacing=[1.0] * 3,
            resampled_shape=res,
            bbox=bbox,
            norm_mean=[0.0],
            norm_std=[1.0],
        )
        expected = invert_to_original(scores, record).permute(1, 2, 3, 0)
        got = torch.zeros_like(expected)
        got[..., 0] = 1.0
        for slab, where in invert_region_slabs(scores, record, max_elements=int(rng.integers(1, 2000))):
            got[where] = slab
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)
