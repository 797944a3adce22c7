"""The decision experiment's validation arm: the fold's own choice, every field of it, as ``--set``."""

from __future__ import annotations

import yaml

from brainseg.config import load_config
from scripts.experiments.cv_decisions import validation_overrides


def _pairs(args: list[str]) -> dict[str, object]:
    assert args[::2] == ["--set"] * (len(args) // 2)
    return {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in args[1::2])}


def test_every_decided_field_of_a_region_model_is_set_and_the_config_takes_it():
    decision = {
        "class_offsets": [],
        "region_thresholds": [0.7, 0.6, 0.4],
        "innermost_min_mm3": 200.0,
        "postprocess": {
            "largest_foreground": False,
            "drop_coreless": True,
            "fill_holes": [2],
            "min_size_mm3": {"4": 30},
        },
    }
    sets = _pairs(validation_overrides(decision, 3))
    assert sets == {
        "postprocess.class_offsets": [],
        "postprocess.innermost_min_mm3": 200.0,
        "postprocess.largest_foreground": False,
        "postprocess.drop_coreless": True,
        "postprocess.fill_holes": [2],
        "postprocess.largest_component": [],
        "postprocess.min_size_mm3": {4: 30.0},
        "postprocess.region_thresholds": [0.7, 0.6, 0.4],
    }
    post = load_config(None, validation_overrides(decision, 3)[1::2]).postprocess
    assert post.drop_coreless and post.region_thresholds == [0.7, 0.6, 0.4] and post.innermost_min_mm3 == 200.0
    assert post.min_size_mm3 == {4: 30.0} and post.fill_holes == [2]


def test_a_label_model_gets_no_thresholds_and_an_old_card_keeps_the_rules_off():
    sets = _pairs(validation_overrides({"class_offsets": [0.0, 0.4, -0.2, 0.0], "postprocess": None}, 0))
    assert "postprocess.region_thresholds" not in sets
    assert sets["postprocess.class_offsets"] == [0.0, 0.4, -0.2, 0.0]
    assert sets["postprocess.drop_coreless"] is False and sets["postprocess.largest_foreground"] is False
