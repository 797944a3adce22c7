"""The network's shape for a patch and a voxel size, and what a step costs.

Pooling and kernels per stage follow nnU-Net / dynamic-network-architectures: an axis is
pooled while its feature map stays at least ``MIN_FEATURE_MAP`` voxels and its voxel is
not more than twice the finest axis's (so an anisotropic axis waits until the others have
caught up), and its kernel is 1 instead of 3 while its voxel is more than twice the
finest's. The GPU memory estimate sums the feature maps a training step keeps for the
backward pass; the CPU step time is measured on this machine with the real network.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from brainseg.model.unet import UNet3D, divisors, feature_list

#: Pool an axis only while its feature map has at least this many voxels after pooling.
MIN_FEATURE_MAP = 4
#: An axis counts as coarse while its voxel is over this many times the finest one's.
ANISOTROPY = 2.0
#: Tensors kept per level and feature map for the backward pass (convolutions, norms,
#: activations of encoder and decoder, the concatenated skip), and a fixed CUDA overhead.
TENSORS_PER_LEVEL = 16
CUDA_OVERHEAD_GB = 1.5


@dataclass(frozen=True)
class Topology:
    levels: int
    #: Per downsampling, its stride per axis.
    strides: tuple[tuple[int, int, int], ...]
    #: Per level, the kernel per axis.
    kernels: tuple[tuple[int, int, int], ...]

    @property
    def divisor(self) -> tuple[int, int, int]:
        return divisors(self.strides)

    @property
    def isotropic(self) -> bool:
        return all(s == (2, 2, 2) for s in self.strides) and all(k == (3, 3, 3) for k in self.kernels)


def _per_axis(values: Iterable[int]) -> tuple[int, int, int]:
    """One value per spatial axis, as a fixed-length tuple."""
    x, y, z = values
    return x, y, z


def topology(patch: Sequence[int], spacing: Sequence[float], max_levels: int) -> Topology:
    """Strides and kernels for ``patch`` (voxels) at ``spacing`` (mm), at most ``max_levels`` levels."""
    size = [float(p) for p in patch]
    sp = [float(s) for s in spacing]
    strides: list[tuple[int, int, int]] = []
    kernels: list[tuple[int, int, int]] = []
    for _ in range(max_levels - 1):
        finest = min(sp)
        stride = _per_axis(
            2 if (s <= ANISOTROPY * finest and n / 2 >= MIN_FEATURE_MAP) else 1 for s, n in zip(sp, size)
        )
        if stride == (1, 1, 1):
            break
        kernels.append(_per_axis(1 if s > ANISOTROPY * finest else 3 for s in sp))
        strides.append(stride)
        size = [n / st for n, st in zip(size, stride)]
        sp = [s * st for s, st in zip(sp, stride)]
    finest = min(sp)
    kernels.append(_per_axis(1 if s > ANISOTROPY * finest else 3 for s in sp))
    return Topology(len(strides) + 1, tuple(strides), tuple(kernels))


def round_patch(patch: Sequence[float], divisor: Sequence[int], limit: Sequence[int] | None = None) -> list[int]:
    """Each side rounded to a multiple of its divisor (at least one), not past ``limit`` rounded up."""
    out = []
    for i, (p, d) in enumerate(zip(patch, divisor)):
        n = max(d, int(round(float(p) / d)) * d)
        if limit is not None:
            n = min(n, max(d, int(math.ceil(limit[i] / d)) * d))
        out.append(n)
    return out


def feature_map_elements(patch: Sequence[int], topo: Topology, base_features: int, max_features: int) -> int:
    """Feature-map elements of one sample summed over the levels."""
    size = [int(p) for p in patch]
    total = 0
    for level, f in enumerate(feature_list(topo.levels, base_features, max_features)):
        if level:
            size = [max(1, n // s) for n, s in zip(size, topo.strides[level - 1])]
        total += f * math.prod(size)
    return total


def gpu_memory_gb(
    patch: Sequence[int], topo: Topology, base_features: int, max_features: int, batch: int, bytes_per_element: int = 2
) -> float:
    """A training step's GPU memory (GB) at mixed precision, from the feature-map sizes."""
    elements = feature_map_elements(patch, topo, base_features, max_features) * batch * TENSORS_PER_LEVEL
    return elements * bytes_per_element / 1024**3 + CUDA_OVERHEAD_GB


def measure_step_seconds(
    patch: Sequence[int],
    topo: Topology,
    in_channels: int,
    num_classes: int,
    base_features: int,
    max_features: int,
    batch: int,
    steps: int = 3,
) -> float:
    """The median time of ``steps`` CPU training steps (forward, cross-entropy, backward, AdamW)
    of the real network on random data, after one warm-up step."""
    torch.manual_seed(0)
    net = UNet3D(
        in_channels,
        num_classes,
        levels=topo.levels,
        base_features=base_features,
        max_features=max_features,
        strides=topo.strides,
        kernels=topo.kernels,
    )
    net.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]  # the stub lacks memory_format
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(batch, in_channels, *patch).to(memory_format=torch.channels_last_3d)
    y = torch.randint(0, num_classes, (batch, *patch))
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]
