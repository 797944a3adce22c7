"""Intensity normalisation per channel, with statistics over the whole case's foreground (never
per patch): ``zscore``, ``quantile`` (percentile landmarks mapped onto a standard normal's),
``ct`` (clip to the training set's foreground percentiles, then z-score; the statistics are
kept in the model card as :class:`ChannelIntensity`) or ``none``; and the value the
background takes after normalisation (what padding uses).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, get_args

import numpy as np

from brainseg.config import NormalizationScheme
from brainseg.preprocessing.foreground import SAMPLE


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


#: Percentile levels of the ``quantile`` scheme's landmarks.
QUANTILE_LEVELS = (0.5, 2.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 98.0, 99.5)


#: What ``data.normalization`` may name.
NORMALIZATIONS: tuple[NormalizationScheme, ...] = get_args(NormalizationScheme)


#: nnU-Net's rule: the statistics come from the subject mask of a zero-background case only
#: when cropping to it kept less than this fraction of the volume (else the zeros are part of
#: the image, e.g. a zero-filled rim of the field of view, and every voxel counts).
MASK_FOR_NORM_BELOW = 0.75


def ct_normalise(x: np.ndarray, stats) -> np.ndarray:
    """The ``ct`` scheme on one channel: clip to the data set's foreground 0.5-99.5
    percentiles, z-score with its mean and std (a :class:`~brainseg.preprocessing.normalisation.ChannelIntensity`)."""
    out = np.clip(x, np.float32(stats.percentile_00_5), np.float32(stats.percentile_99_5)).astype(np.float32)
    out -= np.float32(stats.mean)
    out /= np.float32(stats.std)
    return out


def _quantile_map(x: np.ndarray, landmarks: np.ndarray, targets: np.ndarray, std: float) -> np.ndarray:
    """Piecewise-linear map of ``x`` through (landmarks -> targets); beyond the end landmarks
    the z-score slope 1/std continues the line. float32 in, float32 out."""
    out = np.interp(x, landmarks, targets).astype(np.float32)
    low, high = x < landmarks[0], x > landmarks[-1]
    out[low] = (targets[0] + (x[low] - landmarks[0]) / std).astype(np.float32)
    out[high] = (targets[-1] + (x[high] - landmarks[-1]) / std).astype(np.float32)
    return out


def normalise(
    data: np.ndarray, mask: np.ndarray, scheme: NormalizationScheme, intensity: Sequence | None = None
) -> tuple[np.ndarray, list[float], list[float], np.ndarray]:
    """Normalise every voxel of (C, X, Y, Z) with statistics of the voxels in ``mask``.

    ``zscore``: (x - mean) / std (nnU-Net's MR scheme). ``quantile``: a rank-based z-score,
    the foreground's percentiles (``QUANTILE_LEVELS``) mapped piecewise linearly onto those
    of a standard normal distribution (the same as ``zscore`` for Gaussian intensities, and
    unchanged by any monotone intensity change: scale, offset, gamma, a contrast curve;
    Nyul-Udupa-style histogram standardisation). ``ct``: :func:`ct_normalise` with the data
    set's ``intensity`` per channel (``mask`` is not used). ``none``: unchanged. Returns
    ``(normalised, means, stds, raw_zero)`` with ``raw_zero`` (C,) the value a raw 0 becomes,
    bit for bit as in the volume.
    """
    from scipy.special import ndtri

    if scheme not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {scheme!r}; known: {', '.join(NORMALIZATIONS)}")
    if scheme == "none":
        c = data.shape[0]
        return np.ascontiguousarray(data, dtype=np.float32), [0.0] * c, [1.0] * c, np.zeros(c, np.float32)
    if scheme == "ct":
        if intensity is None or len(intensity) != data.shape[0]:
            raise ValueError(
                f"the ct normalization needs the data set's intensities for each of {data.shape[0]} channel(s)"
            )
        out = np.stack([ct_normalise(ch, st) for ch, st in zip(data, intensity)])
        raw_zero = np.array([ct_normalise(np.zeros(1, np.float32), st)[0] for st in intensity], dtype=np.float32)
        return out, [float(st.mean) for st in intensity], [float(st.std) for st in intensity], raw_zero
    out, means, stds = zscore_foreground(data, mask)
    raw_zero = (np.float32(0.0) - np.asarray(means, dtype=np.float32)) / np.asarray(stds, dtype=np.float32)
    if scheme == "quantile":
        targets = ndtri(np.asarray(QUANTILE_LEVELS) / 100.0)
        raw_zero = np.empty(data.shape[0], dtype=np.float32)
        for c in range(data.shape[0]):
            vals = data[c][mask] if mask.any() else data[c].ravel()
            if vals.size > SAMPLE:
                vals = vals[:: int(np.ceil(vals.size / SAMPLE))]
            landmarks = np.percentile(vals, QUANTILE_LEVELS).astype(np.float64)
            # strictly increasing landmarks (ties, e.g. a flat histogram, get tiny steps)
            landmarks = np.maximum.accumulate(landmarks) + np.arange(len(landmarks)) * 1e-6 * max(stds[c], 1e-6)
            out[c] = _quantile_map(data[c].astype(np.float32, copy=False), landmarks, targets, stds[c])
            raw_zero[c] = _quantile_map(np.zeros(1, dtype=np.float32), landmarks, targets, stds[c])[0]
    return out, means, stds, raw_zero


def background_values(
    img: np.ndarray, raw_zero: float | np.ndarray, fg: np.ndarray, zero_background: bool
) -> list[float]:
    """Per channel, the background's value in the normalised ``img``: for an exact-zero
    background the one value its zeros became (``raw_zero``), else the median outside ``fg``."""
    if zero_background or fg.all():
        return [float(v) for v in np.broadcast_to(np.asarray(raw_zero, dtype=np.float32), (img.shape[0],))]
    return [float(np.median(ch[~fg])) for ch in img]


@dataclass(frozen=True)
class ChannelIntensity:
    """One channel's intensities over the training set's foreground (the ``ct`` scheme clips to
    the percentiles, then z-scores with the mean and std), as nnU-Net's fingerprint has them."""

    mean: float
    std: float
    percentile_00_5: float
    percentile_99_5: float

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ChannelIntensity:
        out = cls(**{k: float(raw[k]) for k in ("mean", "std", "percentile_00_5", "percentile_99_5")})
        values = list(asdict(out).values())
        if not all(math.isfinite(v) for v in values) or out.std <= 0 or out.percentile_00_5 > out.percentile_99_5:
            raise ValueError(f"intensity {out.to_dict()} needs finite values, std > 0 and ordered percentiles")
        return out
