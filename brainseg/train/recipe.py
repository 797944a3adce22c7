"""What training optimises and how: the data split, the label table, the loss, the optimizer
and the learning-rate schedule (the trainer's loop is :mod:`brainseg.train.trainer`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import get_args

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss

from brainseg.config import Config, LabelsConfig, LrSchedule, Optimizer, TrainConfig
from brainseg.data.cases import Case
from brainseg.errors import BrainsegError, InputError
from brainseg.io.images import read_label
from brainseg.labels.laterality import Laterality, resolve
from brainseg.labels.regions import Regions
from brainseg.runtime import torchrun_env

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- data


def label_table(dataset_labels: dict[int, str], cases: list[Case], max_voxels: int) -> dict[int, str]:
    """The data set's labels; read from the label files when dataset.json gives none."""
    if dataset_labels:
        labels = {int(k): str(v) for k, v in dataset_labels.items()}
    else:
        values: set[int] = set()
        for case in cases:
            if case.label is None:
                raise InputError(case.images[0], "training case has no label file")
            lab, _ = read_label(case.label, max_voxels=max_voxels)
            values.update(int(v) for v in np.unique(lab))
        labels = {v: ("background" if v == 0 else f"label_{v}") for v in sorted(values | {0})}
    if 0 not in labels:
        labels[0] = "background"
    if len(labels) < 2:
        raise BrainsegError("the data set has no foreground label")
    return dict(sorted(labels.items()))


def resolve_laterality(config: Config, labels: dict[int, str]) -> tuple[Config, Laterality]:
    """The data set's left/right label pairs (``labels.mirror_pairs``, else from the label names)
    and a copy of ``config`` recording them, as the run's config and model card store them
    (:meth:`~brainseg.labels.laterality.Laterality.to_config`). Logs one line: the pairs (info), a warning
    naming the lateralised labels without a partner (then no patch is flipped left-right), or
    (debugging) that there are none."""
    found = resolve(config.labels.mirror_pairs, labels)
    level = logging.WARNING if not found.may_flip_left_right else logging.INFO if found.pairs else logging.DEBUG
    log.log(level, found.describe(labels))
    return replace(config, labels=replace(config.labels, mirror_pairs=found.to_config())), found


def resolve_regions(config: LabelsConfig, dataset_regions: Regions | None, labels: dict[int, str]) -> Regions | None:
    """What the network learns: the config's ``labels.regions`` when given ({}: per-label
    training), else the data set's regions (in ``labels.regions_class_order`` if that is set);
    None = per-label (softmax) training. Every region's label values must be labels of the data set."""
    if config.regions is None:
        regions = dataset_regions
        if regions is not None and config.regions_class_order is not None:  # the data set's, reordered
            regions = Regions(regions.names, regions.labels, tuple(int(v) for v in config.regions_class_order))
    elif not config.regions:
        regions = None
    else:
        regions = Regions.from_config(config.regions, config.regions_class_order)
    if regions is None and config.regions_class_order is not None:
        raise BrainsegError(
            "config labels.regions_class_order is set but there are no regions (labels.regions, "
            "or a data set that defines them)"
        )
    if regions is not None:
        regions.class_table(labels)  # one error line when a region names an unknown label
    if regions is not None and torchrun_env().is_main:
        log.info(f"region-based training: {', '.join(f'{n} {list(v)}' for n, v in zip(regions.names, regions.labels))}")
    return regions


def region_table(regions: Regions | None, labels: dict[int, str]) -> np.ndarray | None:
    """(K, R) class index -> region membership for region training; None for a label model."""
    return regions.class_table(labels) if regions is not None else None


def output_count(labels: dict[int, str], regions: Regions | None) -> int:
    """The network's outputs: one per class (background included), or one per region."""
    return len(regions) if regions is not None else len(labels)


def region_card_fields(regions: Regions | None, innermost_min_mm3: float) -> dict:
    """The model card's region fields (:class:`~brainseg.model.card.ModelCard`): none for a label model."""
    if regions is None:
        return {}
    return {
        "regions": regions,
        "region_thresholds": (0.5,) * len(regions),
        "innermost_min_mm3": float(innermost_min_mm3),
    }


def split_cases(
    cases: list[Case], val_fraction: float, seed: int, given: tuple[Sequence[str], Sequence[str]] | None = None
) -> tuple[list[Case], list[Case]]:
    """Deterministic train/validation split (at least one of each when possible); ``given``:
    the (training, validation) case ids to use instead (:func:`given_split`)."""
    if given is not None:
        return given_split(cases, *given)
    if len(cases) < 2:
        return list(cases), list(cases)  # validate on the only case rather than not at all
    order = np.random.default_rng(seed).permutation(len(cases))
    n_val = min(len(cases) - 1, max(1, int(round(val_fraction * len(cases)))))
    val = sorted((cases[i] for i in order[:n_val]), key=lambda c: c.case_id)
    train = sorted((cases[i] for i in order[n_val:]), key=lambda c: c.case_id)
    return train, val


def given_split(cases: list[Case], train_ids: Sequence[str], val_ids: Sequence[str]) -> tuple[list[Case], list[Case]]:
    """The training and validation cases a caller names by id (a cross-validation fold), in
    :func:`split_cases`' order (by case id); one error line when an id is not a case of the data set."""
    by_id = {c.case_id: c for c in cases}
    unknown = sorted(set(train_ids) - set(by_id) | set(val_ids) - set(by_id))
    if unknown:
        raise BrainsegError(f"the split names case(s) the data set does not hold: {', '.join(unknown)}")
    if not val_ids:
        raise BrainsegError("the split has no validation case")
    return [by_id[i] for i in sorted(train_ids)], [by_id[i] for i in sorted(val_ids)]


