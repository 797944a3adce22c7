"""The voxel decision: class probabilities to class indices (argmax with per-class offsets) or
region probabilities to label values (a threshold per region, labels written by the class
order), within the input's non-zero region where the ``input_mask`` rule asks; and BraTS's
enhancing-tumour rule for region models (:func:`innermost_rule`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import get_args

import numpy as np

from brainseg.config import InputMask
from brainseg.io.images import voxel_volume
from brainseg.labels.regions import Regions


def probabilities_to_labels(probs: np.ndarray) -> np.ndarray:
    """Argmax over the class axis of a (C, X, Y, Z) array of scores or probabilities.

    Returns uint8 when every class index fits (C <= 256, indices 0..255), else int16.
    Ties go to the lowest class index (numpy's argmax). Scores must be finite: a NaN
    wins the argmax wherever it occurs.
    """
    probs = np.asarray(probs)
    if probs.ndim != 4:
        raise ValueError(f"expected a (C, X, Y, Z) array, got shape {probs.shape}")
    n_classes = probs.shape[0]
    if n_classes < 1:
        raise ValueError("the class axis is empty")
    if n_classes - 1 > np.iinfo(np.int16).max:
        raise ValueError(f"{n_classes} classes do not fit an int16 label map")
    dtype = np.uint8 if n_classes - 1 <= np.iinfo(np.uint8).max else np.int16
    return np.argmax(probs, axis=0).astype(dtype)


#: What ``postprocess.input_mask`` may name.
INPUT_MASK_MODES: tuple[InputMask, ...] = get_args(InputMask)


def labels_within_input(
    probs: np.ndarray, nonzero: np.ndarray, mode: InputMask = "none", weights: np.ndarray | None = None
) -> np.ndarray:
    """Class indices from probabilities, using where the input scan is non-zero; with
    ``weights`` (C,) each class's probability is scaled by its weight before the argmax
    (the card's class offsets, ``exp(offset)``, chosen on the validation cases).

    ``mode`` (``postprocess.input_mask``):

    * ``"none"``: plain argmax.
    * ``"restrict"``: voxels where every input channel is exactly 0 are background
      (skull-stripped or defaced inputs: nothing is ever found outside the head/brain).
    * ``"fill"``: additionally every non-zero voxel takes its most likely *foreground*
      class (skull-stripped tissue segmentation, where the brain mask is the input's
      support: background exactly where the scan is 0).
    """
    if mode not in INPUT_MASK_MODES:
        raise ValueError(f"postprocess.input_mask must be one of {INPUT_MASK_MODES}, got {mode!r}")
    if weights is not None:
        probs = np.asarray(probs) * np.asarray(weights, dtype=np.float32).reshape(-1, *([1] * (np.ndim(probs) - 1)))
    if mode == "fill" and probs.shape[0] > 1:
        labels = probabilities_to_labels(probs[1:])
        labels += 1
    else:
        labels = probabilities_to_labels(probs)
    if mode != "none":
        labels[~np.asarray(nonzero, dtype=bool)] = 0
    return labels


def background_outside_input_(maps: np.ndarray, nonzero: np.ndarray, mode: InputMask, regions: bool) -> np.ndarray:
    """In place, on (C, X, Y, Z) maps in the scan's grid: where the input-mask rule makes a voxel
    background (``mode`` not "none": every input channel 0, ``nonzero`` False), the maps say so: the
    background one-hot (with ``regions``, every region 0), and 0 in any channel after the scores (an
    ensemble's disagreement). Returns ``maps``.

    So the probabilities written beside a mask agree with it, and the quality score's sums over the
    scan measure the subject: a region network's whole-tumour sigmoid is near 1 in the zero frame
    around a skull-stripped brain, which the training patches never held."""
    if mode == "none":
        return maps
    outside = ~np.asarray(nonzero, dtype=bool)
    if outside.any():
        maps[:, outside] = 0.0
        if not regions:
            maps[0, outside] = 1.0
    return maps


def regions_within_input(
    probs: np.ndarray, nonzero: np.ndarray, mode: InputMask, regions: Regions, thresholds: Sequence[float]
) -> np.ndarray:
    """A label map (label values) from (R, X, Y, Z) region probabilities: region r holds where
    its probability reaches ``thresholds[r]``, and the regions write their labels in class order
    (:meth:`~brainseg.labels.regions.Regions.to_label_map`). ``mode`` "restrict" and "fill" both make
    voxels where every input channel is 0 background (for regions there is no "most likely
    foreground" to fill with); "none" leaves them."""
    if mode not in INPUT_MASK_MODES:
        raise ValueError(f"postprocess.input_mask must be one of {INPUT_MASK_MODES}, got {mode!r}")
    probs = np.asarray(probs)
    masks = probs >= np.asarray(thresholds, dtype=probs.dtype).reshape((-1,) + (1,) * (probs.ndim - 1))
    labels = regions.to_label_map(masks, dtype=np.uint8 if max(regions.class_order) <= 255 else np.int16)
    if mode != "none":
        labels[~np.asarray(nonzero, dtype=bool)] = 0
    return labels


def innermost_rule(labels: np.ndarray, spacing: Sequence[float], regions: Regions, min_mm3: float) -> np.ndarray:
    """The enhancing-tumour rule (BraTS): when the innermost region's label (the last of the class
    order, ET = 4) covers less than ``min_mm3`` mm^3 of the whole case, those voxels take the label
    of the region before it (TC's, necrosis = 1); a new array. ``min_mm3`` 0: unchanged."""
    out = np.array(labels, copy=True)
    inner, outer = regions.innermost
    if min_mm3 <= 0:
        return out
    where = out == inner
    if 0 < np.count_nonzero(where) * voxel_volume(spacing) < min_mm3:
        out[where] = outer
    return out


#: The volumes (mm^3) training tries for the enhancing-tumour rule (0 = off), BraTS-sized:
#: a false-positive ET speck is tens to hundreds of mm^3, a real one thousands.
INNERMOST_CANDIDATES_MM3 = (0.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
