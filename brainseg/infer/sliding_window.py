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
background value (``pad_value``, per channel; :class:`~brainseg.data.preprocess.PreprocessRecord`),
so it shows the network what the uncropped volume has there, as training patches do. Measured
against MONAI tiling the whole volume (scripts/benchmark.py, same weights): windows
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
convolutions before them (:func:`fold_batch_norm`). Its outer windows still gain
from the margin: beyond a flush edge the convolutions pad with zeros, not with the
features real background would give (margin 0 moved a 0.6-minute batch-norm model's
CSF Dice by +0.004 on one demo case, the margin kept it within 0.0025 of MONAI).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


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


class InstanceNormLeakyReLU(nn.Module):
    """``InstanceNorm3d`` (statistics of each sample, no running statistics) then ``LeakyReLU``, as one
    module that keeps the input's memory layout.

    The same function as the two modules it replaces, computed differently: PyTorch's
    instance norm makes a contiguous copy of a channels-last input, normalises it as a
    batch norm and copies back; here the mean and variance (two passes, float32, like
    PyTorch's) are reduced over the voxels of the channels-last view directly and the
    affine map is one ``addcmul``. On the CPU the network's forward pass is ~25-30%
    faster (measured on the demo model); outputs agree to float rounding (~1e-6).
    It shares the norm's parameters (nothing is copied, later weight updates are seen).
    """

    def __init__(self, norm: nn.InstanceNorm3d, negative_slope: float | None):
        super().__init__()
        self.norm = norm
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        if x.is_contiguous(memory_format=torch.channels_last_3d):
            voxels, dim = x.permute(0, 2, 3, 4, 1).reshape(n, -1, c), 1
        else:
            voxels, dim = x.reshape(n, c, -1), 2
        mean = voxels.mean(dim, keepdim=True)
        centred = voxels - mean
        var = centred.square_().mean(dim)
        scale = torch.rsqrt(var + self.norm.eps)
        if self.norm.weight is not None:
            scale = scale * self.norm.weight
        shift = -mean.squeeze(dim) * scale
        if self.norm.bias is not None:
            shift = shift + self.norm.bias
        y = torch.addcmul(shift.view(n, c, 1, 1, 1), x, scale.view(n, c, 1, 1, 1))
        if self.negative_slope is not None:
            y = F.leaky_relu_(y, self.negative_slope)
        return y


def _plain_instance_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.InstanceNorm3d) and not module.track_running_stats


def _rewrite_pairs(model: nn.Module, rule) -> nn.Module:
    """A shallow copy of ``model`` in which ``rule(child, next_child)`` may replace each child of a
    ``Sequential`` (and its successor): ``rule`` returns ``None`` (keep the child), ``(module, False)``
    (replace the child) or ``(module, True)`` (replace the child, the successor becomes Identity).
    Unreplaced modules and their parameters are shared with ``model``, which is not modified."""

    def rebuild(module: nn.Module) -> nn.Module:
        clone = copy.copy(module)
        children = list(module._modules.items())
        new: dict[str, nn.Module | None] = {}
        i = 0
        while i < len(children):
            name, child = children[i]
            nxt = children[i + 1][1] if i + 1 < len(children) else None
            done = rule(child, nxt) if isinstance(module, nn.Sequential) else None
            if done is None:
                new[name] = rebuild(child) if child is not None else None
                i += 1
                continue
            new[name] = done[0]
            if done[1]:
                new[children[i + 1][0]] = nn.Identity()
            i += 2 if done[1] else 1
        clone._modules = new  # a new dict: the original's children are untouched
        return clone

    return rebuild(model)


def fuse_instance_norm(model: nn.Module) -> nn.Module:
    """A view of ``model`` for inference with every ``InstanceNorm3d -> LeakyReLU`` pair of a
    ``Sequential`` computed by one :class:`InstanceNormLeakyReLU`.

    The modules are shallow copies: parameters and buffers are shared with ``model``
    (moving or updating it is seen here), ``model`` itself is not modified. A model
    without such pairs is returned as it is.
    """
    if not any(_plain_instance_norm(m) for m in model.modules()):
        return model

    def rule(child: nn.Module, nxt: nn.Module | None):
        if not _plain_instance_norm(child):
            return None
        if isinstance(nxt, nn.LeakyReLU):
            return InstanceNormLeakyReLU(child, nxt.negative_slope), True
        return InstanceNormLeakyReLU(child, None), False

    return _rewrite_pairs(model, rule)


def _foldable_batch_norm(conv: nn.Module, norm: nn.Module | None) -> bool:
    return (
        type(conv) is nn.Conv3d
        and isinstance(norm, nn.BatchNorm3d)
        and norm.track_running_stats
        and norm.running_mean is not None
        and norm.running_var is not None
        and norm.num_features == conv.out_channels
    )


@torch.no_grad()
def folded_conv(conv: nn.Conv3d, norm: nn.BatchNorm3d) -> nn.Conv3d:
    """One ``Conv3d`` computing ``norm(conv(x))`` with the norm's running statistics (eval mode).

    ``scale = gamma / sqrt(running_var + eps)`` multiplies each output channel's kernel;
    the bias becomes ``(bias - running_mean) * scale + beta``. New tensors (a snapshot
    of the current values), with the kernel's memory format."""
    scale = torch.rsqrt(norm.running_var.float() + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.float()
    bias = conv.bias.float() if conv.bias is not None else torch.zeros_like(scale)
    bias = (bias - norm.running_mean.float()) * scale
    if norm.bias is not None:
        bias = bias + norm.bias.float()
    out = nn.Conv3d(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=conv.groups, bias=True, padding_mode=conv.padding_mode,
        device=conv.weight.device, dtype=conv.weight.dtype,
    )
    fmt = torch.channels_last_3d if conv.weight.is_contiguous(memory_format=torch.channels_last_3d) else torch.contiguous_format
    weight = (conv.weight.float() * scale.view(-1, 1, 1, 1, 1)).to(conv.weight.dtype)
    out.weight = nn.Parameter(weight.contiguous(memory_format=fmt), requires_grad=False)
    out.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
    return out.eval()


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """A view of ``model`` for inference in which every ``Conv3d -> BatchNorm3d`` pair of a
    ``Sequential`` is one convolution (:func:`folded_conv`): the norm costs nothing.

    Only for a model in eval mode (running statistics); a model in training mode, or one
    without such pairs, is returned as it is. The folded convolutions are a snapshot:
    build the view again after the weights change. Other modules are shared with
    ``model``, which is not modified.
    """
    if model.training or not any(isinstance(m, nn.BatchNorm3d) for m in model.modules()):
        return model

    def rule(child: nn.Module, nxt: nn.Module | None):
        return (folded_conv(child, nxt), True) if _foldable_batch_norm(child, nxt) else None

    return _rewrite_pairs(model, rule)


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
        margin: float = 0.125,
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
        self.margin = float(margin)
        self.batch_windows = max(1, int(batch_windows))
        self.mirror = mirror
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
        with _autocast(self.device, self.amp):
            out = self.net(batch)
            if self.mirror:
                n = 1
                for k in range(1, 4):
                    for dims in itertools.combinations((2, 3, 4), k):
                        out = out + torch.flip(self.net(torch.flip(batch, dims)), dims)
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
