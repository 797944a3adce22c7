"""Sliding-window aggregation over a whole (preprocessed) volume.

:class:`SlidingWindow` only places windows and aggregates: a volume, a predictor callable
(a batch of windows -> their logits), a batch size and devices in, logits out. What the
windows go through (the network, autocast, test-time mirroring) is the caller's callable
(:mod:`brainseg.infer.mirroring`, :class:`~brainseg.infer.predictor.Predictor`).

Windows have the patch size and sit on explicit locations (:func:`window_starts`): per axis
the fewest windows whose step is at most ``patch * (1 - overlap)``, spread evenly from 0 to
the border. Each window's logits are weighted by a Gaussian (sigma = ``sigma_scale`` * patch)
and the weighted sum is divided by the summed weights. Before that the volume is padded
(centred, with ``pad_value``: the case's normalised background, as training patches are
padded) so the windows reach ``margin`` * patch past it on every side and sit exactly one step
apart (:func:`window_padding`); the padding is cropped off again, and a volume smaller than the
patch is padded to the patch the same way. The outer windows then never end flush on the
volume's border (for a volume cropped to its non-zero box, the brain's rim), where a network
sees the least context and, with instance norm, each window's own statistics move its output.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from brainseg.config import InferConfig

#: What the windows go through: a batch (B, C, *patch) -> logits (B, outputs, *patch).
WindowPredictor = Callable[[torch.Tensor], torch.Tensor]


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices along one axis (size >= patch): evenly spread, last ends at the border."""
    if size <= patch:
        return [0]
    step = patch * (1.0 - overlap)
    n = int(math.ceil((size - patch) / max(step, 1e-6))) + 1
    return [int(round(v)) for v in np.linspace(0, size - patch, n)]


def window_span(size: int, patch: int, overlap: float) -> int:
    """The length the windows of an axis of ``size`` voxels span: ``patch + (n - 1) * step``
    for the ``n`` windows :func:`window_starts` lays (>= ``size``; ``patch`` if ``size <= patch``)."""
    if size <= patch:
        return int(patch)
    step = patch * (1.0 - overlap)
    n = len(window_starts(size, patch, overlap))
    return int(patch + math.floor((n - 1) * step + 1e-9))


def window_padding(size: int, patch: int, overlap: float, margin: float) -> int:
    """Padding voxels to add to an axis of ``size`` (split in front and behind) so the windows
    reach ``margin * patch`` past it on both sides and sit exactly one step apart."""
    reach = int(math.ceil(max(0.0, margin) * patch - 1e-9))
    return window_span(size + 2 * reach, patch, overlap) - size


def window_locations(shape: Sequence[int], patch: Sequence[int], overlap: float) -> list[tuple[int, ...]]:
    """All window start corners for a volume of ``shape`` (already padded to >= patch)."""
    axes = [window_starts(s, p, overlap) for s, p in zip(shape, patch)]
    return list(itertools.product(*axes))


def gaussian_importance(patch: Sequence[int], sigma_scale: float = 0.125) -> torch.Tensor:
    """Separable Gaussian weight map peaking at 1 in the centre; never exactly 0."""
    axes = []
    for p in patch:
        x = torch.arange(p, dtype=torch.float64) - (p - 1) / 2.0
        sigma = max(p * sigma_scale, 1e-3)
        axes.append(torch.exp(-0.5 * (x / sigma) ** 2))
    g = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    g = g / g.max()
    floor = g[g > 0].min()
    return torch.clamp(g, min=float(floor)).float()


