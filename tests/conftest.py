"""Shared test fixtures: tiny real checkpoints (no training, no mocks) and one demo data set.

``tiny_checkpoint`` is a 1-channel, 3-class model card + weights saved exactly the way
a trained run saves them (:func:`brainseg.model.checkpoint.save_checkpoint`), so
inference tests can load it with ``--model PATH``. ``tiny_checkpoint_factory`` builds
variants (other channels, other labels, another seed).

``demo_data`` is the demo data set (``brainseg demo-data OUT --n 4``: 3 training and 1
held-out subject, seed 0), made once per session through the real CLI and shared by
every test that reads it; a test that writes into a data folder takes
``demo_data_copy`` (its own copy) instead.

``slow`` marks the tests that train in a subprocess or under torchrun
(``make test-fast`` = ``pytest -m "not slow"``).

Under ``pytest -n N`` each worker and every process it starts compute on one thread
(``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``): N workers with torch's default of
one thread per core each would oversubscribe the cores.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

from brainseg.config import load_config
from brainseg.model.card import ModelCard, Network, Normalization, package_versions
from brainseg.model.checkpoint import save_checkpoint
from brainseg.model.unet import UNet3D
from brainseg.preprocessing.preprocess import PREPROCESS_VERSION

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

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


# ----------------------------------------------------------------------------- the shared demo data set

DEMO_N = 4  # subjects of the shared demo data set: 3 in imagesTr, 1 in imagesTs


@pytest.fixture(scope="session")
def demo_data_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """``brainseg demo-data OUT --n 4`` run once as a subprocess: (OUT, the finished process)."""
    pytest.importorskip("nilearn")
    out = tmp_path_factory.mktemp("demo") / "data"
    proc = subprocess.run(
        [sys.executable, "-m", "brainseg", "demo-data", str(out), "--n", str(DEMO_N)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return out, proc


@pytest.fixture(scope="session")
def demo_data(demo_data_run: tuple[Path, subprocess.CompletedProcess]) -> Path:
    """The shared demo data set (MSD layout). Read it only: writers take ``demo_data_copy``."""
    out, proc = demo_data_run
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture
def demo_data_copy(demo_data: Path, tmp_path: Path) -> Path:
    """A private copy of the shared demo data set, for a test that writes into it."""
    return Path(shutil.copytree(demo_data, tmp_path / "demo_data"))


# ----------------------------------------------------------------------------- markers

#: Tests marked ``slow`` here because their files are edited elsewhere (node id suffixes).
SLOW_ELSEWHERE = ("test_predict.py::test_torchrun_ranks_share_the_cases",)


#: The longest tests (whole scripts end to end, minutes each), run first: under ``pytest -n``
#: a long test that starts last keeps one worker busy after the others have finished.
LONGEST_FIRST = (
    "test_generalisation.py::test_the_check_runs_end_to_end",
    "test_skip_ablation.py::test_script_runs_end_to_end_on_tiny_settings",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.endswith(SLOW_ELSEWHERE):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: not item.nodeid.endswith(LONGEST_FIRST))  # stable: the rest keep their order