# --------------------------------------------------------------------------- model / loss


#: The coarsest deep-supervision output's weight (before the weights are normalised to sum
#: to 1). nnU-Net ignores that output; a weight of exactly 0 would leave its head without a
#: gradient, which DistributedDataParallel refuses ("Expected to have finished reduction in
#: the prior iteration"), so it gets nnU-Net's DDP weight, 1e-6: every head takes part and
#: the coarsest barely counts, in one process and under torchrun alike.
COARSEST_WEIGHT = 1e-6


def deep_supervision_weights(n_outputs: int) -> list[float]:
    """Loss weights of the outputs, finest first: 1, 1/2, 1/4, ..., the coarsest :data:`COARSEST_WEIGHT`."""
    weights = [0.5**i for i in range(n_outputs)]
    if n_outputs > 1:
        weights[-1] = COARSEST_WEIGHT
    return weights


class RegionLoss(torch.nn.Module):
    """Dice (sigmoid per region, foreground only) + binary cross-entropy per region voxel,
    nnU-Net's region loss. Not MONAI's ``DiceCELoss(sigmoid=True)``: with more than one
    channel that applies a softmax cross-entropy across the regions, which nested regions
    (a voxel in WT, TC and ET at once) contradict; it uses BCE only for one channel."""

    def __init__(self):
        super().__init__()
        self.dice = DiceLoss(include_background=True, sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
        self.bce = torch.nn.BCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.dice(logits, target) + self.bce(logits, target)


def region_targets(classes: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """(B, X, Y, Z) class indices -> (B, R, X, Y, Z) float region masks by a (K, R) class table."""
    return table[classes.long()].movedim(-1, 1).float()


class SegLoss(torch.nn.Module):
    """Dice + cross-entropy (MONAI's DiceCELoss, softmax over the classes), or with a
    ``region_table`` (:meth:`~brainseg.labels.regions.Regions.class_table`) Dice + BCE per region
    (:class:`RegionLoss`) against the region masks of the class-index target; with optional
    deep supervision: a list of outputs (finest first) is scored against the target
    resampled (nearest) to each, with :func:`deep_supervision_weights`."""

    def __init__(self, region_table: np.ndarray | None = None):
        super().__init__()
        self.table: torch.Tensor | None
        self.loss: torch.nn.Module
        if region_table is None:
            self.table = None
            self.loss = DiceCELoss(
                include_background=False, to_onehot_y=True, softmax=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5
            )
        else:
            self.table = torch.as_tensor(np.asarray(region_table, dtype=bool))
            self.loss = RegionLoss()

    def _score(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One output against (B, 1, X, Y, Z) class indices at its resolution."""
        if self.table is None:
            return self.loss(out.float(), target)
        return self.loss(out.float(), region_targets(target[:, 0], self.table.to(target.device)))

    def forward(self, outputs, target: torch.Tensor) -> torch.Tensor:
        target = target[:, None]
        if isinstance(outputs, torch.Tensor):
            return self._score(outputs, target)
        weights = deep_supervision_weights(len(outputs))
        total = sum(weights)
        loss: torch.Tensor | None = None
        for w, out in zip(weights, outputs):
            t = (
                target
                if out.shape[2:] == target.shape[2:]
                else F.interpolate(target.float(), size=out.shape[2:], mode="nearest").long()
            )
            term = (w / total) * self._score(out, t)
            loss = term if loss is None else loss + term
        assert loss is not None  # deep supervision gives at least one output
        return loss


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise BrainsegError(f"train.optimizer must be one of {', '.join(get_args(Optimizer))}, got {cfg.optimizer!r}")


def poly_lr(lr0: float, progress: float, schedule: LrSchedule) -> float:
    if schedule == "constant":
        return lr0
    if schedule == "poly":
        return lr0 * (1.0 - min(max(progress, 0.0), 1.0)) ** 0.9
    raise BrainsegError(f"train.lr_schedule must be one of {', '.join(get_args(LrSchedule))}, got {schedule!r}")


def run_budget(stored: float | None, requested: float | None) -> float | None:
    """A run's total time budget (seconds of training) when it starts or resumes.

    ``stored`` is the budget the run was given before (None: none), ``requested`` what
    ``--max-minutes`` asks now. A run keeps its total: resuming with the same or a
    smaller value, or none, continues the stored budget; a larger value becomes the
    new total; a run without one takes the requested value as its total."""
    if requested is None:
        return stored
    if stored is None:
        return float(requested)
    if requested < stored:
        log.warning(
            f"--max-minutes {requested / 60:g} is less than the run's budget of {stored / 60:g} min; the resumed "
            "run keeps its total budget (a larger value extends it)"
        )
    return max(float(stored), float(requested))


def schedule_progress(step: int, total_steps: int, elapsed: float, budget: float | None) -> float:
    """The fraction of the run done, for the learning rate: of the iterations while the run,
    at its pace so far, ends its iterations within the time budget (training seconds over
    all invocations; a planned run: the schedule follows the steps and repeats itself);
    else of the budget when that is larger (the clock ends the run first)."""
    frac = step / max(1, total_steps)
    if budget and (step == 0 or elapsed * total_steps / step > budget):
        frac = max(frac, elapsed / budget)
    return frac