@dataclass(frozen=True)
class SlidingWindow:
    """Window placement and Gaussian-weighted aggregation for one patch size; settings fixed.

    A call never changes the window nor the predictor it is given: the batch size and the
    devices are arguments of the call.
    """

    patch: tuple[int, ...]
    #: Channels the predictor returns (classes, or regions of a region model).
    num_outputs: int
    overlap: float = 0.5
    sigma_scale: float = 0.125
    margin: float = 0.125
    #: The Gaussian importance map (:func:`gaussian_importance`), on the CPU.
    weight: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        object.__setattr__(self, "patch", tuple(int(p) for p in self.patch))
        object.__setattr__(self, "num_outputs", int(self.num_outputs))
        object.__setattr__(self, "overlap", float(self.overlap))
        object.__setattr__(self, "margin", float(self.margin))
        object.__setattr__(self, "weight", gaussian_importance(self.patch, self.sigma_scale))

    @classmethod
    def from_config(
        cls, patch_size: Sequence[int], num_outputs: int, infer: InferConfig, zero_background: bool = True
    ) -> SlidingWindow:
        """A sliding window with the ``infer`` section's placement settings for a case whose background
        is exactly zero or not: only there do the windows reach ``infer.margin`` past the box, since
        only there is the constant padding what lies past it. A noisy background's box is the head
        plus 5 mm inside a scan of noise; windows reaching into constant padding there normalise it
        unlike anything real (CSF Dice +0.014, mean +0.005 on 4 demo models with the margin off for
        all cases, the gain all on noisy-background cases; docs/benchmarks.md)."""
        margin = infer.margin if zero_background else 0.0
        return cls(tuple(patch_size), num_outputs, infer.overlap, infer.sigma_scale, margin)

    def padding(self, shape: Sequence[int]) -> list[int]:
        """Padding voxels added per axis to a volume of ``shape`` (see the module docstring)."""
        return [window_padding(int(s), p, self.overlap, self.margin) for s, p in zip(shape, self.patch)]

    def padded_shape(self, shape: Sequence[int]) -> list[int]:
        """The shape the windows tile (and the accumulators have) for a volume of ``shape``."""
        return [int(s) + d for s, d in zip(shape, self.padding(shape))]

    def locations(self, shape: Sequence[int]) -> list[tuple[int, ...]]:
        """The window corners for a volume of ``shape``, in its padded frame."""
        return window_locations(self.padded_shape(shape), self.patch, self.overlap)

    @torch.inference_mode()
    def __call__(
        self,
        image: torch.Tensor | np.ndarray,
        predict: WindowPredictor,
        batch_size: int = 4,
        device: str | torch.device = "cpu",
        output_device: str | torch.device | None = None,
        pad_value: Sequence[float] | None = None,
    ) -> torch.Tensor:
        """Logits (num_outputs, X, Y, Z) of a (C, X, Y, Z) image, aggregated from ``predict``'s windows.

        The windows go to ``device`` in batches of ``batch_size``; the accumulators live on
        ``output_device`` (default: ``device``). The padding takes ``pad_value`` (one value per
        channel, default 0).
        """
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        if image.ndim != 4:
            raise ValueError(f"expected (C, X, Y, Z), got {tuple(image.shape)}")
        device = torch.device(device)
        out_device = torch.device(output_device) if output_device is not None else device
        shape = tuple(image.shape[1:])
        pad = self.padding(shape)
        if any(pad):
            pads: list[int] = []
            for d in reversed(pad):
                pads += [d // 2, d - d // 2]
            if pad_value is None or not any(pad_value):
                image = F.pad(image, pads)
            else:
                fill = torch.as_tensor(list(pad_value), dtype=image.dtype).view(-1, 1, 1, 1)
                image = F.pad(image - fill, pads) + fill
        padded = tuple(image.shape[1:])
        logits = torch.zeros((self.num_outputs, *padded), dtype=torch.float32, device=out_device)
        weights = torch.zeros(padded, dtype=torch.float32, device=out_device)
        weight = self.weight.to(out_device)
        image = image.to(device, non_blocking=True)
        locations = window_locations(padded, self.patch, self.overlap)
        for slices, batch in window_batches(image, locations, self.patch, batch_size, device):
            pred = predict(batch).float().to(out_device)
            for sl, p in zip(slices, pred):  # a filled-up batch's extra outputs are dropped
                logits[(slice(None),) + sl].addcmul_(p, weight)
                weights[sl] += weight
        logits /= weights
        if any(pad):
            logits = logits[(slice(None),) + tuple(slice(d // 2, d // 2 + s) for d, s in zip(pad, shape))]
        return logits


def window_batches(
    image: torch.Tensor, locations: Sequence[Sequence[int]], patch: Sequence[int], batch_size: int, device: torch.device
) -> Iterator[tuple[list[tuple[slice, ...]], torch.Tensor]]:
    """The windows of a (C, X, Y, Z) ``image`` (on ``device``) at ``locations``, batch by batch: their
    slices and the stacked (B, C, *patch) crops.

    On the CPU a batch of one window takes PyTorch's slow (non-oneDNN) Conv3d path: batches have at
    least two windows there, and a short last batch is filled up with copies of its last window
    (more crops than slices: the caller drops their outputs)."""
    per_batch = max(int(batch_size), 2) if device.type == "cpu" else max(1, int(batch_size))
    for i in range(0, len(locations), per_batch):
        slices = [tuple(slice(a, a + p) for a, p in zip(loc, patch)) for loc in locations[i : i + per_batch]]
        crops = [image[(slice(None),) + sl] for sl in slices]
        if device.type == "cpu" and len(crops) < per_batch:
            crops += [crops[-1]] * (per_batch - len(crops))
        yield slices, torch.stack(crops)
