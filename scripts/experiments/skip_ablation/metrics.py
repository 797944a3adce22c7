"""Boundary metrics of the skip-connection ablation: surface Dice and Dice by distance to a boundary.

Both build on brainseg's own surface definition (:mod:`brainseg.evaluate.metrics`: a mask's
surface is the mask minus its 6-connected erosion, distances are Euclidean in mm with
the voxel spacing applied), so they measure the same surfaces HD95 does.

* :func:`surface_dice` (Nikolov et al. 2021, on voxel surfaces): the fraction of both
  surfaces that lies within ``tolerance_mm`` of the other surface,
  ``(|S_P within tol of S_R| + |S_R within tol of S_P|) / (|S_P| + |S_R|)``. Both masks
  empty -> 1.0, exactly one empty -> 0.0 (the conventions of ``brainseg.evaluate.metrics.dice``).
  Surface voxels are voxel centres, so on 1.0-2.2 mm voxels a 1 mm tolerance accepts a
  surface voxel only where the other surface passes through the same voxel (or one
  closer than 1 mm: none on this grid unless the spacing is below 1 mm).
* :func:`boundary_distance`: for every voxel, the distance (mm) from its centre to the
  centre of the nearest voxel with another reference label (any two tissues, or tissue
  and background). A voxel on a boundary is one voxel spacing (1.0-2.2 mm) away.
* :func:`boundary_bins`, :func:`boundary_counts`, :func:`dice_by_distance`: per label and
  distance bin the counts |P∩R|, |P|, |R| of the voxels in that bin; Dice per bin follows
  from counts summed over cases (a pooled Dice, so small bins of single cases do not
  dominate). Tissue voxels are binned by their distance; background voxels count only in
  the first bin (the brain's rim): a false positive far out in the background is no
  boundary error (Dice and HD95 count it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from brainseg.evaluate.metrics import check_spacing, dice, surface_distances
from brainseg.evaluate.per_label import score_labels
from brainseg.preprocessing.foreground import bounding_box

#: Distance bins (mm, lower edges; the last is open): about one voxel layer each on
#: the demo data's 1.0-2.2 mm voxels (the first bin is the boundary layer itself), then
#: "deep inside" (mostly white matter: few tissue voxels lie farther from another tissue).
DISTANCE_EDGES_MM = (0.0, 2.25, 4.5, 6.75)


def surface_dices(
    pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float], tolerances_mm: Sequence[float]
) -> list[float]:
    """Surface Dice at each tolerance (mm): the share of both surfaces within the tolerance of the other."""
    distances = surface_distances(pred_mask, ref_mask, spacing)
    if distances is None:  # an empty mask: 1.0 if both are, else 0.0
        both_empty = not (np.any(pred_mask) or np.any(ref_mask))
        return [1.0 if both_empty else 0.0 for _ in tolerances_mm]
    everything = np.concatenate(distances)
    return [int(np.count_nonzero(everything <= t)) / everything.size for t in tolerances_mm]


def surface_dice(
    pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 1.0
) -> float:
    """Surface Dice at ``tolerance_mm`` (see :func:`surface_dices`)."""
    return surface_dices(pred_mask, ref_mask, spacing, [tolerance_mm])[0]


def boundary_distance(ref: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distance (mm) of every voxel to the nearest voxel of another reference label.

    Computed inside the foreground's bounding box grown by one voxel (exact: that box's
    outer shell is all background, and no voxel outside it is nearer to a voxel inside);
    voxels outside the box get ``inf`` (background far from any tissue). A map with one
    label only is ``inf`` everywhere.
    """
    ref = np.asarray(ref)
    spacing = check_spacing(spacing, ref.ndim)
    out = np.full(ref.shape, np.inf, dtype=np.float32)
    box = bounding_box(ref != 0, margin=1)
    if box is None:
        return out
    sub = ref[box]
    values = np.unique(sub)
    if len(values) < 2:
        return out
    inner = np.empty(sub.shape, dtype=np.float32)
    for value in values:
        inside = sub == value
        inner[inside] = ndimage.distance_transform_edt(inside, sampling=spacing)[inside]
    out[box] = inner
    return out


