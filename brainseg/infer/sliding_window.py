"""Sliding-window inference over a whole (preprocessed) volume.

Windows have the model's patch size and are placed on explicit locations
(:func:`window_starts`): per axis, the fewest windows whose step is at most
``patch * (1 - overlap)``, spread evenly so the first starts at 0 and the last ends
at the border. Each window's logits are weighted by a Gaussian importance map
(sigma = ``sigma_scale`` * patch, computed once per :class:`SlidingWindow`) and
accumulated; the sum is divided by the accumulated weights at the end. Several
windows go through the network per forward pass. A volume smaller than the patch
is padded (and the padding cropped off again).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices along one axis (size >= patch): evenly spread, last ends at the border."""
    if size <= patch:
        return [0]
    step = patch * (1.0 - overlap)
    n = int(math.ceil((size - patch) / max(step, 1e-6))) + 1
    return [int(round(v)) for v in np.linspace(0, size - patch, n)]


def window_locations(shape: Sequence[int], patch: Sequence[int], overlap: float) -> list[tuple[int, int, int]]:
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


def _autocast(device: torch.device, amp: str):
    if device.type == "cuda" and amp in ("bf16", "fp16"):
        return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
    return contextlib.nullcontext()


class SlidingWindow:
    """Reusable sliding-window predictor for one model and patch size."""

    def __init__(
        self,
        model: torch.nn.Module,
        patch_size: Sequence[int],
        num_classes: int,
        overlap: float = 0.5,
        batch_windows: int = 4,
        sigma_scale: float = 0.125,
        mirror: bool = False,
        amp: str = "bf16",
        device: str | torch.device = "cpu",
        channels_last: bool = False,
    ):
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        self.model = model
        self.patch = tuple(int(p) for p in patch_size)
        self.num_classes = int(num_classes)
        self.overlap = float(overlap)
        self.batch_windows = max(1, int(batch_windows))
        self.mirror = mirror
        self.amp = amp
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.weight = gaussian_importance(self.patch, sigma_scale).to(self.device)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last_3d)
        with _autocast(self.device, self.amp):
            out = self.model(batch)
            if self.mirror:
                n = 1
                for k in range(1, 4):
                    for dims in itertools.combinations((2, 3, 4), k):
                        out = out + torch.flip(self.model(torch.flip(batch, dims)), dims)
                        n += 1
                out = out / n
        return out.float()

    @torch.inference_mode()
    def __call__(self, image: torch.Tensor | np.ndarray, output_device: str | torch.device | None = None) -> torch.Tensor:
        """Logits (num_classes, X, Y, Z) for a (C, X, Y, Z) image.

        The accumulators live on ``output_device`` (default: the model's device).
        """
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        if image.ndim != 4:
            raise ValueError(f"expected (C, X, Y, Z), got {tuple(image.shape)}")
        out_device = torch.device(output_device) if output_device is not None else self.device
        shape = tuple(image.shape[1:])
        pad = [max(0, p - s) for p, s in zip(self.patch, shape)]
        if any(pad):
            pads: list[int] = []
            for d in reversed(pad):
                pads += [d // 2, d - d // 2]
            image = F.pad(image, pads)
        padded = tuple(image.shape[1:])
        logits = torch.zeros((self.num_classes, *padded), dtype=torch.float32, device=out_device)
        weights = torch.zeros(padded, dtype=torch.float32, device=out_device)
        weight = self.weight.to(out_device)
        image = image.to(self.device, non_blocking=True)
        locations = window_locations(padded, self.patch, self.overlap)
        # On the CPU a batch of one window takes PyTorch's slow (non-oneDNN) Conv3d path,
        # 3-5x slower per window than a batch of two (measured): batches have at least two
        # windows there, and a short last batch is filled up with copies of its last window
        # (their outputs are dropped).
        per_batch = max(self.batch_windows, 2) if self.device.type == "cpu" else self.batch_windows
        for chunk in _chunks(locations, per_batch):
            slices = [tuple(slice(a, a + p) for a, p in zip(loc, self.patch)) for loc in chunk]
            crops = [image[(slice(None),) + sl] for sl in slices]
            if self.device.type == "cpu" and len(crops) < per_batch:
                crops += [crops[-1]] * (per_batch - len(crops))
            pred = self._forward(torch.stack(crops)).to(out_device)
            for sl, p in zip(slices, pred):
                logits[(slice(None),) + sl].addcmul_(p, weight)
                weights[sl] += weight
        logits /= weights
        if any(pad):
            logits = logits[(slice(None),) + tuple(slice(d // 2, d // 2 + s) for d, s in zip(pad, shape))]
        return logits


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]
