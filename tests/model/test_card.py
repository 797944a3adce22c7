"""The model card keeps and checks what prediction needs: class offsets, regions and their thresholds."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from brainseg.config import load_config
from brainseg.errors import BrainsegError
from brainseg.infer.predictor import Predictor
from brainseg.labels.regions import Regions
from brainseg.model.card import ModelCard
from brainseg.model.checkpoint import load_checkpoint, load_model


def test_the_card_keeps_and_checks_the_offsets(tiny_checkpoint: Path):
    _, card = load_model(tiny_checkpoint)
    assert card.class_offsets == ()
    kept = ModelCard.from_dict(replace(card, class_offsets=(0.0, 0.4, -0.2)).to_dict())
    assert kept.class_offsets == (0.0, 0.4, -0.2)
    for bad in ([0.0, 0.4], [0.0, float("nan"), 0.0]):
        raw = card.to_dict() | {"class_offsets": bad}
        with pytest.raises(BrainsegError, match="class_offsets"):
            ModelCard.from_dict(raw, source="x.pt")
    cfg = load_config()
    with pytest.raises(BrainsegError, match="class_offsets"):
        model, _ = load_model(tiny_checkpoint)
        Predictor(model, card, cfg.infer, replace(cfg.postprocess, class_offsets=[0.0, 1.0]))


def test_region_card_checks_its_outputs(tiny_checkpoint_factory):
    card = load_checkpoint(tiny_checkpoint_factory())["card"]  # 3 outputs, labels 0, 1, 2
    wrong = {**card, "regions": Regions(("A", "B"), ((1, 2), (2,)), (1, 2)).to_dict()}
    with pytest.raises(BrainsegError, match="2 region"):
        ModelCard.from_dict(wrong)
    right = {**card, "regions": Regions(("A", "B", "C"), ((1, 2), (2,), (1,)), (1, 2, 1)).to_dict()}
    assert ModelCard.from_dict(right).regions.names == ("A", "B", "C")
    with pytest.raises(BrainsegError, match="region_thresholds"):
        ModelCard.from_dict({**right, "region_thresholds": [0.5, 1.5, 0.5]})
    with pytest.raises(BrainsegError, match="format 3 .* no 'regions'"):
        ModelCard.from_dict({**card, "format": 3})
    assert ModelCard.from_dict(right).to_dict()["format"] == 3
