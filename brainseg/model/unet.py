"""A 3D U-Net with skip concatenation at every level.

The encoder's feature list is computed once (:func:`feature_list`) and the decoder
takes its channel counts from it, so the arithmetic lives in one place. Each stage
is two ``Conv3d -> norm -> LeakyReLU`` blocks; the encoder downsamples with a
strided convolution, the decoder upsamples with a transposed convolution, pads or
crops to the skip's exact size (odd shapes work) and joins the skip.

``skip_mode`` (:data:`~brainseg.config.SkipMode`) chooses the join, once, at
construction (:func:`skip_join`): ``concat`` (the U-Net), ``none`` (the skip is cut: the
decoder sees only the upsampled coarse features, the ablation that shows what the skips
carry), ``add`` (the skip is added to the upsampled features, ResNet/LinkNet style, no
extra decoder channels) or ``lowpass`` (concatenated after average pooling to the
bottleneck's resolution and trilinear upsampling back: the short path from encoder to
decoder stays, the detail finer than the bottleneck's grid is gone, so the decoder sees no
finer spatial information than a cut network does). See docs/skip_connections.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import get_args

import torch
import torch.nn.functional as F
from torch import nn

from brainseg.config import ModelConfig, Norm, SkipMode
from brainseg.errors import BrainsegError
from brainseg.model.card import Network


def feature_list(levels: int, base_features: int, max_features: int) -> list[int]:
    """Channels per resolution level: base, 2*base, ... capped at ``max_features``."""
    if levels < 1:
        raise BrainsegError(f"model.levels must be >= 1, got {levels}")
    if base_features < 1:
        raise BrainsegError(f"model.base_features must be >= 1, got {base_features}")
    return [min(base_features * 2**i, max_features) for i in range(levels)]


#: What ``model.skip_mode`` may name.
SKIP_MODES: tuple[SkipMode, ...] = get_args(SkipMode)

#: The normalisations ``model.norm`` may name.
NORMS: tuple[Norm, ...] = get_args(Norm)


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True, eps=1e-5)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise BrainsegError(f"model.norm must be one of {', '.join(NORMS)}, got {kind!r}")


class ConvBlock(nn.Sequential):
    """Two ``Conv3d(kernel) -> norm -> LeakyReLU`` layers; the first may be strided."""

    def __init__(self, in_channels: int, out_channels: int, norm: Norm, stride=1, kernel=3):
        bias = norm == "none"
        kernel = _triple(kernel)
        padding = tuple(k // 2 for k in kernel)
        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel, stride=_triple(stride), padding=padding, bias=bias),
            _norm(norm, out_channels),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Conv3d(out_channels, out_channels, kernel, padding=padding, bias=bias),
            _norm(norm, out_channels),
            nn.LeakyReLU(0.01, inplace=True),
        )


def _triple(value) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    x, y, z = (int(v) for v in value)
    return (x, y, z)


def stage_geometry(
    levels: int, strides=None, kernels=None
) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """Per downsampling its stride, per level its kernel (dynamic-network-architectures' lists):
    ``strides`` has ``levels - 1`` entries (null: 2 on every axis), ``kernels`` ``levels``
    (null: 3 on every axis); an anisotropic plan pools the coarse axis later (stride 1) and
    gives it kernel 1 while it is coarser than twice the others."""
    strides = [(2, 2, 2)] * (levels - 1) if strides is None else [_triple(s) for s in strides]
    kernels = [(3, 3, 3)] * levels if kernels is None else [_triple(k) for k in kernels]
    if len(strides) != levels - 1 or any(v not in (1, 2) for s in strides for v in s):
        raise BrainsegError(
            f"model.strides: expected {levels - 1} triples of 1 or 2 (one per downsampling), got {strides}"
        )
    if len(kernels) != levels or any(v not in (1, 3, 5) for k in kernels for v in k):
        raise BrainsegError(f"model.kernels: expected {levels} triples of 1, 3 or 5 (one per level), got {kernels}")
    return strides, kernels


def _match_size(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Pad (zeros) or crop the spatial dims of ``x`` to ``size``."""
    diff = [s - d for s, d in zip(size, x.shape[2:])]
    if not any(diff):
        return x
    pad: list[int] = []
    for d in reversed(diff):  # F.pad wants the last dim first; negative pads crop
        pad += [d // 2, d - d // 2]
    return F.pad(x, pad)


def _low_pass(x: torch.Tensor, factor) -> torch.Tensor:
    """Average-pool by ``factor`` (partial blocks at the far edges average what they hold) and upsample back."""
    coarse = F.avg_pool3d(x, factor, ceil_mode=True)
    return F.interpolate(coarse, size=x.shape[2:], mode="trilinear", align_corners=False)


class SkipJoin(nn.Module):
    """How a decoder level joins the upsampled features ``x`` with the encoder's ``skip``
    (same spatial size); this base class cuts the skip (``none``)."""

    #: The decoder block's input channels per channel of its level.
    width = 1

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return x


class AddJoin(SkipJoin):
    """``add``: the skip is added to the upsampled features."""

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return x + skip


class ConcatJoin(SkipJoin):
    """``concat``: the skip, then the upsampled features, along the channel axis."""

    width = 2

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.cat([skip, x], dim=1)


class LowPassJoin(ConcatJoin):
    """``lowpass``: concatenated after :func:`_low_pass` by ``factor`` (to the bottleneck's grid)."""

    def __init__(self, factor: Sequence[int]):
        super().__init__()
        self.factor = tuple(int(f) for f in factor)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return super().forward(x, _low_pass(skip, self.factor))


def skip_join(mode: SkipMode, factor: Sequence[int]) -> SkipJoin:
    """The join of ``model.skip_mode`` for a level ``factor`` (per axis) finer than the bottleneck."""
    if mode == "concat":
        return ConcatJoin()
    if mode == "add":
        return AddJoin()
    if mode == "lowpass":
        return LowPassJoin(factor)
    if mode == "none":
        return SkipJoin()
    raise BrainsegError(f"model.skip_mode must be one of {', '.join(SKIP_MODES)}, got {mode!r}")


class UNet3D(nn.Module):
    """3D U-Net. ``forward`` returns logits ``(N, num_classes, X, Y, Z)``.

    With ``deep_supervision`` and in training mode it returns a list of logits from
    the finest to the coarsest decoder level.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        levels: int = 5,
        base_features: int = 32,
        max_features: int = 320,
        norm: Norm = "instance",
        deep_supervision: bool = False,
        skip_mode: SkipMode = "concat",
        strides: Sequence[Sequence[int]] | None = None,
        kernels: Sequence[Sequence[int]] | None = None,
    ):
        super().__init__()
        if in_channels < 1 or num_classes < 1:  # a region model may have a single output
            raise BrainsegError(
                f"a model needs >= 1 input channel and >= 1 output, got {in_channels} and {num_classes}"
            )
        self.features = feature_list(levels, base_features, max_features)
        self.levels = levels
        self.deep_supervision = deep_supervision
        self.skip_mode = skip_mode
        architecture = ModelConfig(
            levels=levels,
            base_features=base_features,
            max_features=max_features,
            norm=norm,
            deep_supervision=deep_supervision,
            skip_mode=skip_mode,
            strides=_lists(strides),
            kernels=_lists(kernels),
        )
        #: The keyword arguments of :func:`build_model` that rebuild this network (the card's form).
        self.hparams = Network(in_channels, num_classes, architecture).kwargs()
        self.strides, self.kernels = stage_geometry(levels, strides, kernels)
        f = self.features
        self.encoder = nn.ModuleList(
            ConvBlock(
                in_channels if i == 0 else f[i - 1],
                f[i],
                norm,
                stride=1 if i == 0 else self.strides[i - 1],
                kernel=self.kernels[i],
            )
            for i in range(levels)
        )
        # Decoder stage i brings level i+1 up to level i.
        self.upsample = nn.ModuleList(
            nn.ConvTranspose3d(f[i + 1], f[i], kernel_size=self.strides[i], stride=self.strides[i], bias=False)
            for i in range(levels - 1)
        )
        # Decoder stage i joins level i's skip; lowpass pools it to the bottleneck's grid.
        joins = [skip_join(skip_mode, divisors(self.strides[i:])) for i in range(levels - 1)]
        self.joins = nn.ModuleList(joins)
        self.decoder = nn.ModuleList(
            ConvBlock(f[i] * joins[i].width, f[i], norm, kernel=self.kernels[i]) for i in range(levels - 1)
        )
        heads = range(levels - 1) if deep_supervision else range(min(1, levels - 1))
        self.heads = nn.ModuleList(nn.Conv3d(f[i], num_classes, 1) for i in heads)
        if levels == 1:  # degenerate: a single stage, no decoder
            self.heads = nn.ModuleList([nn.Conv3d(f[0], num_classes, 1)])

    @property
    def divisor(self) -> tuple[int, int, int]:
        """Per axis, what patch sizes must be multiples of (the product of its strides)."""
        return divisors(self.strides)

    def check_patch_size(self, patch_size: Sequence[int]) -> None:
        div = self.divisor
        if any(p < d or p % d for p, d in zip(patch_size, div)):
            raise BrainsegError(
                f"patch size {list(patch_size)} cannot be divided by the model's "
                f"{self.levels - 1} downsamplings: the sides must be multiples of {list(div)}"
            )

    def forward(self, x: torch.Tensor):
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        outputs = []
        for i in reversed(range(self.levels - 1)):
            skip = skips.pop()
            x = self.joins[i](_match_size(self.upsample[i](x), skip.shape[2:]), skip)
            x = self.decoder[i](x)
            if self.deep_supervision and self.training:
                outputs.append(self.heads[i](x))
        if self.deep_supervision and self.training:
            return outputs[::-1]  # finest first
        return self.heads[0](x)


def _lists(triples: Sequence[Sequence[int]] | None) -> list[list[int]] | None:
    """Per-level triples as the config writes them (lists of ints), or None."""
    return None if triples is None else [list(_triple(v)) for v in triples]


def divisors(strides: Sequence[Sequence[int]]) -> tuple[int, int, int]:
    """Per axis, the product of the strides (the total downsampling)."""
    out = [1, 1, 1]
    for s in strides:
        out = [o * int(v) for o, v in zip(out, s)]
    return (out[0], out[1], out[2])


def build_model(in_channels: int, num_classes: int, **kwargs) -> UNet3D:
    """Build a :class:`UNet3D` from model-card keyword arguments."""
    return UNet3D(in_channels=in_channels, num_classes=num_classes, **kwargs)
