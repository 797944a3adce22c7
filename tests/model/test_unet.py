"""The U-Net: shapes, gradients, patch-size checks, and what the skip connections carry."""

from __future__ import annotations

import pytest
import torch

from brainseg.errors import BrainsegError
from brainseg.model import UNet3D, feature_list


@pytest.mark.parametrize("levels", [1, 2, 3, 4, 5])
def test_shapes_and_gradients_for_several_depths(levels):
    torch.manual_seed(0)
    net = UNet3D(in_channels=2, num_classes=3, levels=levels, base_features=4, max_features=16)
    x = torch.randn(2, 2, 19, 24, 17, requires_grad=True)  # odd sizes: upsampling matches the skip
    y = net(x)
    assert y.shape == (2, 3, 19, 24, 17)
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_feature_list_is_capped_and_decoder_follows_encoder():
    assert feature_list(6, 32, 320) == [32, 64, 128, 256, 320, 320]
    net = UNet3D(1, 2, levels=4, base_features=8, max_features=32)
    assert net.features == [8, 16, 32, 32]
    # each decoder block takes skip + upsampled channels of its level
    for i, block in enumerate(net.decoder):
        assert block[0].in_channels == 2 * net.features[i]
        assert block[0].out_channels == net.features[i]


def test_deep_supervision_returns_one_output_per_decoder_level():
    net = UNet3D(1, 4, levels=4, base_features=4, deep_supervision=True).train()
    outs = net(torch.randn(1, 1, 32, 32, 32))
    assert [tuple(o.shape[2:]) for o in outs] == [(32, 32, 32), (16, 16, 16), (8, 8, 8)]
    net.eval()
    assert net(torch.randn(1, 1, 32, 32, 32)).shape == (1, 4, 32, 32, 32)


def test_patch_size_the_levels_cannot_divide_is_a_clear_error():
    net = UNet3D(1, 2, levels=4, base_features=4)
    net.check_patch_size([64, 32, 16])
    with pytest.raises(BrainsegError, match=r"multiples of \[8, 8, 8\]"):
        net.check_patch_size([64, 60, 64])


def test_per_axis_strides_and_kernels_pool_the_coarse_axis_later():
    """An anisotropic plan: the third axis is pooled once (stride 1 in the first two
    downsamplings) and has kernel 1 at the finest level; the output matches the input."""
    strides = [[2, 2, 1], [2, 2, 1], [2, 2, 2]]
    kernels = [[3, 3, 1], [3, 3, 1], [3, 3, 3], [3, 3, 3]]
    net = UNet3D(1, 3, levels=4, base_features=4, strides=strides, kernels=kernels)
    assert net.divisor == (8, 8, 2)
    assert net.encoder[0][0].kernel_size == (3, 3, 1) and net.encoder[1][0].stride == (2, 2, 1)
    assert net.upsample[0].stride == (2, 2, 1) and net.upsample[2].stride == (2, 2, 2)
    net.check_patch_size([32, 32, 6])
    with pytest.raises(BrainsegError, match=r"multiples of \[8, 8, 2\]"):
        net.check_patch_size([32, 32, 5])
    assert net(torch.zeros(1, 1, 32, 32, 6)).shape == (1, 3, 32, 32, 6)
    assert net.hparams["strides"] == strides and net.hparams["kernels"] == kernels
    with pytest.raises(BrainsegError, match="model.strides"):
        UNet3D(1, 3, levels=4, strides=[[2, 2, 2]])


def test_skip_switch_removes_the_concatenation():
    net = UNet3D(1, 2, levels=3, base_features=4, skip_mode="none")
    for i, block in enumerate(net.decoder):
        assert block[0].in_channels == net.features[i]


def _fit_fine_detail(skips: bool, steps: int = 120) -> float:
    """Learn a voxel-scale rule (label = input > 0) and return Dice on a fresh volume.

    Every step sees new random volumes, so nothing can be memorised: only a network
    whose full-resolution features reach the output (through the skips) can apply
    the rule voxel by voxel; the cut network sees the input only through 4x
    downsampling.
    """
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    net = UNet3D(1, 2, levels=3, base_features=4, max_features=16, skip_mode="concat" if skips else "none")
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        x = torch.randn(2, 1, 16, 16, 16, generator=g)
        target = (x[:, 0] > 0).long()  # a decision per voxel, from that voxel alone
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), target)
        loss.backward()
        opt.step()
    x = torch.randn(1, 1, 16, 16, 16, generator=g)
    target = (x[:, 0] > 0).long()
    with torch.no_grad():
        pred = net.eval()(x).argmax(1)
    inter = ((pred == 1) & (target == 1)).sum().item()
    return 2 * inter / ((pred == 1).sum().item() + (target == 1).sum().item())


def test_skips_carry_fine_detail_that_the_cut_network_cannot_fit():
    with_skips = _fit_fine_detail(skips=True)
    without = _fit_fine_detail(skips=False)
    assert with_skips > 0.95, with_skips
    assert without < 0.8, without
    assert with_skips - without > 0.2
