"""Self-describing checkpoints: save atomically, load safely.

A checkpoint is a plain dict of tensors and primitive containers, so it loads with
``torch.load(..., weights_only=True)``: a file whose pickle carries code is refused
and the code never runs. Besides the weights it holds the optimizer, schedule and
scaler states, the epoch, RNG states and a **model card**
(:class:`~brainseg.model.card.ModelCard`, stored as its ``to_dict()``).
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from brainseg.errors import BrainsegError
from brainseg.io.atomic import atomic_path
from brainseg.io.naming import (  # noqa: F401 (re-exported)
    CHECKPOINT_BEST,
    CHECKPOINT_CHOICES,
    CHECKPOINT_FINAL,
    CHECKPOINT_LAST,
)
from brainseg.model.card import ModelCard
from brainseg.model.unet import UNet3D, build_model

#: Which checkpoint of a run folder :func:`load_model` takes, in order of preference: the
#: model at the end of training; for a run that has not finished, the one with the best
#: validation Dice so far; else the latest state.
RUN_PREFERENCE = (CHECKPOINT_FINAL, CHECKPOINT_BEST, CHECKPOINT_LAST)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically: a kill mid-write never leaves a corrupt file.

    The state is serialised in memory first and written with Python's own I/O: torch's
    file writer reports a full disk as an opaque ``RuntimeError`` ("unexpected pos"),
    this way it is an :class:`OSError` naming the checkpoint ("No space left on device").
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(buffer.getbuffer())
    return path


def resolve_checkpoint(path: str | os.PathLike, which: str | None = None) -> Path:
    """A checkpoint file, or a run folder's checkpoint: ``which`` (``final``, ``best`` or
    ``last``, that file or an error), else the first of :data:`RUN_PREFERENCE` it holds."""
    path = Path(path)
    if which is not None:
        if which not in CHECKPOINT_CHOICES:
            raise BrainsegError(f"checkpoint {which!r}: expected one of {', '.join(CHECKPOINT_CHOICES)}")
        if not path.is_dir():
            raise BrainsegError(f"{path}: --checkpoint {which} chooses a file of a run folder; this is not a folder")
        chosen = path / CHECKPOINT_CHOICES[which]
        if not chosen.is_file():
            present = [n for n in RUN_PREFERENCE if (path / n).is_file()]
            raise BrainsegError(f"{chosen}: not found (the run folder holds {', '.join(present) or 'no checkpoint'})")
        return chosen
    if path.is_dir():
        for name in RUN_PREFERENCE:
            if (path / name).is_file():
                return path / name
        raise BrainsegError(f"{path}: no checkpoint found (expected one of {', '.join(RUN_PREFERENCE)})")
    if not path.exists():
        raise BrainsegError(f"{path}: checkpoint not found")
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; refuse anything else clearly."""
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise BrainsegError(
            f"{path}: refused to load: the checkpoint contains objects other than tensors and "
            f"plain data (possibly code); only weights-only checkpoints are accepted ({first[:160]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise BrainsegError(f"{path}: not a readable checkpoint ({str(exc).splitlines()[0][:160]})") from None
    if not isinstance(state, dict) or "model" not in state or "card" not in state:
        raise BrainsegError(f"{path}: not a brainseg checkpoint (no model weights and model card)")
    return state


def card_from_state(state: dict[str, Any], source: object = "checkpoint") -> ModelCard:
    """The checkpoint's validated model card (one clear line naming ``source`` if it is unusable)."""
    return ModelCard.from_dict(state.get("card"), source=source)


def load_card(path: str | os.PathLike) -> ModelCard:
    """The validated model card of a checkpoint file or run folder (weights not built)."""
    source = resolve_checkpoint(path)
    return card_from_state(load_checkpoint(source), source)


def replace_card(path: str | os.PathLike, card: ModelCard) -> Path:
    """Rewrite a checkpoint file with ``card`` as its model card (weights and the rest unchanged;
    atomic): how a cross-validation stores the decision and quality score chosen after its folds."""
    state = load_checkpoint(path)
    return save_checkpoint(path, {**state, "card": card.to_dict()})


def nonfinite_tensors(weights: dict[str, Any]) -> list[str]:
    """The names of the floating-point tensors of a state dict that hold NaN or inf."""
    return [
        k
        for k, v in weights.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]


def model_from_state(state: dict[str, Any], card: ModelCard) -> UNet3D:
    model = build_model(**card.network.kwargs())
    model.load_state_dict(state["model"])
    return model


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", checkpoint: str | None = None
) -> tuple[UNet3D, ModelCard]:
    """Load a trained model for inference from a run folder or a checkpoint file
    (``checkpoint``: which of a run folder's, see :func:`resolve_checkpoint`).

    Returns ``(a new model in eval mode on device, its model card)``. Weights that hold
    NaN or inf are refused (such a model segments nothing)."""
    source = resolve_checkpoint(path, checkpoint)
    state = load_checkpoint(source, map_location="cpu")
    card = card_from_state(state, source)
    bad = nonfinite_tensors(state["model"]) if isinstance(state["model"], dict) else []
    if bad:
        raise BrainsegError(f"{source}: the model weights hold NaN or inf ({len(bad)} tensor(s), e.g. {bad[0]})")
    try:
        model = model_from_state(state, card)
    except (KeyError, TypeError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise BrainsegError(f"{source}: checkpoint does not match its model card ({first})") from None
    model.to(device).eval()
    return model, card
