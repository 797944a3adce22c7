"""The quality score: its measures, the isotonic map, the fit and its stored form."""

from __future__ import annotations

import numpy as np
import pytest

from brainseg.quality.ood import OodDistance
from brainseg.quality.qc import (
    FEATURES,
    CalibrationRow,
    KeyMeasures,
    QualityModel,
    fit_quality,
    isotonic,
    measure_key,
    monotone_map,
)


def test_isotonic_pools_adjacent_violators_and_joins_the_blocks_centres():
    x, y = isotonic([1, 2, 3, 4, 5], [0.1, 0.5, 0.3, 0.7, 0.6])
    assert x == pytest.approx([1.0, 2.5, 4.5]) and y == pytest.approx([0.1, 0.4, 0.65])  # blocks {1}, {2,3}, {4,5}
    assert np.interp([1, 2, 3, 4, 5], x, y).tolist() == pytest.approx([0.1, 0.3, 0.4625, 0.5875, 0.65])
    assert np.all(np.diff(np.interp(np.linspace(1, 4.5, 50), x, y)) > 0)  # rises between the end blocks: no ties
    assert isotonic([3, 1, 2], [0.3, 0.1, 0.2]) == ([1.0, 2.0, 3.0], pytest.approx([0.1, 0.2, 0.3]))
    x, y = isotonic([1, 1, 2], [0.2, 0.6, 0.1])  # equal x are one block, then pooled with the next
    assert x == pytest.approx([4 / 3]) and y == pytest.approx([0.3])
    assert isotonic([1, 2], [0.5, 0.5]) == ([1.5], [0.5])  # equal means pool: the map never stays flat inside


def test_the_map_keeps_the_order_beyond_the_calibrated_range():
    x, y = [0.4, 0.6, 0.8], [0.3, 0.65, 0.75]
    assert monotone_map(0.6, x, y) == pytest.approx(0.65) and monotone_map(0.7, x, y) == pytest.approx(0.70)
    assert monotone_map(0.9, x, y) == pytest.approx(0.85) and monotone_map(0.2, x, y) == pytest.approx(0.1)
    assert monotone_map(1.5, x, y) > monotone_map(1.0, x, y) > monotone_map(0.9, x, y)


def test_measures_of_a_confident_right_mask_and_an_unsure_one():
    mask = np.zeros((4, 4, 4), bool)
    mask[:2] = True  # 32 voxels
    sure = measure_key(np.where(mask, 1.0, 0.0), mask, voxel_mm3=2.0)
    assert sure.soft_dice == pytest.approx(1.0) and sure.entropy_in == pytest.approx(0.0, abs=1e-3)
    assert sure.volume_mm3 == 64.0
    unsure = measure_key(np.where(mask, 0.5, 0.0), mask, voxel_mm3=2.0)
    assert unsure.soft_dice == pytest.approx(2 * 16 / (16 + 32))  # half the probability mass: 2/3
    assert unsure.entropy_in == pytest.approx(1.0) and unsure.boundary == pytest.approx(1.0, abs=1e-3)
    empty = measure_key(np.zeros((4, 4, 4)), np.zeros((4, 4, 4), bool), 1.0)
    assert empty.soft_dice == 1.0 and empty.volume_mm3 == 0.0  # nothing predicted, nothing expected


def rows(n: int, seed: int = 0) -> list[CalibrationRow]:
    """Cases whose true Dice follows their soft Dice (plus noise) and falls with the OOD distance."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        soft = rng.uniform(0.3, 1.0)
        contrast = rng.choice([0.0, 0.0, 2.0])
        grid = rng.choice([0.0, 3.0])  # voxel size astray costs nothing here
        true = float(np.clip(soft - 0.15 * contrast + rng.normal(0, 0.02), 0, 1))
        m = KeyMeasures(soft, 1 - soft, 2 * (1 - soft), 1000.0 * rng.uniform(0.8, 1.2))
        out.append(CalibrationRow(f"c{i}", {"1": m}, OodDistance(grid, contrast), {"1": true}))
    return out


def test_the_fitted_score_ranks_new_cases_as_their_true_dice_and_survives_its_stored_form():
    model = fit_quality(rows(60), ["1"], {"1": [1000.0, 900.0, 1100.0]})
    test = rows(30, seed=1)
    predicted = [model.predict(r.measures, r.ood)["1"] for r in test]
    true = [r.dice["1"] for r in test]
    from scipy.stats import spearmanr

    assert spearmanr(predicted, true).statistic > 0.9
    assert np.mean(np.abs(np.subtract(predicted, true))) < 0.06
    assert model.fit["spearman_mean"] > 0.9 and model.n_cases == 60
    ordinary = KeyMeasures(0.8, 0.2, 0.4, 1000.0)  # the grid astray costs nothing, the contrast 0.3
    on_grid, thick, inverted = (
        model.predict({"1": ordinary}, o)["1"] for o in (OodDistance(), OodDistance(3.0, 0.0), OodDistance(0.0, 2.0))
    )
    assert abs(thick - on_grid) < 0.05 and on_grid - inverted > 0.2
    again = QualityModel.from_dict(model.to_dict())
    assert [again.predict(r.measures, r.ood) for r in test] == [model.predict(r.measures, r.ood) for r in test]
    with pytest.raises(ValueError, match="features"):
        QualityModel.from_dict({**model.to_dict(), "features": [*FEATURES, "new"]})
    with pytest.raises(ValueError, match="3 calibration cases"):
        fit_quality(rows(2), ["1"], {})


def test_the_keys_share_one_regression_and_keep_their_own_level_and_map():
    """Two keys whose Dice follows soft Dice alike, the second 0.2 lower: one set of weights, the
    second key's intercept lower, and a key seen on few distinct scores still ranks by soft Dice."""
    base = rows(40)
    two = [
        CalibrationRow(
            r.case,
            {"1": r.measures["1"], "2": r.measures["1"]},
            r.ood,
            {"1": r.dice["1"], "2": max(r.dice["1"] - 0.2, 0.0)},
        )
        for r in base
    ]
    model = fit_quality(two, ["1", "2"], {"1": [1000.0], "2": [1000.0]})
    first, second = model.calibrations
    assert first.weights == second.weights and first.feature_mean == second.feature_mean
    assert first.intercept - second.intercept == pytest.approx(0.2, abs=0.03)
    good, bad = (KeyMeasures(s, 1 - s, 2 * (1 - s), 1000.0) for s in (0.95, 0.4))
    hi, lo = model.predict({"1": good, "2": good}, OodDistance()), model.predict({"1": bad, "2": bad}, OodDistance())
    assert hi["1"] > lo["1"] + 0.3 and hi["2"] > lo["2"] + 0.3
    assert hi["1"] - hi["2"] == pytest.approx(0.2, abs=0.05)
