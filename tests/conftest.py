"""Shared test fixtures: tiny real checkpoints (no training, no mocks).

``tiny_checkpoint`` is a 1-channel, 3-class model card + weights saved exactly the way
a trained run saves them (:func:`brainseg.model.checkpoint.save_checkpoint`), so
inference tests can load it with ``--model PATH``. ``tiny_checkpoint_factory`` builds
variants (other channels, other labels, another seed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import pytest
import torch

from brainseg.config import load_config
from brainseg.card import ModelCard, Network, Normalization, package_versions
from brainseg.data.preprocess import PREPROCESS_VERSION
from brainseg.model.checkpoint import save_checkpoint
from brainseg.model.unet import UNet3D

TINY_LABELS = {"0": "background", "1": "a", "2": "b"}
TINY_SPACING = [1.5, 1.5, 1.5]
TINY_PATCH = [16, 16, 16]


def make_tiny_checkpoint(
    path: Path,
    channels: Sequence[str] = ("T1",),
    labels: dict[str, str] | None = None,
    seed: int = 5,
) -> Path:
    """Save a randomly initialised UNet3D (levels=2, base_features=4) with a model card.

    The 1x1x1 head is scaled up (bias zeroed) so the untrained network's argmax varies
    across the volume instead of picking one class everywhere; tests of geometry
    and orientation then have structure to compare (with the default seed all three
    classes occur inside a small phantom head).
    """
    labels = dict(TINY_LABELS if labels is None else labels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UNet3D(in_channels=len(channels), num_classes=len(labels), levels=2, base_features=4)
    with torch.no_grad():
        model.heads[0].weight.mul_(20.0)
        model.heads[0].bias.zero_()
    card = ModelCard(
        network=Network.from_kwargs(model.hparams),
        labels={int(k): v for k, v in labels.items()},
        channels=tuple(channels),
        spacing=tuple(TINY_SPACING),
        patch_size=tuple(TINY_PATCH),
        normalization=Normalization(scheme="zscore", mask="foreground", crop_to_nonzero=True),
        preprocess_version=PREPROCESS_VERSION,
        config=load_config().to_dict(),
        versions=package_versions(),
    ).to_dict()
    return save_checkpoint(path, {"model": model.state_dict(), "card": card})


@pytest.fixture(scope="session")
def tiny_checkpoint_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``factory(channels=("T1",), labels=None, seed=5) -> Path`` of a saved tiny checkpoint."""

    def factory(channels: Sequence[str] = ("T1",), labels: dict[str, str] | None = None, seed: int = 5) -> Path:
        folder = tmp_path_factory.mktemp("tiny_model")
        return make_tiny_checkpoint(folder / "checkpoint_final.pt", channels, labels, seed)

    return factory


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_checkpoint_factory: Callable[..., Path]) -> Path:
    """A 1-channel (T1), 3-class tiny checkpoint file (``checkpoint_final.pt``)."""
    return tiny_checkpoint_factory()
