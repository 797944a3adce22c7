"""Training patches: where to cut them, and cutting them (with spatial augmentation).

Locations are explicit: a patch is defined by its centre (in voxels of the cached,
preprocessed case) and an optional 3x3 matrix (rotation x scaling) mapping patch
offsets to case offsets. Without a matrix the patch is a plain slice; with one, only
the bounding box of the transformed patch is read from the memory-mapped case and
resampled once (trilinear image, nearest labels). Anything outside the case is
padded with the case's background (the image with ``fill``, its per-channel
normalised background value, see :class:`~brainseg.preprocessing.preprocess.PreprocessRecord`;
labels with 0), so cases smaller than the patch work.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def random_center(shape: Sequence[int], patch: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """A centre such that the patch lies inside the case where it can."""
    out = []
    for s, p in zip(shape, patch):
        lo, hi = p / 2.0, s - p / 2.0
        out.append(rng.uniform(lo, hi) if hi > lo else s / 2.0)
    return np.asarray(out)


def foreground_center(locations: dict[int, np.ndarray], rng: np.random.Generator) -> np.ndarray | None:
    """Centre on a voxel of a randomly chosen foreground class present in the case."""
    classes = [c for c, v in locations.items() if len(v)]
    if not classes:
        return None
    cls = classes[int(rng.integers(len(classes)))]
    coords = locations[cls]
    return coords[int(rng.integers(len(coords)))].astype(np.float64) + 0.5


def region_locations(locations: dict[int, np.ndarray], table: np.ndarray) -> dict[int, np.ndarray]:
    """Per region index, the stored voxels of its classes (``table``: (K, R) class -> region), so
    :func:`foreground_center` picks a present region, then one of its voxels."""
    out = {}
    for r in range(table.shape[1]):
        parts = [v for c, v in sorted(locations.items()) if table[c, r] and len(v)]
        out[r] = np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.int32)
    return out


def _fill_values(fill: Sequence[float] | None, n_channels: int) -> np.ndarray:
    """Per-channel padding values as a (C, 1, 1, 1) float32 array (zeros when ``fill`` is None)."""
    values = np.zeros(n_channels, dtype=np.float32) if fill is None else np.asarray(fill, dtype=np.float32)
    if values.shape != (n_channels,):
        raise ValueError(f"{len(values)} padding values for {n_channels} channels")
    return values.reshape(n_channels, 1, 1, 1)


def read_box(array: np.ndarray, lo: Sequence[int], hi: Sequence[int], fill: np.ndarray | float = 0) -> np.ndarray:
    """``array[..., lo:hi]`` over the last three axes, padded with ``fill`` (broadcast to the
    leading axes: a (C, 1, 1, 1) array gives a value per channel) outside the array."""
    spatial = array.shape[-3:]
    src, dst = [], []
    for l, h, s in zip(lo, hi, spatial):
        a, b = max(l, 0), min(h, s)
        src.append(slice(a, max(a, b)))
        dst.append(slice(a - l, a - l + max(0, b - a)))
    out = np.empty(array.shape[:-3] + tuple(h - l for l, h in zip(lo, hi)), dtype=array.dtype)
    out[...] = fill
    out[(Ellipsis,) + tuple(dst)] = array[(Ellipsis,) + tuple(src)]
    return out


def extract_patch(
    image: np.ndarray,
    seg: np.ndarray,
    center: Sequence[float] | np.ndarray,
    patch: Sequence[int],
    matrix: np.ndarray | None = None,
    fill: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a (C, *patch) image patch and (*patch) label patch around ``center``; outside the
    case the image is ``fill`` (one value per channel, default 0) and the labels 0."""
    patch = [int(p) for p in patch]
    point = np.asarray(center, dtype=np.float64)
    pad = _fill_values(fill, image.shape[0])
    if matrix is None:
        lo = [int(np.floor(c - p / 2.0)) for c, p in zip(point, patch)]
        hi = [l + p for l, p in zip(lo, patch)]
        return read_box(image, lo, hi, pad).astype(np.float32, copy=False), read_box(seg, lo, hi)

    m = np.asarray(matrix, dtype=np.float64)
    if not np.any(m - np.diag(np.diag(m))):  # scaling only: axis-aligned, separable
        return _extract_scaled(image, seg, point, patch, np.diag(m), pad)

    # Output voxel o (patch index) reads the case at M @ (o - (p - 1) / 2) + centre - 0.5
    # (voxel-centre coordinates). Only the part of the transformed patch's bounding box
    # that lies inside the case is read; grid_sample's zero padding supplies the outside:
    # the box is sampled less its padding value, which is added back afterwards.
    half = (np.asarray(patch, dtype=np.float64) - 1.0) / 2.0
    origin = point - 0.5
    corners = np.array(np.meshgrid(*[[-h, h] for h in half], indexing="ij")).reshape(3, -1).T @ m.T
    spatial = image.shape[-3:]
    lo = [int(np.floor(v)) - 1 for v in corners.min(0) + origin]
    hi = [int(np.ceil(v)) + 2 for v in corners.max(0) + origin]
    inside_lo = [max(v, 0) for v in lo]
    inside_hi = [min(v, s) for v, s in zip(hi, spatial)]
    if all(h - l >= 2 for l, h in zip(inside_lo, inside_hi)):  # else read the zero-padded box
        lo, hi = inside_lo, inside_hi
    box_img = torch.from_numpy(np.ascontiguousarray(read_box(image, lo, hi, pad), dtype=np.float32) - pad)
    box_seg = torch.from_numpy(read_box(seg, lo, hi).astype(np.float32))
    size = np.array([h - l for l, h in zip(lo, hi)], dtype=np.float64)
    # normalised input coordinate (align_corners=True): n = 2 * index / (size - 1) - 1
    scale = 2.0 / (size - 1.0)
    a = scale[:, None] * m * half[None, :]  # acts on the output's normalised coordinate u = offset / half
    b = scale * (origin - np.asarray(lo, dtype=np.float64)) - 1.0
    # torch orders grid coordinates (x, y, z) = (W, H, D) = our (Z, Y, X): reverse the components.
    # The grid is affine in each output axis, so it is built by broadcasting three 1-D ramps
    # (one full-size pass; F.affine_grid's batched matrix product over every voxel is what
    # made spatially augmented patches slow on the CPU).
    a_t = torch.from_numpy(np.ascontiguousarray(a[::-1], dtype=np.float32))
    b_t = torch.from_numpy(np.ascontiguousarray(b[::-1], dtype=np.float32))
    u = [torch.linspace(-1.0, 1.0, p) for p in patch]
    grid = u[0][:, None, None, None] * a_t[:, 0] + u[1][None, :, None, None] * a_t[:, 1]
    grid = (grid + (u[2][None, None, :, None] * a_t[:, 2] + b_t))[None]
    img = F.grid_sample(box_img[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    lab = F.grid_sample(box_seg[None, None], grid, mode="nearest", padding_mode="zeros", align_corners=True)[0, 0]
    return img.numpy() + pad, lab.numpy().astype(seg.dtype)


def _extract_scaled(
    image: np.ndarray, seg: np.ndarray, center: np.ndarray, patch: Sequence[int], scale: np.ndarray, pad: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`extract_patch` for a diagonal matrix, one axis at a time.

    The same samples as the grid_sample path (trilinear is the product of three linear
    interpolations; nearest rounds half to even like grid_sample; ``pad`` outside the case),
    to float rounding, at a fraction of the cost: three 1-D passes instead of one 3-D
    gather per voxel. ``pad``: (C, 1, 1, 1) image values outside the case.
    """
    coords = [s * (np.arange(p, dtype=np.float64) - (p - 1) / 2.0) + c - 0.5 for s, p, c in zip(scale, patch, center)]
    spatial = image.shape[-3:]
    # the part of the case under the patch, framed by one voxel of padding values
    lo = [max(int(np.floor(x.min())), 0) for x in coords]
    hi = [min(int(np.floor(x.max())) + 2, n) for x, n in zip(coords, spatial)]
    if any(h <= l for l, h in zip(lo, hi)):
        lo, hi = [0, 0, 0], [0, 0, 0]
    inner = (Ellipsis,) + tuple(slice(1, h - l + 1) for l, h in zip(lo, hi))
    img = torch.from_numpy(np.broadcast_to(pad, image.shape[:-3] + tuple(h - l + 2 for l, h in zip(lo, hi))).copy())
    img[inner] = torch.from_numpy(np.ascontiguousarray(read_box(image, lo, hi, pad), dtype=np.float32))
    lab = np.zeros(tuple(h - l + 2 for l, h in zip(lo, hi)), dtype=seg.dtype)
    lab[inner] = read_box(seg, lo, hi)
    nearest = []
    for axis, (x, l, h) in enumerate(zip(coords, lo, hi)):
        size = h - l + 2  # box extent along this axis (padded)
        local = x - (l - 1)  # index into the padded box
        i0 = np.floor(local)
        w = (local - i0).astype(np.float32)
        i0 = i0.astype(np.int64)
        i1 = i0 + 1
        # taps outside the padded box read its border of padding values (index 0 or size - 1)
        out0, out1 = (i0 < 0) | (i0 > size - 1), (i1 < 0) | (i1 > size - 1)
        i0 = np.where(out0, 0, i0)
        i1 = np.where(out1, 0, i1)
        dim = axis + 1
        first = img.index_select(dim, torch.from_numpy(i0))
        second = img.index_select(dim, torch.from_numpy(i1))
        view = [1, 1, 1, 1]
        view[dim] = len(w)
        img = first.lerp_(second, torch.from_numpy(w).view(view))
        r = np.rint(local).astype(np.int64)
        nearest.append(np.where((r < 0) | (r > size - 1), 0, r))
    labels = lab[np.ix_(*nearest)]
    return img.numpy(), labels
