"""Sliding-window inference over a whole (preprocessed) volume.

Windows have the model's patch size and are placed on explicit locations
(:func:`window_starts`): per axis, the fewest windows whose step is at most
``patch * (1 - overlap)``, spread evenly so the first starts at 0 and the last ends
at the border. Each window's logits are weighted by a Gaussian importance map
(sigma = ``sigma_scale`` * patch, computed once per :class:`SlidingWindow`) and
accumulated; the sum is divided by the accumulated weights at the end. Several
windows go through the network per forward pass.

Before the windows are laid, the volume is padded (centred) per axis so the
windows reach ``margin`` (a fraction of the patch, default 1/8 = the Gaussian's
sigma) past it on both sides, and further to the length those windows span anyway
(:func:`window_span`: ``patch + (n - 1) * step`` for ``n`` windows); the padding is
cropped off again. The windows then sit exactly one step apart and no voxel of the
volume is within ``margin`` of the outer windows' edges, where a network sees the
least context. This matters for a volume cropped to its non-zero box (the default):
there the border is the brain's outer rim. The padding takes the case's normalised
background value (``pad_value``, per channel; :class:`~brainseg.preprocessing.preprocess.PreprocessRecord`),
so it shows the network what the uncropped volume has there, as training patches do. Measured
against MONAI tiling the whole volume (same weights): windows
flush on the rim gave CSF Dice 0.007-0.037 below MONAI's (three demo models);
padding only to the span (no extra windows) removed that bias but left differences
of up to 0.016 either way; a margin of 1/8 patch brought every label within 0.0051
(seven demo models), for 1.5-1.8x the windows of the flush box (still about half
the whole volume's). A volume smaller than the patch is padded to the patch the
same way.

Most of those differences come from instance norm: each window is normalised by its
own statistics, so a voxel's output depends on where its windows start (MONAI
against itself with its windows moved half a step: CSF Dice 0.005-0.027 apart on
demo models). A batch-norm network in eval mode applies fixed statistics: the same
comparison moves it by at most 0.0015, and its norms are folded into the
convolutions before them (:func:`~brainseg.model.fast_paths.fold_batch_norm`). Its outer windows still gain
from the margin: beyond a flush edge the convolutions pad with zeros, not with the
features real background would give (margin 0 moved a 0.6-minute batch-norm model's
CSF Dice by +0.004 on one demo case, the margin kept it within 0.0025 of MONAI).

Test-time mirroring (``mirror``) averages the logits over the 8 flip combinations of the
three axes. Axis 0 of the (preprocessed, RAS-ordered) volume is the subject's left-right
axis: a combination that flips it turns left structures into right ones, so its flipped-back
logits take their channels from ``swap_channels`` (each left/right pair's channels swapped,
:meth:`~brainseg.labels.laterality.Laterality.channel_permutation`) before they are averaged, which
keeps the average equivariant: the mirrored scan gets the mirrored, side-swapped prediction.
With ``flip_left_right`` False (a lateralised label without a partner) those combinations are
left out (4 instead of 8 passes).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from brainseg.config import InferConfig
from brainseg.model.fast_paths import fold_batch_norm, fuse_instance_norm
from brainseg.runtime import autocast


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
        margin: float = 0.125,
        amp: str = "bf16",
        device: str | torch.device = "cpu",
        channels_last: bool = False,
        swap_channels: Sequence[int] | None = None,
        flip_left_right: bool = True,
    ):
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        self.model = model
        self.patch = tuple(int(p) for p in patch_size)
        self.num_classes = int(num_classes)
        self.overlap = float(overlap)
        self.margin = float(margin)
        self.batch_windows = max(1, int(batch_windows))
        self.mirror = mirror
        self.swap_channels = None if swap_channels is None else [int(c) for c in swap_channels]
        if self.swap_channels is not None and sorted(self.swap_channels) != list(range(self.num_classes)):
            raise ValueError(f"swap_channels {self.swap_channels} is not a permutation of {self.num_classes} channels")
        self.flip_left_right = bool(flip_left_right)
        self.amp = amp
        self.device = torch.device(device)
        self.channels_last = channels_last
        if channels_last:
            # The convolution weights in the activations' layout too: with channels-last
            # inputs but contiguous weights oneDNN's Conv3d was ~20% slower (measured, CPU).
            # Same values; the model is converted in place, as the trainer does.
            model.to(memory_format=torch.channels_last_3d)
        self.weight = gaussian_importance(self.patch, sigma_scale).to(self.device)
        # What the windows go through: batch norms folded into the convolutions before them
        # (fold_batch_norm, eval mode: the same function, one pass less); on the CPU,
        # instance norms computed without layout copies (fuse_instance_norm; the parameters
        # are the model's own; not measured on GPUs, which get the model as it is).
        net = fold_batch_norm(model)
        self.net = fuse_instance_norm(net) if self.device.type == "cpu" else net

    @classmethod
    def from_config(
        cls,
        model: torch.nn.Module,
        patch_size: Sequence[int],
        num_classes: int,
        infer: InferConfig,
        device: str | torch.device = "cpu",
        swap_channels: Sequence[int] | None = None,
        flip_left_right: bool = True,
    ) -> SlidingWindow:
        """A sliding window with the ``infer`` section's settings (the left-right ones: see the module docstring)."""
        return cls(
            model,
            patch_size,
            num_classes,
            overlap=infer.overlap,
            batch_windows=infer.batch_windows,
            sigma_scale=infer.sigma_scale,
            margin=infer.margin,
            mirror=infer.mirror,
            amp=infer.amp,
            device=device,
            channels_last=infer.channels_last,
            swap_channels=swap_channels,
            flip_left_right=flip_left_right,
        )

    def padding(self, shape: Sequence[int]) -> list[int]:
        """Padding voxels added per axis to a volume of ``shape`` (see the module docstring)."""
        return [window_padding(int(s), p, self.overlap, self.margin) for s, p in zip(shape, self.patch)]

    def padded_shape(self, shape: Sequence[int]) -> list[int]:
        """The shape the windows tile (and the accumulators have) for a volume of ``shape``."""
        return [int(s) + d for s, d in zip(shape, self.padding(shape))]

    def locations(self, shape: Sequence[int]) -> list[tuple[int, int, int]]:
        """The window corners for a volume of ``shape``, in its padded frame."""
        return window_locations(self.padded_shape(shape), self.patch, self.overlap)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last_3d)
        with autocast(self.device, self.amp):
            out = self.net(batch)
            if self.mirror:
                n = 1
                for k in range(1, 4):
                    for dims in itertools.combinations((2, 3, 4), k):
                        left_right = 2 in dims  # dim 2 of (B, C, X, Y, Z): the left-right axis
                        if left_right and not self.flip_left_right:
                            continue
                        flipped = torch.flip(self.net(torch.flip(batch, dims)), dims)
                        if left_right and self.swap_channels is not None:
                            flipped = flipped[:, self.swap_channels]
                        out = out + flipped
                        n += 1
                out = out / n
        return out.float()

    @torch.inference_mode()
    def __call__(
        self,
        image: torch.Tensor | np.ndarray,
        output_device: str | torch.device | None = None,
        pad_value: Sequence[float] | None = None,
    ) -> torch.Tensor:
        """Logits (num_classes, X, Y, Z) for a (C, X, Y, Z) image.

        The accumulators live on ``output_device`` (default: the model's device). The
        padding around the volume takes ``pad_value`` (one value per channel, default 0:
        the case's normalised background, as training patches are padded).
        """
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        if image.ndim != 4:
            raise ValueError(f"expected (C, X, Y, Z), got {tuple(image.shape)}")
        out_device = torch.device(output_device) if output_device is not None else self.device
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
