"""Sliding-window inference: where windows go, and that the aggregation returns what the network said."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from brainseg.infer.sliding_window import SlidingWindow, window_locations, window_padding, window_span, window_starts


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
    sw = SlidingWindow(Constant(values), (16, 16, 16), 3, overlap=0.5, batch_windows=3)
    out = sw(torch.randn(1, *shape))
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
    sw = SlidingWindow(net, (16, 16, 16), 4, overlap=0.5, batch_windows=2, channels_last=True)
    with torch.no_grad():
        whole = net(image[None])[0]
        ours = sw(image)
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
    SlidingWindow(rec, (24, 24, 24), 2, overlap=0.5, batch_windows=2, margin=0.0)(image)
    firsts = {int(w[0, :, 0, 0].nonzero()[0]) for w in rec.seen if w[0, :, 0, 0].any()}
    # Span 48 for 40 voxels: 4 voxels of zeros before the volume in the first window.
    assert window_span(40, 24, 0.5) == 48
    assert 4 in firsts
    n_windows = len(window_locations((48, 24, 24), (24, 24, 24), 0.5))
    assert n_windows == len(window_locations((40, 24, 24), (24, 24, 24), 0.5)) == 3
    assert len({tuple(w.flatten()[:5].tolist()) for w in rec.seen}) == n_windows
