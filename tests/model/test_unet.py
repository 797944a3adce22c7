"""The U-Net: shapes, gradients, patch-size checks, and what the skip connections carry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainseg.config import load_config
from brainseg.errors import BrainsegError
from brainseg.model import UNet3D, feature_list
from brainseg.model.checkpoint import load_model, save_checkpoint
from brainseg.model.unet import _low_pass


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


# ---- test_skip_modes_tmp.py: The U-Net's skip modes: shapes and gradients, what low-pass skips can carry, old configs and cards.
JOIN_CLASSES = {"concat": "ConcatJoin", "none": "SkipJoin", "add": "AddJoin", "lowpass": "LowPassJoin"}


# ----------------------------------------------------------------------------- skip modes


@pytest.mark.parametrize("mode", ["concat", "none", "add", "lowpass"])
def test_every_skip_mode_keeps_shapes_and_gradients(mode):
    torch.manual_seed(0)
    net = UNet3D(1, 3, levels=4, base_features=4, max_features=16, skip_mode=mode)
    x = torch.randn(2, 1, 19, 24, 17, requires_grad=True)  # odd sizes: pooling and matching still fit
    y = net(x)
    assert y.shape == (2, 3, 19, 24, 17)
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    doubled = mode in ("concat", "lowpass")
    assert [b[0].in_channels for b in net.decoder] == [f * (2 if doubled else 1) for f in net.features[:-1]]
    assert net.hparams["skip_mode"] == mode and "skip_connections" not in net.hparams
    assert [type(j).__name__ for j in net.joins] == [JOIN_CLASSES[mode]] * 3  # chosen once, at construction


def test_low_pass_skips_reach_the_decoder_at_the_bottleneck_resolution_only():
    checker = torch.from_numpy(np.indices((8, 8, 8)).sum(0) % 2 * 2.0 - 1.0).float()[None, None]
    assert torch.allclose(_low_pass(checker, 2), torch.zeros_like(checker), atol=1e-6)  # voxel detail: gone
    ramp = torch.linspace(0, 1, 8).expand(8, 8, 8).contiguous()[None, None]
    assert _low_pass(ramp, 4).std() > 0.2  # coarse structure: kept

    torch.manual_seed(0)
    net = UNet3D(1, 2, levels=3, base_features=4, skip_mode="lowpass").eval()
    enc, dec = {}, {}
    for i, stage in enumerate(net.encoder):
        stage.register_forward_hook(lambda m, a, out, i=i: enc.__setitem__(i, out))
    for i, block in enumerate(net.decoder):
        block.register_forward_pre_hook(lambda m, a, i=i: dec.__setitem__(i, a[0]))
    with torch.no_grad():
        net(torch.randn(1, 1, 16, 16, 16))
    for i in range(2):
        f = net.features[i]
        assert torch.allclose(dec[i][:, :f], _low_pass(enc[i], 2 ** (2 - i)))


def _fit_voxel_rule(mode: str, steps: int = 100) -> float:
    """Dice on a fresh volume after learning label = (input > 0) from random volumes."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    net = UNet3D(1, 2, levels=3, base_features=4, max_features=16, skip_mode=mode)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    volumes = [torch.randn(2, 1, 16, 16, 16, generator=gen) for _ in range(steps + 1)]
    for x in volumes[:-1]:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), (x[:, 0] > 0).long()).backward()
        opt.step()
    x = volumes[-1]
    with torch.no_grad():
        hit = net.eval()(x).argmax(1) == 1
    truth = x[:, 0] > 0
    return 2 * float((hit & truth).sum()) / float(hit.sum() + truth.sum())


def test_low_pass_skips_cannot_apply_a_voxel_scale_rule_that_concat_skips_learn():
    concat, lowpass = _fit_voxel_rule("concat"), _fit_voxel_rule("lowpass")
    assert concat > 0.9, concat
    assert lowpass < 0.8, lowpass


def test_old_cards_without_skip_mode_still_load(tmp_path):
    """A card written before skip_mode existed: skip_connections alone decides."""
    for skips, mode in ((True, "concat"), (False, "none")):
        net = UNet3D(1, 2, levels=2, base_features=4, skip_mode=mode)
        hparams = dict(net.hparams)
        del hparams["skip_mode"]
        hparams["skip_connections"] = skips
        card = {  # format 1: the network under "model", no preprocess_version
            "format": 1,
            "model": hparams,
            "labels": {"0": "background", "1": "a"},
            "channels": ["T1"],
            "spacing": [1.0, 1.0, 1.0],
            "patch_size": [8, 8, 8],
            "normalization": {"scheme": "zscore", "mask": "nonzero", "crop_to_nonzero": True},
        }
        path = save_checkpoint(tmp_path / f"old_{skips}.pt", {"model": net.state_dict(), "card": card})
        model, _ = load_model(path)
        assert model.skip_mode == mode
        x = torch.randn(2, 1, 8, 8, 8)
        with torch.no_grad():
            assert torch.equal(model(x), net.eval()(x))


def test_skip_mode_config_and_its_errors():
    assert load_config().model.skip_mode == "concat"
    assert load_config(overrides=["model.skip_mode=lowpass"]).model.skip_mode == "lowpass"
    with pytest.raises(BrainsegError, match="skip_mode must be one of"):
        UNet3D(1, 2, levels=2, skip_mode="sum")  # type: ignore[arg-type]


def test_old_configs_with_skip_connections_still_load():
    """``model.skip_connections`` (before ``skip_mode``): false means "none", true keeps the mode;
    false beside another mode than concat or none is a contradiction, named in one line."""
    assert load_config(overrides=["model.skip_connections=false"]).model.skip_mode == "none"
    assert load_config(overrides=["model.skip_connections=true"]).model.skip_mode == "concat"
    both = ["model.skip_connections=true", "model.skip_mode=add"]
    assert load_config(overrides=both).model.skip_mode == "add"
    assert "skip_connections" not in load_config().to_dict()["model"]
    with pytest.raises(
        BrainsegError, match="^config model.skip_connections: false contradicts model.skip_mode: lowpass$"
    ):
        load_config(overrides=["model.skip_connections=false", "model.skip_mode=lowpass"])
