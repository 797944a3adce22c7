"""Separable linear resampling to a target voxel size, exact at the first voxel centre.

The new voxel centres span the old ones' extent; images are interpolated per axis
(:func:`resample_linear`), label maps by one-hot linear interpolation then argmax
(:func:`resample_labels`), so no label shifts by half a voxel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

#: Voxel sizes within this relative tolerance of the target are not resampled.
SPACING_RTOL = 0.01


def needs_resampling(spacing: Sequence[float], target: Sequence[float]) -> bool:
    return any(abs(s - t) > SPACING_RTOL * t for s, t in zip(spacing, target))


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> list[int]:
    if not needs_resampling(spacing, target):
        return [int(s) for s in shape]
    # The new voxel centres span the old ones' extent: (n - 1) old steps = (N - 1) new steps, rounded.
    return [int(np.round((n - 1) * s / t)) + 1 for n, s, t in zip(shape, spacing, target)]


def grid_taps(n_in: int, n_out: int, step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-D linear interpolation from ``n_in`` samples to ``n_out`` samples, output sample ``j``
    at input coordinate ``j * step`` (first centres coincide; past the last input sample
    its value is taken).

    Returns, per output sample, the two input indices and the weight of the second.
    """
    x = np.clip(np.arange(n_out, dtype=np.float64) * float(step), 0.0, float(n_in - 1))
    i0 = np.minimum(np.floor(x).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, x - i0


def resample_steps(spacing: Sequence[float], target: Sequence[float]) -> list[float]:
    """Per axis, how far one voxel of the ``target`` grid moves in voxels of the ``spacing`` grid."""
    return [float(t) / float(s) for s, t in zip(spacing, target)]


def _lerp_axis(t: torch.Tensor, dim: int, i0: np.ndarray, i1: np.ndarray, w: np.ndarray) -> torch.Tensor:
    """Linear interpolation along one axis of ``t`` with the given taps (:func:`grid_taps`)."""
    first = t.index_select(dim, torch.from_numpy(i0).to(t.device))
    second = t.index_select(dim, torch.from_numpy(i1).to(t.device))
    view = [1] * t.ndim
    view[dim] = len(w)
    return first.lerp_(second, torch.from_numpy(w.astype(np.float32)).to(t.device).view(view))


def resample_linear(
    t: torch.Tensor, shape: Sequence[int], steps: Sequence[float], max_elements: int = 2**22
) -> torch.Tensor:
    """Separable (tri)linear resampling of the last three axes of ``t`` to ``shape``, output
    voxel ``j`` read at input coordinate ``j * step`` per axis (:func:`grid_taps`).

    Computed in slabs along the first of the three axes, each of about ``max_elements``
    values: besides the input and the output only a slab's temporaries are held (one
    axis after the other over the whole volume held two more copies of it).
    """
    lead = tuple(t.shape[:-3])
    taps = []
    for n_in, n_out, step in zip(t.shape[-3:], shape, steps):
        identity = int(n_in) == int(n_out) and float(step) == 1.0
        taps.append(None if identity else grid_taps(int(n_in), int(n_out), float(step)))
    if all(tp is None for tp in taps):
        return t
    out = torch.empty(lead + tuple(int(v) for v in shape), dtype=t.dtype, device=t.device)
    per_row = max(1, int(np.prod(lead, dtype=np.int64)) * int(shape[1]) * int(shape[2]))
    rows = max(1, max_elements // per_row)
    for s in range(0, int(shape[0]), rows):
        e = min(s + rows, int(shape[0]))
        if taps[0] is None:
            block = t[..., s:e, :, :]
        else:
            i0, i1, w = (a[s:e] for a in taps[0])
            lo, hi = int(i0.min()), int(i1.max()) + 1
            block = _lerp_axis(t[..., lo:hi, :, :], -3, i0 - lo, i1 - lo, w)
        for dim, tp in ((-2, taps[1]), (-1, taps[2])):
            if tp is not None:
                block = _lerp_axis(block, dim, *tp)
        out[..., s:e, :, :] = block
    return out


def resample_image(data: np.ndarray, shape: Sequence[int], steps: Sequence[float]) -> np.ndarray:
    """Trilinear resampling of (C, X, Y, Z) float32 to ``shape`` (see :func:`resample_linear`)."""
    if list(data.shape[1:]) == list(shape) and all(s == 1.0 for s in steps):
        return data
    t = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    return resample_linear(t, shape, steps).numpy()


def resample_labels(labels: np.ndarray, shape: Sequence[int], steps: Sequence[float]) -> np.ndarray:
    """Resample an integer label map by interpolating each class's mask and re-argmaxing."""
    if list(labels.shape) == list(shape) and all(s == 1.0 for s in steps):
        return labels
    values = np.unique(labels)
    lab = torch.from_numpy(labels.astype(np.int64, copy=False))
    best = torch.full(tuple(shape), -1.0)
    out = torch.zeros(tuple(shape), dtype=torch.int16)
    for v in values:
        score = resample_linear((lab == int(v)).float(), shape, steps)
        better = score > best
        best = torch.where(better, score, best)
        out[better] = int(v)
    return out.numpy()
