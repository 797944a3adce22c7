"""Where the subject is: a foreground that does not rely on exact zeros.

Two kinds of scan reach brainseg:

* **exact-zero background** (skull-stripped, defaced-and-masked, or resampled into a
  zero-filled frame): everything that is not the subject is exactly 0 in every
  channel. The non-zero voxels *are* the foreground.
* **noisy background** (a raw MR magnitude image): the background is noise, never
  exactly 0, and "non-zero" means the whole field of view.

:func:`has_zero_background` decides which kind a case is (per case, recorded in its
preprocessing record), and :func:`foreground_mask` returns the foreground used for
cropping and for the normalisation statistics: the non-zero voxels for the first
kind; for the second a robust intensity threshold (20 % of the way from the 2nd to
the 98th percentile, per channel, union over channels; FSL BET uses 10 %, which the
tail of a strong Rician background crosses), an opening, the largest connected
component, a small closing and the holes filled (as nnU-Net fills the holes of its
non-zero mask, and skull-stripping tools keep one solid
component). Scale- and offset-free: only percentiles of each channel are used.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: A case has an exact-zero background when at least this fraction of its voxels is 0 in
#: every channel ...
MIN_ZERO_FRACTION = 0.05
#: ... and at least this fraction of those zeros lies in solid zero regions (the voxel and
#: its six face neighbours all 0): scattered zeros of an integer-valued noisy background
#: do not form solid regions, the background of a masked scan does.
MIN_SOLID_FRACTION = 0.5
#: Threshold of a noisy-background case: this fraction of the way from the low to the high
#: percentile of the channel.
THRESHOLD_FRACTION = 0.20
PERCENTILES = (2.0, 98.0)
#: At most this many voxels are read to estimate the percentiles.
SAMPLE = 2_000_000


def zero_voxels(data: np.ndarray) -> np.ndarray:
    """Voxels that are exactly 0 in every channel of a (C, X, Y, Z) or (X, Y, Z) array."""
    data = np.asarray(data)
    return np.all(data == 0, axis=0) if data.ndim == 4 else data == 0


def has_zero_background(data: np.ndarray) -> bool:
    """Whether a case's background is exactly zero (see the module docstring)."""
    zero = zero_voxels(data)
    n_zero = int(np.count_nonzero(zero))
    if n_zero < MIN_ZERO_FRACTION * zero.size:
        return False
    solid = ndimage.binary_erosion(zero, border_value=1)
    return int(np.count_nonzero(solid)) >= MIN_SOLID_FRACTION * n_zero


def channel_threshold(channel: np.ndarray) -> float:
    """The robust object/background threshold of one channel: t2 + 20 % (t98 - t2)."""
    flat = channel.ravel()
    if flat.size > SAMPLE:
        flat = flat[:: int(np.ceil(flat.size / SAMPLE))]
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return 0.0
    lo, hi = np.percentile(flat, PERCENTILES)
    return float(lo + THRESHOLD_FRACTION * (hi - lo))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    components, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, 3))
    if n <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def threshold_mask(data: np.ndarray) -> np.ndarray:
    """The foreground of a noisy-background (C, X, Y, Z) case (see the module docstring)."""
    mask = np.zeros(data.shape[1:], dtype=bool)
    for channel in data:
        mask |= channel > channel_threshold(channel)
    # an opening first: noise voxels above the threshold, and the thin bridges they make to
    # the subject, go (without it, a noisy background could join the subject's component)
    mask = ndimage.binary_opening(mask, structure=ndimage.generate_binary_structure(3, 1))
    if not mask.any():
        return np.ones(data.shape[1:], dtype=bool)
    mask = _largest_component(mask)
    mask = ndimage.binary_closing(mask, structure=ndimage.generate_binary_structure(3, 1), iterations=2)
    return ndimage.binary_fill_holes(mask)


def foreground_mask(data: np.ndarray, zero_background: bool) -> np.ndarray:
    """Boolean (X, Y, Z) foreground of a (C, X, Y, Z) case on its own grid; the whole volume if
    it would be empty. (Preprocessing, which resamples, takes the non-zero region's resampled
    mask >= 0.5 for an exact-zero background instead, so the interpolated rim stays out.)"""
    if zero_background:
        mask = ~zero_voxels(data)
        return mask if mask.any() else np.ones(mask.shape, dtype=bool)
    return threshold_mask(data)


def mask_bbox(mask: np.ndarray, margin: int = 0) -> list[list[int]]:
    """[start, stop) box of a boolean (X, Y, Z) mask grown by ``margin`` voxels (inside the
    volume); the whole volume if the mask is empty."""
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        if hit.size == 0:
            return [[0, int(s)] for s in mask.shape]
        box.append([max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, int(mask.shape[axis]))])
    return box


def zscore_foreground(data: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, list[float], list[float]]:
    """Z-score each channel of (C, X, Y, Z) with the mean and std of its voxels in ``mask``
    (default: its non-zero voxels), applied to every voxel."""
    out = np.empty_like(data, dtype=np.float32)
    means, stds = [], []
    for c in range(data.shape[0]):
        ch = data[c]
        where = (ch != 0) if mask is None else mask
        vals = ch[where] if where.any() else ch.ravel()
        mean = float(vals.mean(dtype=np.float64)) if vals.size else 0.0
        std = float(vals.std(dtype=np.float64)) if vals.size else 1.0
        std = std if std > 1e-8 else 1.0
        np.subtract(ch, np.float32(mean), out=out[c])
        out[c] /= np.float32(std)
        means.append(mean)
        stds.append(std)
    return out, means, stds


def background_values(img: np.ndarray, raw_zero: float | np.ndarray, fg: np.ndarray, zero_background: bool) -> list[float]:
    """Per channel, the background's value in the normalised ``img``: for an exact-zero
    background the one value its zeros became (``raw_zero``), else the median outside ``fg``."""
    if zero_background or fg.all():
        return [float(v) for v in np.broadcast_to(np.asarray(raw_zero, dtype=np.float32), (img.shape[0],))]
    return [float(np.median(ch[~fg])) for ch in img]
