"""Ensembles of compatible models, and the uncertainty maps of a prediction.

An ensemble is several models that segment a case together: the folds of a cross-validation
run folder (``RUN/fold_0``, ``RUN/fold_1``, ...: :func:`expand_models`) or any models given
together. They must agree on everything the case's preprocessing and the mask's meaning
depend on (:func:`check_compatible`): the case is then read and preprocessed once and one
sliding-window pass runs every member on each batch of windows (:class:`EnsembleWindows`).

The members' *probabilities* are averaged, as nnU-Net ensembles its folds: per member the
softmax (a label model) or the sigmoid per region (a region model) of its window logits,
after the member's own test-time mirroring has averaged its logits. The mean is taken per
window, before the Gaussian aggregation, so the aggregated result is exactly the
Gaussian-weighted mean of the members' probabilities and the predictor applies no softmax or
sigmoid of its own to it. A single model keeps its logits path (logits aggregated, then
activated): an ensemble of one is that model, bit for bit.

Uncertainty (``--save-uncertainty``), in [0, 1] per voxel of the scan's own grid:

* one model without mirroring: the predictive entropy of its probabilities, divided by
  ``log C`` (a region model: the mean over regions of the binary entropy, divided by ``log 2``),
  computed on the inverted (original-grid) probabilities (:func:`entropy_map`);
* an ensemble, or one model with test-time mirroring: the disagreement of its samples (every
  member's every mirror pass), measured as their mutual information: the entropy of the mean
  sample probabilities minus the mean of the samples' entropies (the "BALD" score), normalised
  the same way. It is 0 where the samples agree, whether certain or not, and grows where they
  disagree; unlike the total entropy it does not flag a boundary all members place alike.
  Member disagreement is what predicts failures: in a benchmark of failure detection in
  medical segmentation (Zenk et al., Medical Image Analysis 2025) the pairwise Dice between
  ensemble members was the best simple detector, and summed over a structure the voxels
  where the members' masks differ are what lowers that Dice. The mutual information is used
  instead of a per-voxel vote count because it is continuous: it is computed per window and
  aggregated (Gaussian weights) and interpolated to the scan's grid like the probabilities,
  as one extra channel of the window output (:class:`EnsembleWindows` with ``uncertainty``);
  being a mean of non-negative per-window values it stays in [0, 1].
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from brainseg.errors import BrainsegError
from brainseg.infer.mirroring import window_passes
from brainseg.infer.sliding_window import WindowPredictor
from brainseg.model.card import ModelCard
from brainseg.model.checkpoint import load_model, resolve_checkpoint

#: A cross-validation run folder's folds: ``fold_0``, ``fold_1``, ...
FOLD_FOLDER = re.compile(r"^fold_(?P<k>[0-9]+)$")


def fold_folders(path: str | os.PathLike) -> list[Path]:
    """The ``fold_k`` folders of a run folder, by ``k`` (empty: not a cross-validation run folder)."""
    path = Path(path)
    if not path.is_dir():
        return []
    folds = [(int(m["k"]), p) for p in path.iterdir() if p.is_dir() and (m := FOLD_FOLDER.match(p.name))]
    return [p for _, p in sorted(folds)]


def expand_models(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The members ``--model`` names: each cross-validation run folder's folds in fold order, any
    other run folder or checkpoint file as it is."""
    members: list[Path] = []
    for item in paths:
        members += fold_folders(item) or [Path(item)]
    return members


def _compared(card: ModelCard) -> dict[str, object]:
    """What members must share, by the name the error line gives it: the mask's meaning and the preprocessing."""
    return {
        "outputs": "regions" if card.regions is not None else "classes",
        "labels": dict(sorted(card.labels.items())),
        "regions": None if card.regions is None else card.regions.to_dict(),
        "channels": list(card.channels),
        "spacing": [float(s) for s in card.spacing],
        "patch size": [int(p) for p in card.patch_size],
        "normalisation": asdict(card.normalization),
        "intensity statistics": [asdict(i) for i in card.intensity],
        "preprocessing version": card.preprocess_version,
    }


def check_compatible(cards: Sequence[ModelCard], names: Sequence[object]) -> None:
    """Refuse members that cannot share one preprocessed case and one mask: one
    :class:`BrainsegError` line naming the first member, the other one and the field that differs."""
    if len(cards) != len(names):
        raise ValueError(f"{len(cards)} card(s) but {len(names)} name(s)")
    first = _compared(cards[0])
    for card, name in zip(cards[1:], names[1:]):
        other = _compared(card)
        for key, value in first.items():
            if other[key] != value:
                raise BrainsegError(
                    f"models {names[0]} and {name} cannot be ensembled: their {key} differ ({value} vs {other[key]})"
                )