def distance_bin(distance: np.ndarray, edges: Sequence[float] = DISTANCE_EDGES_MM) -> np.ndarray:
    """Index of each voxel's distance bin (0 .. len(edges) - 1; the last bin is open)."""
    return np.digitize(distance, np.asarray(edges[1:], dtype=np.float64))


def bin_names(edges: Sequence[float] = DISTANCE_EDGES_MM) -> list[str]:
    """'0-2.25 mm', ..., '>= 9 mm'."""
    names = [f"{lo:g}-{hi:g} mm" for lo, hi in zip(edges[:-1], edges[1:])]
    return names + [f">= {edges[-1]:g} mm"]


def boundary_bins(ref: np.ndarray, spacing: Sequence[float], edges: Sequence[float] = DISTANCE_EDGES_MM) -> np.ndarray:
    """Distance bin of every voxel (:func:`distance_bin` of :func:`boundary_distance`); -1 = left out.

    Tissue voxels keep their bin; background voxels only in the first bin (the brain's
    rim, where a too large or too small brain outline is a boundary error). Background
    farther from tissue is left out: a false positive there is not about boundaries
    (Dice and HD95 count it).
    """
    bins = distance_bin(boundary_distance(ref, spacing), edges)
    bins[(np.asarray(ref) == 0) & (bins > 0)] = -1
    return bins


def boundary_counts(
    pred: np.ndarray, ref: np.ndarray, bins: np.ndarray, labels: Sequence[int], n_bins: int
) -> np.ndarray:
    """Counts ``(len(labels), n_bins, 3)``: |P∩R|, |P|, |R| per label and distance bin (bins < 0 left out)."""
    if not pred.shape == ref.shape == bins.shape:
        raise ValueError(f"shapes differ: {pred.shape}, {ref.shape}, {bins.shape}")
    out = np.zeros((len(labels), n_bins, 3), dtype=np.int64)
    counted = bins >= 0
    for i, value in enumerate(labels):
        p, r = (pred == value) & counted, (ref == value) & counted
        for j, mask in enumerate((p & r, p, r)):
            out[i, :, j] = np.bincount(bins[mask], minlength=n_bins)[:n_bins]
    return out


def dice_by_distance(counts: np.ndarray) -> np.ndarray:
    """Dice per label and bin from :func:`boundary_counts` (summed over cases); NaN where a bin holds neither."""
    denom = counts[..., 1] + counts[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2.0 * counts[..., 0] / np.maximum(denom, 1), np.nan)


def case_scores(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    labels: Sequence[int],
    tolerances_mm: Sequence[float] = (1.0,),
    edges: Sequence[float] = DISTANCE_EDGES_MM,
    boundaries: bool = True,
) -> dict:
    """Per-label Dice and HD95 (:func:`brainseg.evaluate.per_label.score_labels`), surface Dice and boundary counts.

    ``surface_dice`` is keyed by tolerance (mm), then label. ``boundaries=False``: Dice
    only (training-set cases, where only Dice is asked).
    """
    if not boundaries:
        return {"dice": {int(v): dice(pred == v, ref == v) for v in labels}}
    rows = score_labels(pred, ref, spacing, labels, case="")
    bins = boundary_bins(ref, spacing, edges)
    surface = [surface_dices(pred == v, ref == v, spacing, tolerances_mm) for v in labels]  # label -> tolerance
    return {
        "dice": {r["label"]: r["dice"] for r in rows},
        "hd95": {r["label"]: r["hd95_mm"] for r in rows},
        "surface_dice": {float(t): dict(zip(labels, by_label)) for t, by_label in zip(tolerances_mm, zip(*surface))},
        "counts": boundary_counts(pred, ref, bins, labels, len(edges)),
        "voxels_per_bin": np.bincount(bins[ref != 0], minlength=len(edges))[: len(edges)],
        # tissue predicted in the background beyond the brain's rim: not a boundary error
        "far_false_positives": int(np.count_nonzero((bins < 0) & (pred != 0))),
    }
