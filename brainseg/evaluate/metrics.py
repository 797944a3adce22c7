"""Segmentation metrics on numpy masks: Dice (one mask, per class) and HD95.

The one home of these definitions: ``brainseg evaluate`` (:mod:`brainseg.evaluate.per_label`),
the trainer's validation Dice and any comparison against another pipeline all score with them.

Conventions:

* Dice: both masks empty -> 1.0 (nothing to find, nothing found); exactly one empty
  -> 0.0. This equals MONAI's ``DiceMetric(ignore_empty=False)``; MONAI's default
  (``ignore_empty=True``) returns NaN for an empty reference instead.
* HD95 (mm): for each surface voxel of one mask, the Euclidean distance (voxel
  spacing applied) to the nearest surface voxel of the other; the 95th percentile
  (linear interpolation) of each direction; the larger of the two. The surface of a
  mask is the mask minus its erosion by the 6-connected cross (image border counts
  as outside). This is MONAI's ``compute_hausdorff_distance(percentile=95)``. Both
  empty -> 0.0; exactly one empty -> inf.
* Regions (:func:`region_scores`, BraTS): Dice as above on each region's mask; HD95 as
  above except that exactly one empty mask scores :data:`BRATS_HD95_PENALTY_MM` (373.13 mm).
* Lesion-wise scores (BraTS 2023) score each lesion with these in :mod:`brainseg.evaluate.lesions`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from brainseg.labels.regions import Regions
from brainseg.preprocessing.foreground import bounding_box


def dice(pred_mask: np.ndarray, ref_mask: np.ndarray) -> float:
    """Dice overlap 2|P∩R| / (|P| + |R|) of two boolean masks of the same shape.

    Empty masks: both empty -> 1.0 (nothing to find and nothing found); exactly one
    empty -> 0.0. MONAI's ``DiceMetric`` by default (``ignore_empty=True``) returns
    NaN when the reference is empty, so such cases drop out of its means; we score
    them instead, as MONAI does with ``ignore_empty=False``.
    """
    pred = np.asarray(pred_mask, dtype=bool)
    ref = np.asarray(ref_mask, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {ref.shape}")
    n_pred = int(np.count_nonzero(pred))
    n_ref = int(np.count_nonzero(ref))
    if n_pred + n_ref == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & ref)) / (n_pred + n_ref)


def dice_per_class(pred: np.ndarray, ref: np.ndarray, classes: Iterable[int]) -> dict[int, float]:
    """:func:`dice` of ``pred == c`` and ``ref == c`` for every value ``c`` of ``classes``."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    return {c: dice(pred == c, ref == c) for c in classes}


def check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    """``spacing`` as ``ndim`` floats; ValueError unless they are all finite and positive (mm)."""
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be {ndim} positive numbers (mm), got {spacing}")
    return spacing


def _surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a face neighbour outside the mask (or on the array border)."""
    return mask & ~ndimage.binary_erosion(mask)


def _distances_to(from_surface: np.ndarray, to_surface: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distance (mm) from each voxel of ``from_surface`` to the nearest of ``to_surface``."""
    distance_map = ndimage.distance_transform_edt(~to_surface, sampling=spacing)
    return distance_map[from_surface]


def surface_distances(
    pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Distances (mm) from every surface voxel of each mask to the other mask's surface.

    Returns ``(pred_to_ref, ref_to_pred)``, or ``None`` when either mask is empty (there
    is no surface to measure against). Surface = mask minus its erosion (6-connected
    cross; outside the array counts as background); Euclidean distances with the voxel
    spacing applied (``distance_transform_edt(..., sampling=spacing)``). HD95 is computed
    from these, and so can a surface Dice be (the share of distances within a tolerance).

    The distance transforms run on the bounding box of both masks plus a one-voxel
    margin, not the whole volume; this is exact because every surface voxel, and
    hence every nearest surface voxel, lies inside that box.
    """
    pred = np.asarray(pred_mask, dtype=bool)
    ref = np.asarray(ref_mask, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {ref.shape}")
    spacing = check_spacing(spacing, pred.ndim)
    if not (pred.any() and ref.any()):
        return None
    box = bounding_box(pred | ref, margin=1)
    surf_pred, surf_ref = _surface(pred[box]), _surface(ref[box])
    return _distances_to(surf_pred, surf_ref, spacing), _distances_to(surf_ref, surf_pred, spacing)


def hd95(pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Symmetric 95th-percentile Hausdorff distance (mm) between two masks' surfaces.

    For each direction, the distances from every surface voxel of one mask to the
    nearest surface voxel of the other (:func:`surface_distances`), their 95th
    percentile with linear interpolation; the result is the larger of the two
    (MONAI's definition).

    Empty masks: both empty -> 0.0; exactly one empty -> ``inf``.
    """
    distances = surface_distances(pred_mask, ref_mask, spacing)
    if distances is None:
        return 0.0 if not (np.any(pred_mask) or np.any(ref_mask)) else math.inf
    pred_to_ref, ref_to_pred = distances
    return float(max(np.percentile(pred_to_ref, 95), np.percentile(ref_to_pred, 95)))


# ----------------------------------------------------------------------------- regions (BraTS)

#: The HD95 (mm) BraTS gives a region present in only one of prediction and reference: the
#: diagonal of BraTS 2021's 240 x 240 x 155 grid of 1 mm voxels, sqrt(240² + 240² + 155²) = 373.13.
BRATS_HD95_PENALTY_MM = 373.13


def region_dice(pred: np.ndarray, ref: np.ndarray, regions: Regions) -> dict[str, float]:
    """Dice of each region (name -> Dice) between two label maps on one grid."""
    return {name: dice(p, r) for name, p, r in zip(regions.names, regions.masks(pred), regions.masks(ref))}


def region_scores(
    pred: np.ndarray,
    ref: np.ndarray,
    regions: Regions,
    spacing: Sequence[float],
    penalty_mm: float = BRATS_HD95_PENALTY_MM,
) -> dict[str, tuple[float, float]]:
    """(Dice, HD95 mm) of each region (name -> scores) of two label maps on one grid.

    Each region is the set of its label values in both maps (:meth:`Regions.masks`); BraTS's
    conventions: both empty -> Dice 1 and HD95 0; exactly one empty -> Dice 0 and HD95
    ``penalty_mm`` (:data:`BRATS_HD95_PENALTY_MM`) instead of :func:`hd95`'s inf.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"label map shapes differ: {pred.shape} vs {ref.shape}")
    out = {}
    for name, p, r in zip(regions.names, regions.masks(pred), regions.masks(ref)):
        distance = hd95(p, r, spacing)
        out[name] = (dice(p, r), float(penalty_mm) if math.isinf(distance) else distance)
    return out


# ----------------------------------------------------------------------------- left/right


def side_confusion(pred: np.ndarray, ref: np.ndarray, pairs: Sequence[Sequence[int]]) -> float:
    """Of the reference's voxels that hold a left or right label of ``pairs``, the fraction the
    prediction gives the partner label (the other hemisphere's): 0 = no left/right confusion.
    Both empty: 0.0."""
    lateral = np.zeros(ref.shape, dtype=bool)
    swapped = np.zeros(ref.shape, dtype=bool)
    for left, right in pairs:
        is_left, is_right = ref == left, ref == right
        lateral |= is_left | is_right
        swapped |= (is_left & (pred == right)) | (is_right & (pred == left))
    n = int(np.count_nonzero(lateral))
    return float(np.count_nonzero(swapped) / n) if n else 0.0
