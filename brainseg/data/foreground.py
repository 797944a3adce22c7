"""Where the subject is: a foreground that does not rely on exact zeros.

Two kinds of scan reach brainseg:

* **exact-zero background** (skull-stripped, defaced-and-masked, or resampled into a
  zero-filled frame): everything that is not the subject is exactly 0 in every
  channel. The non-zero voxels *are* the foreground.
* **noisy background** (a raw MR magnitude image, or CT, whose air is about -1000): the
  background is not exactly 0, and "non-zero" means the whole field of view.

Only zeros that reach the volume's border are background (:func:`subject_mask` fills the
holes of the non-zero region, as nnU-Net does): tissue that happens to be exactly 0
inside the subject (0 HU in a CT, a dark spot in a skull-stripped brain) is subject.
:func:`has_zero_background` decides which kind a case is (per case, recorded in its
preprocessing record); the foreground used for cropping and for the normalisation
statistics is the subject mask for the first kind (see preprocess, which resamples
it first) and :func:`threshold_mask` for the second (and for the ``ct`` scheme, whose
field of view may be zero-padded): a robust intensity threshold (20 % of the way from the 2nd to
the 98th percentile, per channel, union over channels; FSL BET uses 10 %, which the
tail of a strong Rician background crosses), an opening, the largest connected
component, a small closing and the holes filled (as nnU-Net fills the holes of its
non-zero mask, and skull-stripping tools keep one solid
component). Scale- and offset-free: only percentiles of each channel are used.
"""

from __future__ import annotations

from typing import Sequence

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


def subject_mask(data: np.ndarray) -> np.ndarray:
    """Every voxel but the exact zeros (in every channel) that reach the volume's border face
    by face: the non-zero voxels with their holes filled."""
    return ndimage.binary_fill_holes(~zero_voxels(data))


def has_zero_background(data: np.ndarray, subject: np.ndarray | None = None) -> bool:
    """Whether a case's background is exactly zero (see the module docstring); ``subject``:
    its :func:`subject_mask` if already computed."""
    zero = ~(subject_mask(data) if subject is None else subject)
    n_zero = int(np.count_nonzero(zero))
    if n_zero < MIN_ZERO_FRACTION * zero.size:
        return False
    solid = ndimage.binary_erosion(zero, border_value=1)
    return int(np.count_nonzero(solid)) >= MIN_SOLID_FRACTION * n_zero


def channel_threshold(channel: np.ndarray) -> float:
    """The robust object/background threshold of one channel's voxels: t2 + 20 % (t98 - t2)."""
    flat = channel.ravel()
    if flat.size > SAMPLE:
        flat = flat[:: int(np.ceil(flat.size / SAMPLE))]
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return 0.0
    lo, hi = np.percentile(flat, PERCENTILES)
    return float(lo + THRESHOLD_FRACTION * (hi - lo))


def largest_component_mask(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean mask (the mask itself when it has at most one)."""
    components, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, 3))
    if n <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def threshold_mask(data: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """The foreground of a noisy-background (C, X, Y, Z) case (see the module docstring);
    with ``valid`` only those voxels are looked at (a zero-padded field of view's inside)."""
    mask = np.zeros(data.shape[1:], dtype=bool)
    for channel in data:
        mask |= channel > channel_threshold(channel if valid is None or not valid.any() else channel[valid])
    if valid is not None:
        mask &= valid
    # an opening first: noise voxels above the threshold, and the thin bridges they make to
    # the subject, go (without it, a noisy background could join the subject's component)
    mask = ndimage.binary_opening(mask, structure=ndimage.generate_binary_structure(3, 1))
    if not mask.any():
        return np.ones(data.shape[1:], dtype=bool)
    mask = largest_component_mask(mask)
    mask = ndimage.binary_closing(mask, structure=ndimage.generate_binary_structure(3, 1), iterations=2)
    return ndimage.binary_fill_holes(mask)


def beyond_margin(mask: np.ndarray, spacing, margin_mm: float) -> np.ndarray:
    """Voxels farther than ``margin_mm`` (Euclidean, in mm) from every voxel of ``mask``."""
    if not mask.any():
        return np.zeros(mask.shape, dtype=bool)
    return ndimage.distance_transform_edt(~mask, sampling=[float(s) for s in spacing]) > float(margin_mm)


def far_background(image: np.ndarray, background, far_constant: bool) -> np.ndarray | None:
    """On a preprocessed noisy-background (C, X, Y, Z) case whose far noise was set to the
    background constant (``record.far_constant``), those voxels: background by construction.
    None otherwise (an exact-zero background's input-mask rule works on the scan itself)."""
    if not far_constant:
        return None
    fill = np.asarray(background, dtype=np.float32).reshape(-1, 1, 1, 1)
    return np.all(np.asarray(image) == fill, axis=0)


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
NORMALIZATIONS = ("zscore", "quantile", "none", "ct")
#: nnU-Net's rule: the statistics come from the subject mask of a zero-background case only
#: when cropping to it kept less than this fraction of the volume (else the zeros are part of
#: the image, e.g. a zero-filled rim of the field of view, and every voxel counts).
MASK_FOR_NORM_BELOW = 0.75


def crop_fraction(box, shape) -> float:
    """The fraction of a volume of ``shape`` that the slices ``box`` keep (1.0 for None)."""
    if box is None:
        return 1.0
    return float(np.prod([s.stop - s.start for s in box]) / np.prod([int(n) for n in shape]))


def ct_normalise(x: np.ndarray, stats) -> np.ndarray:
    """The ``ct`` scheme on one channel: clip to the data set's foreground 0.5-99.5
    percentiles, z-score with its mean and std (a :class:`~brainseg.card.ChannelIntensity`)."""
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
    data: np.ndarray, mask: np.ndarray, scheme: str, intensity: Sequence | None = None
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
            raise ValueError(f"the ct normalization needs the data set's intensities for each of {data.shape[0]} channel(s)")
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


def background_values(img: np.ndarray, raw_zero: float | np.ndarray, fg: np.ndarray, zero_background: bool) -> list[float]:
    """Per channel, the background's value in the normalised ``img``: for an exact-zero
    background the one value its zeros became (``raw_zero``), else the median outside ``fg``."""
    if zero_background or fg.all():
        return [float(v) for v in np.broadcast_to(np.asarray(raw_zero, dtype=np.float32), (img.shape[0],))]
    return [float(np.median(ch[~fg])) for ch in img]
