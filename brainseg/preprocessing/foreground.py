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
    return fill_holes(~zero_voxels(data))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes(mask)`` (holes: background that cannot reach the array's
    border through face neighbours) in one labelling pass of the background instead of dilations
    repeated until nothing changes: the same mask, several times faster on a head's mask. Only the
    mask's box grown by one voxel is labelled: background outside the box always reaches the border."""
    mask = np.asarray(mask, dtype=bool)
    box = bounding_box(mask, margin=1)
    out = mask.copy()
    if box is not None:
        out[box] = _fill_holes_whole(mask[box])
    return out


def _fill_holes_whole(mask: np.ndarray) -> np.ndarray:
    """:func:`fill_holes` labelling the whole array."""
    background, n = ndimage.label(~mask)
    reaches_border = np.zeros(n + 1, dtype=bool)
    for axis in range(mask.ndim):
        for end in (0, -1):
            reaches_border[np.take(background, end, axis=axis)] = True
    reaches_border[0] = True  # label 0: the mask itself
    return mask | ~reaches_border[background]


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
    return fill_holes(mask)


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


def crop_fraction(box, shape) -> float:
    """The fraction of a volume of ``shape`` that the slices ``box`` keep (1.0 for None)."""
    if box is None:
        return 1.0
    return float(np.prod([s.stop - s.start for s in box]) / np.prod([int(n) for n in shape]))


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """The bounding box of a boolean mask as one slice per axis, or None when it is empty.

    The box is grown by ``margin`` voxels on every side and clipped to the array, so
    ``mask[bounding_box(mask, m)]`` always works; its bounds are plain ints.
    """
    mask = np.asarray(mask)
    slices = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        if hit.size == 0:
            return None
        lo = max(int(hit[0]) - margin, 0)
        hi = min(int(hit[-1]) + 1 + margin, int(mask.shape[axis]))
        slices.append(slice(lo, hi))
    return tuple(slices)
