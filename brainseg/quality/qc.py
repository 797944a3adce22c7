"""A calibrated quality score: the Dice a mask is predicted to have, per label (region), per case.

A model's probabilities alone are over-confident; what they say is turned into a predicted
Dice by a map fitted on the model's own cross-validation, where the true Dice of every
out-of-fold case (and of degraded copies of it, :mod:`brainseg.quality.degrade`) is known.

Per label (or region) ``k`` of a case, :func:`measure` takes from the probabilities ``p_k``
and the final mask ``m_k``:

* ``soft_dice``: ``2 sum(p_k m_k) / (sum p_k + sum m_k)``, the Dice the mask would have if the
  probabilities were right (1 when both are empty). Where the probabilities are unsure or
  disagree with the decision it drops. It stands in for the members' agreement Dice: each
  out-of-fold case is seen by one fold only, and the calibration must use what prediction
  measures.
* ``entropy_in``: the mean binary entropy of ``p_k`` inside the mask;
* ``boundary``: the summed binary entropy of ``p_k`` over the scan, per voxel of the mask
  (the uncertain shell against the structure's size);
* ``volume_mm3``: the mask's volume, compared with the reference volumes of the calibration
  cases (``|log volume - mean| / std``);
* the case's out-of-distribution distances, of its grid and of its contrast apart
  (:class:`~brainseg.quality.ood.OodDistance`): real thick slices stray far in voxel size and
  often still segment well, an inverted contrast strays as far and fails; one distance for
  both taught the score to punish the first and spare the second.

:func:`fit_quality` fits one ridge regression of the true Dice on the standardised features over
all keys' rows at once, with an intercept per key (a few dozen calibration cases give each key
too few rows of its own: cross-fitted on the demo's 3-fold calibration, pooling raised the
Spearman of the mean from 0.76 to 0.84, see docs/benchmarks.md), then per key a monotone map
from that score to the Dice: pool-adjacent-violators, interpolated between the pooled blocks'
centres and continued with slope 1 beyond the first and last (:func:`monotone_map`), so the map
rises wherever the fit rises (a step function gives many cases the same predicted Dice and
loses their order). :meth:`QualityModel.predict` applies both and clips to [0, 1]. The fitted
model is a few numbers per key, kept in the model card; what it measured for a case is kept as
:func:`measures_record` (the calibration rows, ``predict``'s run record).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from brainseg.quality.ood import OodDistance

#: The features of one key, in the order the regression uses them.
FEATURES: tuple[str, ...] = ("soft_dice", "entropy_in", "boundary", "volume_z", "ood_geometry", "ood_contrast")
#: Ridge penalty on the standardised features (a few dozen calibration cases per key, pooled over keys).
RIDGE = 1.0
#: The spread a key's log-volume is given at least (a calibration set of equal volumes).
MIN_LOG_VOLUME_STD = 0.1
#: Caps of the unbounded features, so one extreme case does not dominate the fit.
FEATURE_CAPS = {"boundary": 5.0, "volume_z": 6.0, "ood_geometry": 6.0, "ood_contrast": 6.0}


class StaleQualityModel(ValueError):
    """A stored quality score fitted on other features than this brainseg computes."""


@dataclass(frozen=True)
class KeyMeasures:
    """What :func:`measure` takes from one label's (region's) probabilities and mask."""

    soft_dice: float
    entropy_in: float
    boundary: float
    volume_mm3: float


def _binary_entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float32, copy=False), 1e-6, 1 - 1e-6)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def measure_key(prob: np.ndarray, mask: np.ndarray, voxel_mm3: float) -> KeyMeasures:
    """:class:`KeyMeasures` of one label: its probability map and its final binary mask."""
    prob = np.asarray(prob, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    n_mask = int(np.count_nonzero(mask))
    p_sum = float(prob.sum(dtype=np.float64))
    overlap = float(prob[mask].sum(dtype=np.float64))
    soft = 1.0 if n_mask + p_sum < 1.0 else 2.0 * overlap / (p_sum + n_mask)
    entropy = _binary_entropy(prob)
    inside = float(entropy[mask].mean()) if n_mask else 0.0
    boundary = float(entropy.sum(dtype=np.float64)) / max(n_mask, 1)
    return KeyMeasures(soft, inside, boundary, n_mask * float(voxel_mm3))


def measure(
    probs: np.ndarray, key_masks: Mapping[str, np.ndarray], key_channels: Mapping[str, int], voxel_mm3: float
) -> dict[str, KeyMeasures]:
    """Per key: :func:`measure_key` of its probability channel ``probs[key_channels[key]]`` (a
    (C, X, Y, Z) array in the mask's grid) and its mask ``key_masks[key]``."""
    return {k: measure_key(probs[key_channels[k]], key_masks[k], voxel_mm3) for k in key_masks}


def measures_record(measures: Mapping[str, KeyMeasures], ood: OodDistance) -> dict[str, Any]:
    """What the score measured for one case, as JSON keeps it (``measures`` per key, ``ood_distance``)."""
    return {"ood_distance": asdict(ood), "measures": {k: asdict(m) for k, m in measures.items()}}


def from_measures_record(raw: Mapping[str, Any]) -> tuple[dict[str, KeyMeasures], OodDistance]:
    """The measures per key and the OOD distances of a :func:`measures_record`."""
    return {k: KeyMeasures(**m) for k, m in raw["measures"].items()}, OodDistance(**raw["ood_distance"])


def _features(m: KeyMeasures, ood: OodDistance, log_mean: float, log_std: float) -> np.ndarray:
    volume_z = abs(float(np.log1p(m.volume_mm3)) - log_mean) / log_std
    raw = {"soft_dice": m.soft_dice, "entropy_in": m.entropy_in, "boundary": m.boundary, "volume_z": volume_z}
    raw |= {"ood_geometry": float(ood.geometry), "ood_contrast": float(ood.contrast)}
    return np.array([min(raw[f], FEATURE_CAPS.get(f, np.inf)) for f in FEATURES], dtype=np.float64)


def isotonic(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> tuple[list[float], list[float]]:
    """Pool-adjacent-violators: the non-decreasing least-squares fit of ``y`` on ``x``, as one
    breakpoint per pooled block, (mean x, mean y) of its points (ties in x pooled first), which
    :func:`monotone_map` joins: strictly rising between the first and the last block."""
    order = np.argsort(np.asarray(x, dtype=np.float64), kind="stable")
    xs, ys = np.asarray(x, dtype=np.float64)[order], np.asarray(y, dtype=np.float64)[order]
    blocks: list[list[float]] = []  # [sum y, weight, sum x, last x]
    for xv, yv in zip(xs, ys):
        if blocks and blocks[-1][3] == xv:  # equal x: one block
            blocks[-1][0] += yv
            blocks[-1][1] += 1
            blocks[-1][2] += xv
        else:
            blocks.append([yv, 1.0, xv, xv])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            s, w, sx, last = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += w
            blocks[-1][2] += sx
            blocks[-1][3] = last
    return [float(sx / w) for _, w, sx, _ in blocks], [float(s / w) for s, w, _, _ in blocks]


def monotone_map(score: float, iso_x: Sequence[float], iso_y: Sequence[float]) -> float:
    """The isotonic breakpoints joined linearly, and beyond the first and the last continued with
    slope 1: the ridge score is already a Dice, so where the calibration had no cases the map
    keeps its order instead of giving every case past the end the same value (cross-fitted on
    the demo's 3-fold calibration: Spearman of the mean 0.844 -> 0.871, per label 0.76 / 0.70 /
    0.66 -> 0.77 / 0.79 / 0.72, mean absolute error 0.057 -> 0.052)."""
    inside = float(np.interp(score, iso_x, iso_y))
    return inside + min(score - iso_x[0], 0.0) + max(score - iso_x[-1], 0.0)


@dataclass(frozen=True)
class KeyCalibration:
    """One key's fitted map: feature standardisation, ridge weights, isotonic breakpoints."""

    log_volume_mean: float
    log_volume_std: float
    feature_mean: tuple[float, ...]
    feature_std: tuple[float, ...]
    weights: tuple[float, ...]
    intercept: float
    iso_x: tuple[float, ...]
    iso_y: tuple[float, ...]

    def predict(self, m: KeyMeasures, ood: OodDistance) -> float:
        x = _features(m, ood, self.log_volume_mean, self.log_volume_std)
        score = float((x - np.asarray(self.feature_mean)) / np.asarray(self.feature_std) @ np.asarray(self.weights))
        return float(np.clip(monotone_map(score + self.intercept, self.iso_x, self.iso_y), 0.0, 1.0))


@dataclass(frozen=True)
class QualityModel:
    """The quality score of a model: a :class:`KeyCalibration` per key (label value as a string,
    or region name), and how it was fitted (cases, and its in-sample agreement)."""

    keys: tuple[str, ...]
    calibrations: tuple[KeyCalibration, ...]
    n_cases: int
    fit: dict[str, float] = field(default_factory=dict)
    features: tuple[str, ...] = FEATURES

    def predict(self, measures: Mapping[str, KeyMeasures], ood: OodDistance) -> dict[str, float]:
        """Predicted Dice per key (keys the case has no measures for are left out)."""
        return {k: c.predict(measures[k], ood) for k, c in zip(self.keys, self.calibrations) if k in measures}

    def to_dict(self) -> dict[str, Any]:
        return {
            "keys": list(self.keys),
            "calibrations": [asdict(c) for c in self.calibrations],
            "n_cases": self.n_cases,
            "fit": dict(self.fit),
            "features": list(self.features),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> QualityModel:
        features = tuple(str(f) for f in raw.get("features", FEATURES))
        if features != FEATURES:
            raise StaleQualityModel(
                f"quality score fitted on features {list(features)}, this brainseg computes {list(FEATURES)}"
            )

        def numbers(c: Mapping[str, Any], key: str) -> tuple[float, ...]:
            return tuple(float(x) for x in c[key])

        cals = tuple(
            KeyCalibration(
                float(c["log_volume_mean"]),
                float(c["log_volume_std"]),
                numbers(c, "feature_mean"),
                numbers(c, "feature_std"),
                numbers(c, "weights"),
                float(c["intercept"]),
                numbers(c, "iso_x"),
                numbers(c, "iso_y"),
            )  # fmt: skip
            for c in raw["calibrations"]
        )
        keys = tuple(str(k) for k in raw["keys"])
        if len(keys) != len(cals) or any(len(c.iso_x) != len(c.iso_y) or not c.iso_x for c in cals):
            raise ValueError("quality model: one calibration with breakpoints per key expected")
        return cls(keys, cals, int(raw["n_cases"]), {str(k): float(v) for k, v in dict(raw.get("fit", {})).items()})


@dataclass(frozen=True)
class CalibrationRow:
    """One calibration case: its measures per key, its OOD distances and its true Dice per key."""

    case: str
    measures: Mapping[str, KeyMeasures]
    ood: OodDistance
    dice: Mapping[str, float]


def _log_volume_stats(ref_log_volumes: Sequence[float]) -> tuple[float, float]:
    mean = float(np.mean(ref_log_volumes)) if len(ref_log_volumes) else 0.0
    std = float(np.std(ref_log_volumes)) if len(ref_log_volumes) else 1.0
    return mean, max(std, MIN_LOG_VOLUME_STD)


def _fit_keys(
    rows: Sequence[CalibrationRow], keys: Sequence[str], ref_log_volumes: Mapping[str, Sequence[float]]
) -> tuple[KeyCalibration, ...]:
    """One ridge regression over every key's rows (shared weights, an intercept per key), then
    each key's isotonic map; each key's part is kept as its own linear map (:class:`KeyCalibration`)."""
    volume = {k: _log_volume_stats(ref_log_volumes.get(k, [])) for k in keys}
    x = np.stack([_features(r.measures[k], r.ood, *volume[k]) for k in keys for r in rows])
    y = np.array([r.dice[k] for k in keys for r in rows], dtype=np.float64)
    key_of = np.repeat(np.arange(len(keys)), len(rows))
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std < 1e-9] = 1.0
    z = (x - mean) / std
    onehot = (key_of[:, None] == np.arange(len(keys))[None, :]).astype(np.float64)
    design = np.concatenate([z, onehot - onehot.mean(axis=0)], axis=1)
    penalty = RIDGE * np.diag([1.0] * z.shape[1] + [0.0] * len(keys))  # key intercepts unpenalised
    coef = np.linalg.lstsq(design.T @ design + penalty, design.T @ (y - y.mean()), rcond=None)[0]
    weights, key_terms = coef[: z.shape[1]], coef[z.shape[1] :] - coef[z.shape[1] :] @ onehot.mean(axis=0)
    cals = []
    for i, k in enumerate(keys):
        intercept = float(y.mean() + key_terms[i])
        sel = key_of == i
        iso_x, iso_y = isotonic(z[sel] @ weights + intercept, y[sel])
        cals.append(
            KeyCalibration(
                *volume[k],
                tuple(mean.tolist()),
                tuple(std.tolist()),
                tuple(weights.tolist()),
                intercept,
                tuple(iso_x),
                tuple(iso_y),
            )  # fmt: skip
        )
    return tuple(cals)


def fit_quality(
    rows: Sequence[CalibrationRow], keys: Sequence[str], ref_volumes_mm3: Mapping[str, Sequence[float]]
) -> QualityModel:
    """Fit the quality score on calibration rows (every row has every key) and the reference
    volumes per key (mm^3) of the clean calibration cases."""
    if len(rows) < 3:
        raise ValueError(f"a quality score needs 3 calibration cases or more, got {len(rows)}")
    cals = _fit_keys(rows, keys, {k: [float(np.log1p(v)) for v in ref_volumes_mm3.get(k, [])] for k in keys})
    model = QualityModel(tuple(keys), cals, len(rows))
    predicted = np.array([list(model.predict(r.measures, r.ood).values()) for r in rows])
    true = np.array([[r.dice[k] for k in keys] for r in rows])
    fit = {"mae_mean": float(np.abs(predicted.mean(1) - true.mean(1)).mean())}
    rho = float(stats.spearmanr(predicted.mean(1), true.mean(1)).statistic)
    if np.isfinite(rho):
        fit["spearman_mean"] = rho
    return QualityModel(model.keys, model.calibrations, model.n_cases, fit)
