"""Lesion-wise Dice and HD95: each reference lesion scored on its own, as BraTS 2023 ranks.

A voxel-wise Dice is dominated by the largest lesion: missing a small second tumour, or keeping a
false blob far from the tumour, barely moves it. The lesion-wise scores count every lesion once.
For one region (a boolean mask on each side), following the BraTS 2023 challenge's evaluation
(glioma settings, :class:`LesionRule`'s defaults):

* Reference lesions: the reference is dilated ``dilation`` times with the 18-connected cross
  (``generate_binary_structure(3, 2)``); the reference voxels inside one 26-connected component of
  that dilated mask form one lesion, so reference pieces within a few voxels of each other are one
  lesion. Predicted components are the 26-connected components of the prediction.
* Matching: a predicted component belongs to a reference lesion when it overlaps the lesion dilated
  the same way (the lesion's own neighbourhood); the lesion is scored against the union of all
  the components that belong to it, with :func:`~brainseg.evaluate.metrics.dice` and
  :func:`~brainseg.evaluate.metrics.hd95`. A lesion no component reaches scores Dice 0 and HD95
  ``penalty_mm`` (374 mm, the challenge's constant).
* Small lesions: a reference lesion of ``min_volume_mm3`` or less (voxel count times the voxel
  volume) is left out of the score, and the components that reach it are not false positives.
* False positives: predicted components that reach no reference lesion; each adds a term of Dice 0
  and HD95 ``penalty_mm``.
* Score: the sum over scored lesions (and false positives) divided by their number; with nothing
  to score (both empty, or only small lesions and no false positive) Dice 1 and HD95 0.

HD95 is this package's (MONAI's definition, :func:`~brainseg.evaluate.metrics.hd95`); the
challenge's code uses DeepMind's surface-distance HD95, which weighs surface elements by area, so a
lesion's HD95 can differ from the challenge's by a fraction of a voxel; Dice and the matching are
the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from brainseg.evaluate.metrics import check_spacing, dice, hd95
from brainseg.labels.regions import Regions
from brainseg.preprocessing.foreground import bounding_box

#: The HD95 (mm) the BraTS 2023 lesion-wise score gives a missed lesion or a false positive (the
#: challenge's code replaces inf by 374; the voxel-wise penalty is
#: :data:`~brainseg.evaluate.metrics.BRATS_HD95_PENALTY_MM`).
LESION_HD95_PENALTY_MM = 374.0


@dataclass(frozen=True)
class LesionRule:
    """How lesions are formed, matched and penalised; the defaults are BraTS 2023's for gliomas
    (BraTS-GLI; the meningioma and metastasis tasks dilate once, and metastases ignore only
    lesions of 2 mm³ or less)."""

    #: Dilations (18-connected cross) of the reference that group nearby pieces into one lesion and
    #: of each lesion that gathers the predicted components reaching it.
    dilation: int = 3
    #: Reference lesions of this volume (mm³) or less are not scored.
    min_volume_mm3: float = 50.0
    #: HD95 (mm) of a missed lesion and of a false positive.
    penalty_mm: float = LESION_HD95_PENALTY_MM

    def __post_init__(self) -> None:
        if self.dilation < 0 or self.min_volume_mm3 < 0 or not self.penalty_mm > 0:
            raise ValueError(f"lesion rule: dilation and volume must be >= 0, the penalty > 0: {self}")


#: BraTS 2023's lesion rule for gliomas (dilate 3 times, ignore lesions of 50 mm³ or less, 374 mm).
BRATS_2023_LESIONS = LesionRule()


@dataclass(frozen=True)
class LesionScores:
    """One region's lesion-wise scores and the counts behind them."""

    dice: float
    hd95_mm: float
    #: Reference lesions scored (larger than the rule's volume).
    n_lesions: int
    #: Of those, the ones some predicted component reaches.
    n_found: int
    #: Predicted components that reach no reference lesion.
    n_false_positive: int
    #: Reference lesions too small to score.
    n_ignored: int

    @property
    def n_missed(self) -> int:
        return self.n_lesions - self.n_found


def _dilate(mask: np.ndarray, times: int) -> np.ndarray:
    # iterations=0 would mean "until nothing changes" to scipy
    if times == 0:
        return mask
    cross = ndimage.generate_binary_structure(mask.ndim, mask.ndim - 1)
    return ndimage.binary_dilation(mask, structure=cross, iterations=times)


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels of the mask's 26-connected components (in 3-D: any shared face, edge or corner), and their count."""
    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    return labels, int(n)


def reference_lesions(ref_mask: np.ndarray, dilation: int) -> tuple[np.ndarray, int]:
    """Lesion labels 1..n on the reference's voxels (0 elsewhere) and n: the reference voxels that
    fall in one 26-connected component of the reference dilated ``dilation`` times form one lesion."""
    ref = np.asarray(ref_mask, dtype=bool)
    groups, n = _components(_dilate(ref, dilation))
    return np.where(ref, groups, 0), n


def lesion_scores(
    pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: Sequence[float], rule: LesionRule = BRATS_2023_LESIONS
) -> LesionScores:
    """Lesion-wise Dice and HD95 (mm) of two boolean masks on one grid (see the module docstring)."""
    pred = np.asarray(pred_mask, dtype=bool)
    ref = np.asarray(ref_mask, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {ref.shape}")
    spacing = check_spacing(spacing, pred.ndim)
    # everything below happens inside the box of both masks grown by the dilation: exact, since no
    # component, dilated lesion or surface reaches past it (the array's own border is kept as such)
    box = bounding_box(pred | ref, margin=max(rule.dilation, 1))
    if box is None:
        return LesionScores(1.0, 0.0, 0, 0, 0, 0)
    pred, ref = pred[box], ref[box]
    components, n_components = _components(pred)
    lesions, n_lesions = reference_lesions(ref, rule.dilation)
    voxel_mm3 = math.prod(spacing)
    reached: set[int] = set()
    dices: list[float] = []
    distances: list[float] = []
    n_found = n_ignored = 0
    for k in range(1, n_lesions + 1):
        lesion = lesions == k
        hits = np.unique(components[_dilate(lesion, rule.dilation)])
        hits = hits[hits > 0]
        reached.update(int(h) for h in hits)
        if np.count_nonzero(lesion) * voxel_mm3 <= rule.min_volume_mm3:
            n_ignored += 1
            continue
        matched = np.isin(components, hits)
        dices.append(dice(matched, lesion))
        distance = hd95(matched, lesion, spacing)
        distances.append(rule.penalty_mm if math.isinf(distance) else distance)
        n_found += int(hits.size > 0)
    n_false_positive = n_components - len(reached)
    n_terms = len(dices) + n_false_positive
    if n_terms == 0:
        return LesionScores(1.0, 0.0, 0, 0, 0, n_ignored)
    return LesionScores(
        dice=sum(dices) / n_terms,
        hd95_mm=(sum(distances) + n_false_positive * rule.penalty_mm) / n_terms,
        n_lesions=len(dices),
        n_found=n_found,
        n_false_positive=n_false_positive,
        n_ignored=n_ignored,
    )


def region_lesion_scores(
    pred: np.ndarray,
    ref: np.ndarray,
    regions: Regions,
    spacing: Sequence[float],
    rule: LesionRule = BRATS_2023_LESIONS,
) -> dict[str, LesionScores]:
    """:func:`lesion_scores` of each region (name -> scores) of two label maps on one grid."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"label map shapes differ: {pred.shape} vs {ref.shape}")
    return {
        name: lesion_scores(p, r, spacing, rule)
        for name, p, r in zip(regions.names, regions.masks(pred), regions.masks(ref))
    }
