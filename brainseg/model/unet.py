"""A 3D U-Net with skip concatenation at every level.

The encoder's feature list is computed once (:func:`feature_list`) and the decoder
takes its channel counts from it, so the arithmetic lives in one place. Each stage
is two ``Conv3d -> norm -> LeakyReLU`` blocks; the encoder downsamples with a
strided convolution, the decoder upsamples with a transposed convolution, pads or
crops to the skip's exact size (odd shapes work) and concatenates the skip.
``skip_connections=False`` cuts every skip (the decoder then sees only the
upsampled coarse features), the ablation that shows what the skips carry.

``skip_mode`` chooses what a skip is (:data:`SKIP_MODES`): ``concat`` (the U-Net),
``none`` (cut, the same as ``skip_connections=False``), ``add`` (the skip is added to
the upsampled features, ResNet/LinkNet style, no extra decoder channels) or
``lowpass`` (concatenated after average pooling to the bottleneck's resolution and
trilinear upsampling back: the short path from encoder to decoder stays, the detail
finer than the bottleneck's grid is gone, so the decoder sees no finer spatial
information than a cut network does). See docs/skip_connections.md.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BrainsegError


def feature_list(levels: int, base_features: int, max_features: int) -> list[int]:
    """Channels per resolution level: base, 2*base, ... capped at ``max_features``."""
    if levels < 1:
        raise BrainsegError(f"model.levels must be >= 1, got {levels}")
    if base_features < 1:
        raise BrainsegError(f"model.base_features must be >= 1, got {base_features}")
    return [min(base_features * 2**i, max_features) for i in range(levels)]


#: What ``model.skip_mode`` may name.
SKIP_MODES = ("concat", "none", "add", "lowpass")

#: The normalisations ``model.norm`` may name.
NORMS = ("instance", "batch", "group", "none")


def _norm(kind: str, channels: int) -> nn.Module:
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
    """Two ``Conv3d(3x3x3) -> norm -> LeakyReLU`` layers; the first may be strided."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, stride: int = 1):
        bias = norm == "none"
        super().__init__(
            nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias),
            _norm(norm, out_channels),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=bias),
            _norm(norm, out_channels),
            nn.LeakyReLU(0.01, inplace=True),
        )


def _match_size(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Pad (zeros) or crop the spatial dims of ``x`` to ``size``."""
    diff = [s - d for s, d in zip(size, x.shape[2:])]
    if not any(diff):
        return x
    pad: list[int] = []
    for d in reversed(diff):  # F.pad wants the last dim first; negative pads crop
        pad += [d // 2, d - d // 2]
    return F.pad(x, pad)


def _low_pass(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average-pool by ``factor`` (partial blocks at the far edges average what they hold) and upsample back."""
    coarse = F.avg_pool3d(x, factor, ceil_mode=True)
    return F.interpolate(coarse, size=x.shape[2:], mode="trilinear", align_corners=False)


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
        norm: str = "instance",
        deep_supervision: bool = False,
        skip_connections: bool = True,
        skip_mode: str = "concat",
    ):
        super().__init__()
        if skip_mode not in SKIP_MODES:
            raise BrainsegError(f"model.skip_mode must be one of {', '.join(SKIP_MODES)}, got {skip_mode!r}")
        if not skip_connections:  # the older switch: false cuts the skips whatever the mode
            if skip_mode not in ("concat", "none"):
                raise BrainsegError(f"model.skip_connections: false contradicts model.skip_mode: {skip_mode}")
            skip_mode = "none"
        if in_channels < 1 or num_classes < 1:  # a region model may have a single output
            raise BrainsegError(
                f"a model needs >= 1 input channel and >= 1 output, got {in_channels} and {num_classes}"
            )
        self.features = feature_list(levels, base_features, max_features)
        self.levels = levels
        self.deep_supervision = deep_supervision
        self.skip_mode = skip_mode
        self.skip_connections = skip_connections = skip_mode != "none"
        self.hparams = dict(
            in_channels=in_channels,
            num_classes=num_classes,
            levels=levels,
            base_features=base_features,
            max_features=max_features,
            norm=norm,
            deep_supervision=deep_supervision,
            skip_connections=skip_connections,
            skip_mode=skip_mode,
        )

        f = self.features
        self.encoder = nn.ModuleList(
            ConvBlock(in_channels if i == 0 else f[i - 1], f[i], norm, stride=1 if i == 0 else 2)
            for i in range(levels)
        )
        # Decoder stage i brings level i+1 up to level i.
        self.upsample = nn.ModuleList(
            nn.ConvTranspose3d(f[i + 1], f[i], kernel_size=2, stride=2, bias=False)
            for i in range(levels - 1)
        )
        self.decoder = nn.ModuleList(
            ConvBlock(f[i] * (2 if skip_mode in ("concat", "lowpass") else 1), f[i], norm) for i in range(levels - 1)
        )
        heads = range(levels - 1) if deep_supervision else range(min(1, levels - 1))
        self.heads = nn.ModuleList(nn.Conv3d(f[i], num_classes, 1) for i in heads)
        if levels == 1:  # degenerate: a single stage, no decoder
            self.heads = nn.ModuleList([nn.Conv3d(f[0], num_classes, 1)])

    @property
    def divisor(self) -> int:
        """Patch sizes must be multiples of this (one factor 2 per downsampling)."""
        return 2 ** (self.levels - 1)

    def check_patch_size(self, patch_size: Sequence[int]) -> None:
        bad = [p for p in patch_size if p < self.divisor or p % self.divisor]
        if bad:
            raise BrainsegError(
                f"patch size {list(patch_size)} cannot be divided by the model's "
                f"{self.levels - 1} downsamplings: each side must be a multiple of {self.divisor}"
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
            x = _match_size(self.upsample[i](x), skip.shape[2:])
            if self.skip_mode == "add":
                x = x + skip
            elif self.skip_mode != "none":
                if self.skip_mode == "lowpass":
                    skip = _low_pass(skip, 2 ** (self.levels - 1 - i))
                x = torch.cat([skip, x], dim=1)
            x = self.decoder[i](x)
            if self.deep_supervision and self.training:
                outputs.append(self.heads[i](x))
        if self.deep_supervision and self.training:
            return outputs[::-1]  # finest first
        return self.heads[0](x)


def build_model(in_channels: int, num_classes: int, **kwargs) -> UNet3D:
    """Build a :class:`UNet3D` from model-card keyword arguments."""
    return UNet3D(in_channels=in_channels, num_classes=num_classes, **kwargs)
