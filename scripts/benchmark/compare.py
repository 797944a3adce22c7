"""The arithmetic of the benchmark (pure functions): mask agreement, Dice differences,
placement ranges, linearity and the loader's mix correction. Dice is
:func:`brainseg.evaluate.metrics.dice`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def mask_agreement(a: np.ndarray, b: np.ndarray, labels: Sequence[int]) -> dict[str, Any]:
    """How far two label maps of one grid agree.

    ``agreement``: fraction of voxels with the same label; ``agreement_foreground``:
    the same over the voxels that are foreground in either map; ``dice``: per label,
    Dice between the two maps.
    """
    from brainseg.evaluate.metrics import dice_per_class

    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"masks of different shapes {a.shape} and {b.shape}")
    equal = a == b
    fg = (a != 0) | (b != 0)
    return {
        "agreement": float(equal.mean()) if equal.size else 1.0,
        "agreement_foreground": float(equal[fg].mean()) if fg.any() else 1.0,
        "dice": dice_per_class(a, b, [int(v) for v in labels]),
    }


def dice_difference(scores_a: dict[int, list[float]], scores_b: dict[int, list[float]]) -> dict[str, Any]:
    """Mean Dice per label of two pipelines against the same references, and the largest gap."""
    mean_a = {k: float(np.mean(v)) for k, v in scores_a.items()}
    mean_b = {k: float(np.mean(v)) for k, v in scores_b.items()}
    diff = {k: mean_a[k] - mean_b[k] for k in mean_a}  # signed: a - b
    per_case = [abs(x - y) for k in scores_a for x, y in zip(scores_a[k], scores_b[k])]
    return {
        "mean_a": mean_a,
        "mean_b": mean_b,
        "diff": diff,
        "max": max(abs(v) for v in diff.values()) if diff else 0.0,
        "max_per_case": max(per_case) if per_case else 0.0,
    }


def placement_range(dice_by_placement: dict[int, list[float]]) -> dict[str, Any]:
    """Per label, the lowest and highest mean Dice of one pipeline over several window placements."""
    rng = {k: [float(min(v)), float(max(v))] for k, v in dice_by_placement.items()}
    return {"range": rng, "spread_max": max((b - a for a, b in rng.values()), default=0.0)}


def outside_range(values: dict[int, float], ranges: dict[int, Sequence[float]]) -> dict[int, float]:
    """Per label, how far a value lies outside its [low, high] range (0.0 inside)."""
    return {k: float(max(ranges[k][0] - v, v - ranges[k][1], 0.0)) for k, v in values.items()}


def linearity(sizes_mvox: Sequence[float], values: Sequence[float]) -> dict[str, Any]:
    """Per-megavoxel figures and the ratio of the largest to the smallest (1.0 = perfectly linear)."""
    per = [v / s for v, s in zip(values, sizes_mvox)]
    x, y = np.asarray(sizes_mvox, dtype=float), np.asarray(values, dtype=float)
    slope, intercept = np.polyfit(x, y, 1) if len(per) > 1 else (per[0], 0.0)
    residual = y - (slope * x + intercept)
    total = float(((y - y.mean()) ** 2).sum())
    return {
        "per_mvox": per,
        "ratio_max_min_per_mvox": max(per) / min(per) if min(per) > 0 else math.inf,
        "fit_slope_per_mvox": float(slope),
        "fit_intercept": float(intercept),
        "fit_r2": 1.0 - float((residual**2).sum()) / total if total > 0 else 1.0,  # of value = slope * size + intercept
    }


def mix_corrected(times: Sequence[float], spatial: Sequence[bool], p: float) -> dict:
    """Patches/s at the configured share ``p`` of rotated/scaled patches.

    A few dozen patches draw that share only roughly (and a spatially transformed patch
    costs several plain ones), so each pipeline's mean time per plain and per spatially
    transformed patch is weighted by ``p`` instead of by what its sample happened to draw.
    """
    t_s = [t for t, s in zip(times, spatial) if s]
    t_n = [t for t, s in zip(times, spatial) if not s]
    if not t_s or not t_n:
        return {"patches_per_s_at_config_mix": None}
    mean_s, mean_n = float(np.mean(t_s)), float(np.mean(t_n))
    return {
        "patches_per_s_at_config_mix": 1.0 / (p * mean_s + (1 - p) * mean_n),
        "seconds_spatial_patch": mean_s,
        "seconds_plain_patch": mean_n,
        "p_spatial": p,
    }
