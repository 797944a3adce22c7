"""The U-Net's skip modes (``model.skip_mode``: concat, none, add, lowpass): shapes, gradients,
what a low-pass skip lets through, old cards, the config switch and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainseg.config import load_config
from brainseg.errors import BrainsegError
from brainseg.model import UNet3D
from brainseg.model.checkpoint import load_model, save_checkpoint
from brainseg.model.unet import _low_pass


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
    assert net.hparams["skip_mode"] == mode and net.hparams["skip_connections"] == (mode != "none")


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
        net = UNet3D(1, 2, levels=2, base_features=4, skip_connections=skips)
        hparams = dict(net.hparams)
        del hparams["skip_mode"]
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
    assert UNet3D(1, 2, levels=2, skip_connections=False).skip_mode == "none"
    with pytest.raises(BrainsegError, match="skip_mode must be one of"):
        UNet3D(1, 2, levels=2, skip_mode="sum")
    with pytest.raises(BrainsegError, match="contradicts"):
        UNet3D(1, 2, levels=2, skip_connections=False, skip_mode="lowpass")
