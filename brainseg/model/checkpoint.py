"""Self-describing checkpoints: save atomically, load safely.

A checkpoint is a plain dict of tensors and primitive containers, so it loads with
``torch.load(..., weights_only=True)``: a file whose pickle carries code is refused
and the code never runs. Besides the weights it holds the optimizer, schedule and
scaler states, the epoch, RNG states and a **model card**::

    card = {
        "format": 1,
        "model": {"in_channels": 1, "num_classes": 4, "levels": 4, ...},  # UNet3D kwargs
        "labels": {"0": "background", "1": "CSF", ...},
        "channels": ["T1"],
        "spacing": [1.75, 1.75, 1.75],          # target spacing (mm, RAS order)
        "patch_size": [64, 64, 64],
        "normalization": {"scheme": "zscore", "mask": "nonzero", "crop_to_nonzero": true},
        "config": {...},                          # the whole run config
        "versions": {"brainseg": ..., "torch": ..., "monai": ...},
    }
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from ..errors import BrainsegError
from ..atomic import atomic_path
from .unet import UNet3D, build_model

CHECKPOINT_LAST = "checkpoint_last.pt"
CHECKPOINT_BEST = "checkpoint_best.pt"
CHECKPOINT_FINAL = "checkpoint_final.pt"
#: Which checkpoint of a run folder :func:`load_model` takes, in order of preference.
RUN_PREFERENCE = (CHECKPOINT_FINAL, CHECKPOINT_LAST, CHECKPOINT_BEST)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"torch": str(torch.__version__)}  # TorchVersion is not a weights_only-loadable type
    for name in ("brainseg", "monai", "nibabel", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


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


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or the preferred checkpoint inside a run folder."""
    path = Path(path)
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


def model_from_state(state: dict[str, Any]) -> UNet3D:
    card = state["card"]
    model = build_model(**card["model"])
    model.load_state_dict(state["model"])
    return model


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Load a trained model for inference from a run folder or a checkpoint file.

    Returns ``(model in eval mode on device, model card)``.
    """
    state = load_checkpoint(path, map_location="cpu")
    try:
        model = model_from_state(state)
    except (KeyError, TypeError, RuntimeError) as exc:
        raise BrainsegError(f"{resolve_checkpoint(path)}: checkpoint does not match its model card ({exc})") from None
    model.to(device).eval()
    return model, state["card"]
