"""What a scan looks like, measured the same way for the training fingerprint and for a scan to
predict: per channel the foreground's intensity percentiles, mean and std, whether the
background is exactly zero and how intensity correlates with depth into the subject (its sign
turns with the contrast); the foreground's extent in mm; the grid's obliquity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from brainseg.io.images import Geometry
from brainseg.preprocessing.foreground import (
    bounding_box,
    has_zero_background,
    subject_mask,
    threshold_mask,
)
from brainseg.preprocessing.preprocess import to_ras

#: Percentiles of each channel's foreground intensities kept per case.
LEVELS = (0.5, 1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0, 99.5)


#: At most this many foreground voxels per channel go into the percentiles.
SAMPLE = 1_000_000


@dataclass
class ChannelStats:
    #: ``LEVELS`` percentiles of the foreground's intensities.
    percentiles: list[float]
    mean: float
    std: float
    #: The background is exactly zero (a skull-stripped or masked scan).
    zero_background: bool
    #: Spearman correlation of intensity with depth into the foreground (mm from its rim):
    #: positive where the inside is brighter than the rim (T1: white matter in, CSF out),
    #: unchanged by scale, offset or gamma; its sign turns with the contrast.
    depth_correlation: float = 0.0

    @property
    def profile(self) -> list[float]:
        """The 5/25/50/75/95 percentiles on the 1-99 range mapped to [0, 1]: the histogram's
        shape, unchanged by scale and offset (a flipped contrast turns q into 1 - q)."""
        p = dict(zip(LEVELS, self.percentiles))
        lo, hi = p[1.0], p[99.0]
        span = hi - lo if hi > lo else 1.0
        return [(p[q] - lo) / span for q in (5.0, 25.0, 50.0, 75.0, 95.0)]


def obliquity(affine: np.ndarray) -> float:
    """The largest angle (degrees) between a voxel axis and the world axis nearest to it."""
    rot = np.asarray(affine, dtype=float)[:3, :3]
    cols = rot / np.maximum(np.linalg.norm(rot, axis=0), 1e-12)
    return float(max(math.degrees(math.acos(min(1.0, float(np.max(np.abs(c)))))) for c in cols.T))


#: Voxels drawn for the depth correlation.
DEPTH_SAMPLE = 200_000


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.arange(x.size, dtype=np.float64)
    return ranks


def depth_correlation(channel: np.ndarray, foreground: np.ndarray, depth: np.ndarray) -> float:
    """Spearman correlation of a channel's foreground intensities with ``depth`` (ties broken by order)."""
    where = np.flatnonzero(foreground)
    if where.size < 10:
        return 0.0
    where = where[:: int(np.ceil(where.size / DEPTH_SAMPLE))]
    a, b = _ranks(channel.ravel()[where]), _ranks(depth.ravel()[where])
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def channel_stats(
    channel: np.ndarray, foreground: np.ndarray, zero_background: bool, depth: np.ndarray
) -> ChannelStats:
    values = channel[foreground] if foreground.any() else channel.ravel()
    if values.size > SAMPLE:
        values = values[:: int(np.ceil(values.size / SAMPLE))]
    values = values.astype(np.float64)
    return ChannelStats(
        percentiles=[float(v) for v in np.percentile(values, LEVELS)],
        mean=float(values.mean()),
        std=float(values.std()),
        zero_background=bool(zero_background),
        depth_correlation=round(depth_correlation(channel, foreground, depth), 4),
    )


#: Scans of more voxels than this are measured on every k-th voxel per axis (k the smallest that
#: brings them under it). The statistics describe the whole subject (percentiles, the depth
#: correlation, the extent), and on a 1 mm brain the foreground and its distance transform at full
#: resolution took longer than reading the scan (about 0.2 s of a 2.7 MVox scan's 1.7 s prediction).
STATS_VOXELS = 1_000_000


def decimation(shape) -> int:
    """The smallest step k per axis that leaves at most :data:`STATS_VOXELS` voxels of ``shape``."""
    n, k = float(np.prod([int(s) for s in shape])), 1
    while n / k**3 > STATS_VOXELS:
        k += 1
    return k


def scan_statistics(
    data: np.ndarray, geom: Geometry, subject: np.ndarray | None = None
) -> tuple[list[ChannelStats], list[float], np.ndarray]:
    """Per channel statistics, the foreground's extent (mm per RAS axis) and the foreground
    of a (C, X, Y, Z) scan: what the fingerprint and the out-of-distribution check compare
    (``subject``: its :func:`subject_mask`, when the caller has it). A scan of more than
    :data:`STATS_VOXELS` voxels is measured on every k-th voxel (:func:`decimation`), whose
    voxels are k times the size: the foreground returned is on that grid."""
    k = decimation(data.shape[1:])
    if k > 1:
        data = data[:, ::k, ::k, ::k]
        subject = None if subject is None else subject[::k, ::k, ::k]
    spacing = np.asarray(geom.spacing, dtype=float) * k
    foreground, zero_bg = scan_foreground(data, subject)
    depth = depth_into(foreground, spacing)
    box = bounding_box(foreground)
    extent_vox = np.array([s.stop - s.start for s in box] if box is not None else data.shape[1:])
    extent = [round(v, 2) for v in to_ras(extent_vox * spacing, geom)]
    return [channel_stats(c, foreground, zero_bg, depth) for c in data], extent, foreground


def depth_into(foreground: np.ndarray, spacing) -> np.ndarray:
    """mm from each foreground voxel to the nearest background voxel of the array (0 outside),
    computed on the foreground's box grown by one voxel within the array: the same values as
    over the whole array (the grown box's rim is background, or the array's own edge), in a
    fraction of the time where the subject fills a fifth of its scan."""
    depth = np.zeros(foreground.shape, dtype=np.float64)
    box = bounding_box(foreground, margin=1)
    if box is not None:
        depth[box] = ndimage.distance_transform_edt(foreground[box], sampling=[float(s) for s in spacing])
    return depth


def scan_foreground(data: np.ndarray, subject: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """The subject's voxels of a (C, X, Y, Z) scan as preprocessing finds them, and whether
    its background is exactly zero."""
    subject = subject_mask(data) if subject is None else subject
    zero_bg = has_zero_background(data, subject)
    return (subject if zero_bg else threshold_mask(data)), zero_bg
