"""What predicts with which settings: the ``infer`` and ``postprocess`` sections a model predicts
with (its card's, or a config file's, plus ``--set``) and the :class:`Predictor` of one model as
``brainseg predict`` builds it."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from brainseg.config import Config, apply_overrides, config_from_dict, load_config
from brainseg.errors import BrainsegError
from brainseg.infer.predictor import Predictor
from brainseg.model.card import ModelCard
from brainseg.model.checkpoint import load_model

log = logging.getLogger(__name__)


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
