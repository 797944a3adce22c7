"""Training patches: where to cut them, and cutting them (with spatial augmentation).

Locations are explicit: a patch is defined by its centre (in voxels of the cached,
preprocessed case) and an optional 3x3 matrix (rotation x scaling) mapping patch
offsets to case offsets. Without a matrix the patch is a plain slice; with one, only
the bounding box of the transformed patch is read from the memory-mapped case and
resampled once (trilinear image, nearest labels). Anything outside the case is
zero-padded (image 0 = the normalised background, label 0 = background), so cases
smaller than the patch work.
"""

from __future__ import annotations

from typing import Sequence

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


def foreground_center(
    locations: dict[int, np.ndarray], rng: np.random.Generator
) -> np.ndarray | None:
    """Centre on a voxel of a randomly chosen foreground class present in the case."""
    classes = [c for c, v in locations.items() if len(v)]
    if not classes:
        return None
    cls = classes[int(rng.integers(len(classes)))]
    coords = locations[cls]
    return coords[int(rng.integers(len(coords)))].astype(np.float64) + 0.5


def read_box(array: np.ndarray, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    """``array[..., lo:hi]`` over the last three axes, zero-padded outside the array."""
    spatial = array.shape[-3:]
    src, dst = [], []
    for l, h, s in zip(lo, hi, spatial):
        a, b = max(l, 0), min(h, s)
        src.append(slice(a, max(a, b)))
        dst.append(slice(a - l, a - l + max(0, b - a)))
    out = np.zeros(array.shape[:-3] + tuple(h - l for l, h in zip(lo, hi)), dtype=array.dtype)
    out[(Ellipsis,) + tuple(dst)] = array[(Ellipsis,) + tuple(src)]
    return out


def extract_patch(
    image: np.ndarray,
    seg: np.ndarray,
    center: Sequence[float],
    patch: Sequence[int],
    matrix: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a (C, *patch) image patch and (*patch) label patch around ``center``."""
    patch = [int(p) for p in patch]
    center = np.asarray(center, dtype=np.float64)
    if matrix is None:
        lo = [int(np.floor(c - p / 2.0)) for c, p in zip(center, patch)]
        hi = [l + p for l, p in zip(lo, patch)]
        return read_box(image, lo, hi).astype(np.float32, copy=False), read_box(seg, lo, hi)

    # Patch voxel offsets from its centre, mapped into case coordinates.
    offsets = [torch.arange(p, dtype=torch.float32) - (p - 1) / 2.0 for p in patch]
    grid = torch.stack(torch.meshgrid(*offsets, indexing="ij"), dim=-1)  # (*patch, 3)
    m = torch.as_tensor(matrix, dtype=torch.float32)
    coords = grid @ m.T + torch.as_tensor(center - 0.5, dtype=torch.float32)  # voxel-centre coords
    corners = np.array([[o[0], o[-1]] for o in offsets])
    corner_pts = np.array(np.meshgrid(*corners, indexing="ij")).reshape(3, -1).T @ np.asarray(matrix).T
    lo = [int(np.floor(v)) - 1 for v in (corner_pts.min(0) + center - 0.5)]
    hi = [int(np.ceil(v)) + 2 for v in (corner_pts.max(0) + center - 0.5)]
    box_img = torch.from_numpy(read_box(image, lo, hi).astype(np.float32, copy=False))
    box_seg = torch.from_numpy(read_box(seg, lo, hi).astype(np.float32))
    size = torch.tensor([h - l for l, h in zip(lo, hi)], dtype=torch.float32)
    local = coords - torch.tensor(lo, dtype=torch.float32)
    norm = 2.0 * local / (size - 1) - 1.0  # align_corners=True convention
    norm = norm.flip(-1)[None]  # grid_sample wants (x=W, y=H, z=D) = our (Z, Y, X)
    img = F.grid_sample(box_img[None], norm, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    lab = F.grid_sample(box_seg[None, None], norm, mode="nearest", padding_mode="zeros", align_corners=True)[0, 0]
    return img.numpy(), lab.numpy().astype(seg.dtype)
