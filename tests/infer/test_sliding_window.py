"""Sliding-window inference: where windows go, that the aggregation returns what the network said,
and that a call changes neither the window nor the predictor it is given."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from brainseg.config import InferConfig
from brainseg.infer.mirroring import Mirroring, NetworkForward, window_predictor
from brainseg.infer.sliding_window import SlidingWindow, window_locations, window_padding, window_span, window_starts
from brainseg.model.fast_paths import inference_network
from brainseg.model.unet import UNet3D


@pytest.mark.parametrize("patch", [8, 48, 64])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.6])
def test_window_starts_cover_the_axis_with_the_fewest_windows(patch: int, overlap: float):
    step = patch * (1 - overlap)
    for size in range(patch, 4 * patch + 7):
        starts = window_starts(size, patch, overlap)
        assert starts[0] == 0 and starts[-1] == size - patch
        gaps = np.diff(starts)
        assert np.all(gaps > 0) and np.all(gaps <= math.ceil(step))
        assert len(starts) == math.ceil((size - patch) / step) + 1  # one fewer would step further than allowed


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_window_span_keeps_the_window_count_and_spaces_windows_one_step_apart(overlap: float):
    patch = 48
    step = patch * (1 - overlap)
    for size in range(1, 5 * patch):
        span = window_span(size, patch, overlap)
        assert span >= max(size, patch)
        starts = window_starts(span, patch, overlap)
        assert len(starts) == len(window_starts(max(size, patch), patch, overlap))
        if len(starts) > 1:
            assert np.all(np.abs(np.diff(starts) - step) <= 1.0)


@pytest.mark.parametrize("margin", [0.0, 0.125, 0.25])
def test_windows_reach_the_margin_past_the_volume_on_both_sides(margin: float):
    patch, overlap = 48, 0.5
    reach = math.ceil(margin * patch)
    for size in range(1, 5 * patch):
        pad = window_padding(size, patch, overlap, margin)
        assert pad // 2 >= reach and pad - pad // 2 >= reach
        starts = window_starts(size + pad, patch, overlap)
        assert len(starts) == len(window_starts(max(size + 2 * reach, patch), patch, overlap))  # nothing more
        if len(starts) > 1:
            assert np.all(np.diff(starts) == patch * (1 - overlap))


class Constant(nn.Module):
    def __init__(self, values):
        super().__init__()
        self.register_buffer("values", torch.tensor(values, dtype=torch.float32))

    def forward(self, x):
        return self.values.view(1, -1, 1, 1, 1).expand(x.shape[0], -1, *x.shape[2:]).clone()


@pytest.mark.parametrize("shape", [(5, 7, 9), (16, 16, 16), (37, 23, 50), (70, 16, 33)])
def test_constant_network_gives_that_constant_everywhere(shape):
    """TorchIO's aggregator test: whatever the windows and weights, a network that always
    says c must come back as c at every voxel (odd shapes, shapes below the patch)."""
    values = [0.5, -2.0, 3.25]
    sw = SlidingWindow((16, 16, 16), 3, overlap=0.5)
    out = sw(torch.randn(1, *shape), Constant(values), batch_size=3)
    assert out.shape == (3, *shape)
    for c, v in enumerate(values):
        torch.testing.assert_close(out[c], torch.full(shape, v), atol=1e-6, rtol=0)


def test_voxelwise_network_is_reproduced_exactly_and_matches_monai():
    """A 1x1x1 network's output does not depend on where windows fall, so the aggregated
    result must be the network applied to the whole volume, as MONAI's
    sliding_window_inference also gives."""
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    net = nn.Conv3d(2, 4, 1).eval()
    image = torch.randn(2, 41, 30, 57)
    sw = SlidingWindow((16, 16, 16), 4, overlap=0.5)
    forward = NetworkForward(inference_network(net, "cpu", channels_last=True), torch.device("cpu"), channels_last=True)
    with torch.no_grad():
        whole = net(image[None])[0]
        ours = sw(image, forward, batch_size=2)
        monai = sliding_window_inference(image[None], (16, 16, 16), 4, net, overlap=0.5, mode="gaussian")[0]
    torch.testing.assert_close(ours, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours, monai, atol=1e-5, rtol=1e-5)


class Recorder(nn.Module):
    """Remembers each window it is given (as a copy) and returns zeros."""

    def __init__(self):
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.extend(x.clone())
        return torch.zeros(x.shape[0], 2, *x.shape[2:])


def test_border_voxels_are_not_at_a_window_edge_when_the_windows_have_room():
    """An axis of 40 voxels with 24-voxel windows at overlap 0.5 takes three windows, which
    span 48 voxels: the volume sits centred in that span, so the first window starts 4
    voxels of zero padding before the volume instead of flush on its first voxel."""
    image = torch.arange(1, 40 * 24 * 24 + 1, dtype=torch.float32).reshape(1, 40, 24, 24)
    rec = Recorder()
    SlidingWindow((24, 24, 24), 2, overlap=0.5, margin=0.0)(image, rec, batch_size=2)
    firsts = {int(w[0, :, 0, 0].nonzero()[0]) for w in rec.seen if w[0, :, 0, 0].any()}
    # Span 48 for 40 voxels: 4 voxels of zeros before the volume in the first window.
    assert window_span(40, 24, 0.5) == 48
    assert 4 in firsts
    n_windows = len(window_locations((48, 24, 24), (24, 24, 24), 0.5))
    assert n_windows == len(window_locations((40, 24, 24), (24, 24, 24), 0.5)) == 3
    assert len({tuple(w.flatten()[:5].tolist()) for w in rec.seen}) == n_windows


def _settings(window: SlidingWindow) -> dict:
    return {f.name: getattr(window, f.name) for f in dataclasses.fields(window) if f.name != "weight"}


def _state(module: nn.Module) -> tuple[dict, list, bool]:
    """What a call must leave as it was: values, the parameters' memory layout, the training flag."""
    values = {k: v.clone() for k, v in module.state_dict().items()}
    layouts = [(p.stride(), p.data_ptr()) for p in module.parameters()]
    return values, layouts, module.training


