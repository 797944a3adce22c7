"""What predicts with which settings: the ``infer`` and ``postprocess`` sections a model predicts
with (its card's, or a config file's, plus ``--set``) and the :class:`Predictor` of one model as
``brainseg predict`` builds it."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from brainseg.config import Config, apply_overrides, config_from_dict, load_config
from brainseg.errors import BrainsegError
from brainseg.infer.predictor import Predictor
from brainseg.model.card import ModelCard
from brainseg.model.checkpoint import load_model

log = logging.getLogger(__name__)


#: Named settings of the ``infer`` section (``brainseg predict --fast``): applied as ``--set``
#: overrides before the user's own (which still win), so ``brainseg_run.json`` records the values
#: a mask was made with, and the preset's name beside them. "fast": a step of 3/4 patch instead of
#: 1/2 and no margin (about 3x fewer windows on a demo brain; TotalSegmentator's ``--fast`` idea for
#: nnU-Net models), one pass per window (no test-time mirroring). It costs Dice on an instance-norm
#: network, whose windows each normalise by their own statistics: on configs/demo.yaml's network
#: (3-minute fold, 4 held-out demo scans) 108 windows instead of 324 at -0.023 / -0.017 / -0.034
#: (CSF / grey / white matter); a step of 5/8 patch (224 windows) still lost -0.012 / -0.015 /
#: -0.021, overlap 0.25 with the margin (147) -0.044 / -0.028 / -0.039, and windows of twice the
#: patch, or one over the whole box, -0.06 in white matter (docs/benchmarks.md).
INFER_PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"overlap": 0.25, "margin": 0.0, "mirror": False},
}


def preset_overrides(name: str | None) -> list[str]:
    """The ``infer.FIELD=VALUE`` overrides a named preset (:data:`INFER_PRESETS`) stands for; none for None."""
    if name is None:
        return []
    if name not in INFER_PRESETS:
        raise BrainsegError(f"unknown inference preset {name!r}; choose from {', '.join(INFER_PRESETS)}")
    return [f"infer.{key}={json.dumps(value)}" for key, value in INFER_PRESETS[name].items()]


def inference_config(card: ModelCard, config_path: Path | None, overrides: Sequence[str]) -> Config:
    """The config to predict with.

    With ``--config`` that file (plus ``--set``); otherwise the ``infer`` and
    ``postprocess`` sections stored in the model card (plus ``--set``), so a model
    predicts the way it was configured at training time.
    """
    if config_path is not None:
        return load_config(config_path, overrides)
    stored = card.config
    sections = {k: stored[k] for k in ("infer", "postprocess") if k in stored}
    try:
        return config_from_dict(apply_overrides(sections, overrides))
    except BrainsegError as exc:
        raise BrainsegError(f"model card config: {exc}") from None


def load_predictor(
    model_path: str | os.PathLike,
    device: torch.device,
    *,
    checkpoint: str | None = None,
    config_path: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
) -> Predictor:
    """The predictor ``brainseg predict`` segments with: the model of ``model_path`` (``checkpoint``:
    which of a run folder's) with its card's settings, or ``config_path``'s (:func:`inference_config`)."""
    model, card = load_model(model_path, device, checkpoint=checkpoint)
    config = inference_config(card, Path(config_path) if config_path is not None else None, overrides)
    return Predictor(
        model, card, config.infer, config.postprocess, device, log=log.warning, max_voxels=config.data.max_voxels
    )