def load_members(
    model_paths: Sequence[str | os.PathLike], device: torch.device, checkpoint: str | None = None
) -> list[tuple[Path, torch.nn.Module, ModelCard]]:
    """The models ``--model`` names (:func:`~brainseg.infer.ensemble.expand_models`: a cross-validation
    run folder's folds), each ``(checkpoint file, model, card)``; a :class:`BrainsegError` line naming two
    models that cannot be ensembled and what differs."""
    members: list[tuple[Path, torch.nn.Module, ModelCard]] = []
    for path in expand_models(model_paths):
        source = resolve_checkpoint(path, checkpoint)
        model, card = load_model(source, device)
        members.append((source, model, card))
    if not members:
        raise BrainsegError("--model: no model given")
    check_compatible([card for _, _, card in members], [source for source, _, _ in members])
    return members


def probabilities(logits: torch.Tensor, regions: bool) -> torch.Tensor:
    """(B, C, ...) logits to probabilities (float32): a sigmoid per region, else the softmax over dim 1."""
    logits = logits.float()
    return torch.sigmoid(logits) if regions else torch.softmax(logits, dim=1)


def normalised_entropy(probs: torch.Tensor, regions: bool, dim: int = 1) -> torch.Tensor:
    """Entropy of ``probs`` over ``dim``, in [0, 1]: ``-sum p log p / log C``; for regions (independent
    sigmoids) the mean binary entropy over ``dim`` divided by ``log 2``."""
    if regions:
        h = -(torch.xlogy(probs, probs) + torch.xlogy(1 - probs, 1 - probs))
        return h.mean(dim) / math.log(2.0)
    return -torch.xlogy(probs, probs).sum(dim) / math.log(max(probs.shape[dim], 2))


def entropy_map(probs: np.ndarray, regions: bool) -> np.ndarray:
    """:func:`normalised_entropy` of (C, X, Y, Z) probabilities, float32 (X, Y, Z), one channel at a time
    (two full-size temporaries instead of C)."""
    t = torch.from_numpy(np.asarray(probs, dtype=np.float32))
    out = torch.zeros(t.shape[1:], dtype=torch.float32)
    for p in t:
        out -= torch.xlogy(p, p)
        if regions:
            out -= torch.xlogy(1 - p, 1 - p)
    out /= t.shape[0] * math.log(2.0) if regions else math.log(max(t.shape[0], 2))
    return out.clamp_(0.0, 1.0).numpy()


@dataclass(frozen=True)
class EnsembleWindows:
    """A batch of windows through every member: (B, C, ...) scores, plus the samples' mutual
    information as one more channel with ``uncertainty``.

    The scores are the mean of the members' probabilities (two or more members), or the one
    member's logits exactly as its own predictor returns them (one member: mirrored passes
    summed in the same order and divided alike). Samples for the uncertainty channel: each
    member's each mirror pass (:func:`~brainseg.infer.mirroring.window_passes`).
    """

    members: tuple[WindowPredictor, ...]
    #: A region model: sigmoids per output instead of a softmax over them.
    regions: bool = False
    uncertainty: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", tuple(self.members))
        if not self.members:
            raise ValueError("an ensemble needs at least one member")

    @property
    def returns_probabilities(self) -> bool:
        """True: the scores are probabilities already; False: logits (one member)."""
        return len(self.members) > 1

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if not self.uncertainty:
            if not self.returns_probabilities:
                return self.members[0](batch)
            total = probabilities(self.members[0](batch), self.regions)
            for member in self.members[1:]:
                total += probabilities(member(batch), self.regions)
            return total / len(self.members)
        scores: torch.Tensor | None = None
        samples: torch.Tensor | None = None
        entropies: torch.Tensor | None = None
        n = 0
        for member in self.members:
            logits: torch.Tensor | None = None
            passes = 0
            for out in window_passes(member, batch):
                logits = out if logits is None else logits + out
                passes += 1
                q = probabilities(out, self.regions)
                h = normalised_entropy(q, self.regions)
                samples = q if samples is None else samples.add_(q)
                entropies = h if entropies is None else entropies.add_(h)
                n += 1
            assert logits is not None
            mean_logits = logits / passes
            if not self.returns_probabilities:
                scores = mean_logits.float()
            else:
                p = probabilities(mean_logits, self.regions)
                scores = p if scores is None else scores.add_(p)
        assert scores is not None and samples is not None and entropies is not None
        if self.returns_probabilities:
            scores /= len(self.members)
        info = (normalised_entropy(samples / n, self.regions) - entropies / n).clamp_(0.0, 1.0)
        return torch.cat([scores, info[:, None]], dim=1)