def _same_state(module: nn.Module, before: tuple[dict, list, bool]) -> bool:
    values, layouts, training = before
    now = module.state_dict()
    return (
        now.keys() == values.keys()
        and all(torch.equal(now[k], v) for k, v in values.items())
        and [(p.stride(), p.data_ptr()) for p in module.parameters()] == layouts
        and module.training == training
    )


@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_batch_size_and_devices_change_no_logit_nor_the_window_nor_the_predictor(norm: str):
    """Batch sizes 1 and 3, accumulators on the compute device or on the CPU (the GPU's, when one
    is there): the same logits; the window's settings, the predictor (its mirroring settings) and
    the network's values, layout and mode are as they were."""
    torch.manual_seed(0)
    model = UNet3D(1, 4, levels=2, base_features=4, norm=norm).eval()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    infer = InferConfig(mirror=True, amp="none", channels_last=True)
    network = inference_network(model, device, channels_last=True)
    predict = window_predictor(network, infer, device, swap_channels=[0, 2, 1, 3])
    window = SlidingWindow.from_config((16, 16, 16), 4, infer)
    image = torch.randn(1, 23, 17, 30)
    window_fields = _settings(window)
    weight, predict_fields = window.weight.clone(), dict(vars(predict))
    network_state = _state(network)
    outputs = [
        window(image, predict, batch_size, device, output_device, pad_value=[-0.5])
        for batch_size in (1, 3)
        for output_device in (device, torch.device("cpu"))
    ]
    assert isinstance(predict, Mirroring) and predict.swap_channels == (0, 2, 1, 3)
    assert all(out.shape == (4, 23, 17, 30) for out in outputs)
    assert torch.equal(outputs[0].cpu(), outputs[1]) and torch.equal(outputs[2].cpu(), outputs[3])  # same batches
    torch.testing.assert_close(outputs[2], outputs[0], atol=1e-6, rtol=1e-6)  # other batches: float rounding at most
    assert _settings(window) == window_fields and torch.equal(window.weight, weight)
    assert vars(predict) == predict_fields
    assert _same_state(network, network_state)
    with pytest.raises(dataclasses.FrozenInstanceError):
        window.overlap = 0.25  # type: ignore[misc]


def test_inference_network_leaves_the_model_as_it_was():
    """The rewrites (eval mode, channels-last, folded batch norms, fused instance norms) are made on a copy."""
    torch.manual_seed(0)
    for norm in ("instance", "batch"):
        model = UNet3D(1, 3, levels=2, base_features=4, norm=norm)  # training mode, contiguous weights
        before = _state(model)
        network = inference_network(model, "cpu", channels_last=True)
        assert _same_state(model, before)
        assert not network.training and network is not model
        assert all(p.data_ptr() not in {q.data_ptr() for q in model.parameters()} for p in network.parameters())
        conv = next(m for m in network.modules() if isinstance(m, nn.Conv3d) and m.in_channels > 1)
        assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d) and not conv.weight.is_contiguous()
        assert not any(isinstance(m, nn.BatchNorm3d) for m in network.modules())
        x = torch.randn(2, 1, 16, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(network(x), model.eval()(x), atol=1e-4, rtol=1e-4)


def test_sliding_window_pads_with_the_background_value():
    class WindowMean(torch.nn.Module):  # each output voxel is its window's mean: sees the padding
        def forward(self, x):
            return x.mean(dim=(2, 3, 4), keepdim=True).expand(-1, 2, *x.shape[2:]).clone()

    image = torch.full((1, 20, 20, 20), -2.0)
    sw = SlidingWindow((16, 16, 16), 2, margin=0.25)
    torch.testing.assert_close(sw(image, WindowMean(), pad_value=[-2.0]), torch.full((2, 20, 20, 20), -2.0))
    assert sw(image, WindowMean()).max() > -1.9  # zero padding pulls the windows' means up
