"""The quality score of one predicted case: its measures (:mod:`brainseg.quality.qc`) taken from
the probabilities and the final mask, and the card's calibrated map from them to a predicted
Dice per label (region); the ``qc_*`` columns of ``volumes.csv``.

Keys are what the cross-validation scores: a label model's foreground label values (as
strings), a region model's region names. The measures need the probabilities in the scan's
own grid, so a model with a quality score asks the predictor for them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from brainseg.io.images import voxel_volume
from brainseg.model.card import ModelCard
from brainseg.quality.qc import KeyMeasures, measure

#: ``predict --qc-threshold``'s default: a case whose predicted mean Dice is below it is flagged.
QC_THRESHOLD = 0.7


def quality_keys(card: ModelCard) -> list[str]:
    """The keys a card's cases are scored (and their quality predicted) by."""
    if card.regions is not None:
        return list(card.regions.names)
    return [str(v) for v in card.label_values if v != 0]


def key_names(card: ModelCard) -> dict[str, str]:
    """Key -> the name the ``qc_dice_<name>`` column carries (the label's name, as the volume columns)."""
    if card.regions is not None:
        return {k: k for k in card.regions.names}
    return {str(v): card.labels[v] for v in card.label_values if v != 0}


def case_measures(card: ModelCard, probs: np.ndarray, labels: np.ndarray, spacing) -> dict[str, KeyMeasures]:
    """The measures per key of one case: (C, X, Y, Z) probabilities and the final label map, both
    in the scan's grid."""
    if card.regions is not None:
        names = list(card.regions.names)
        masks = dict(zip(names, card.regions.masks(labels)))
        channels = {n: i for i, n in enumerate(names)}
    else:
        values = card.label_values
        masks = {str(v): labels == v for v in values if v != 0}
        channels = {str(v): i for i, v in enumerate(values)}
    return measure(probs, masks, channels, voxel_volume(spacing))


def qc_columns(
    card: ModelCard, predicted: Mapping[str, Mapping[str, float]], threshold: float
) -> dict[str, dict[str, str]]:
    """``volumes.csv``'s quality columns ({column: {case: text}}) from each case's predicted Dice per key."""
    names = key_names(card)
    columns: dict[str, dict[str, str]] = {f"qc_dice_{names[k]}": {} for k in quality_keys(card)}
    columns["qc_dice_mean"], columns["qc_flag"] = {}, {}
    for case, scores in predicted.items():
        for key, value in scores.items():
            columns[f"qc_dice_{names[key]}"][case] = f"{value:.4f}"
        mean = float(np.mean(list(scores.values()))) if scores else float("nan")
        columns["qc_dice_mean"][case] = f"{mean:.4f}"
        columns["qc_flag"][case] = "1" if mean < threshold else "0"
    return columns
