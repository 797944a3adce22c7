"""Validation during training: ``brainseg predict`` + ``brainseg evaluate`` on the held-out cases
(without test-time mirroring, :func:`no_mirror`).

:func:`validation_dice` segments each case with the :class:`~brainseg.infer.predictor.Predictor`
that ``predict`` uses (windows, input-mask rule, far background, postprocessing), on the
case's own files, and scores the mask in the case's own grid against its label file with
:func:`brainseg.evaluate.metrics.dice`. Under torchrun each rank scores ``cases[rank::world]`` and
the per-label Dice sums and the case count are all-reduced, so every rank returns the
same means, the means one process would compute.

A region model is scored per region (Dice of each region's mask, by region name), as
BraTS is. At the end of its training :meth:`Validation.choose_innermost_min` picks the
enhancing-tumour rule's volume: the candidate (:data:`~brainseg.postprocess.decision.INNERMOST_CANDIDATES_MM3`)
with the best mean region Dice over the validation cases, the smallest on a tie.

Before that, :meth:`Validation.choose_decision` picks how voxels are decided: for a label
model a log-probability offset per class (:data:`~brainseg.train.decisions.OFFSET_CANDIDATES`, background fixed at 0),
for a region model a probability threshold per region (:data:`~brainseg.train.decisions.THRESHOLD_CANDIDATES`), by
coordinate ascent on the validation cases' mean Dice (:func:`~brainseg.train.decisions.coordinate_ascent`:
two sweeps; a change must gain more than :data:`~brainseg.train.decisions.DECISION_MIN_GAIN`). The softmax's argmax is each voxel's most likely class, not
the labelling with the best Dice: it under-segments thin classes (CSF on a 1.5 mm grid),
which a positive offset for that class corrects.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from brainseg.config import Config
from brainseg.data.cases import Case
from brainseg.errors import InputError
from brainseg.evaluate.metrics import dice, region_dice
from brainseg.infer.predictor import Predictor
from brainseg.io.images import read_label
from brainseg.labels.regions import Regions
from brainseg.model.card import ModelCard
from brainseg.postprocess.decision import (
    INNERMOST_CANDIDATES_MM3,
    labels_within_input,
    regions_within_input,
)
from brainseg.runtime import DistInfo
from brainseg.train import distributed as ddp
from brainseg.train.decisions import (
    OFFSET_CANDIDATES,
    THRESHOLD_CANDIDATES,
    coordinate_ascent,
    innermost_scores,
    smallest_best,
)

log = logging.getLogger(__name__)

#: At most this many validation cases per rank are kept in memory for the search.
DECISION_MAX_CASES = 4


def _label_path(case: Case) -> Path:
    """The label file of a validation case (every one has one)."""
    if case.label is None:
        raise InputError(case.images[0], "validation case has no label file")
    return case.label


class Validation:
    """The validation cases of this rank, read and preprocessed once, segmented at every call."""

    def __init__(
        self, cases: Sequence[Case], label_values: Sequence[int], info: DistInfo, regions: Regions | None = None
    ):
        self.info = info
        self.cases = list(cases)[info.rank :: info.world_size]
        self.values = [int(v) for v in sorted(label_values) if v != 0]
        self.regions = regions
        #: What is scored: foreground label values, or region names for a region model.
        self.keys: list = list(regions.names) if regions is not None else self.values
        self._prepared: list | None = None

    def _scores(self, pred, ref) -> list[float]:
        """Dice per key (label value or region) of one case."""
        if self.regions is not None:
            return list(region_dice(pred, ref, self.regions).values())
        return [dice(pred == v, ref == v) for v in self.values]

    def _predictor(
        self, model: torch.nn.Module, card: ModelCard, cfg: Config, device: torch.device, postprocess
    ) -> Predictor:
        """The predictor validation uses (no test-time mirroring); this rank's cases are read and preprocessed once."""
        predictor = Predictor(model, card, no_mirror(cfg), postprocess, device, max_voxels=cfg.data.max_voxels)
        if self._prepared is None:
            self._prepared = [predictor.prepare(list(c.images)) for c in self.cases]
        return predictor

    def _segmented(self, model: torch.nn.Module, card: ModelCard, cfg: Config, device: torch.device, postprocess):
        """(prediction, reference, spacing) of each of this rank's cases, segmented as ``predict`` does."""
        predictor = self._predictor(model, card, cfg, device, postprocess)
        assert self._prepared is not None  # _predictor prepared the cases
        for source, case in zip(self.cases, self._prepared):
            pred, _ = predictor.segment(case)
            ref, _ = read_label(_label_path(source), max_voxels=cfg.data.max_voxels)
            yield pred, ref, case.geometry.spacing

    def dice(self, model: torch.nn.Module, card: ModelCard, cfg: Config, device: torch.device) -> dict:
        """Mean Dice per foreground label value (per region name) over all ranks' validation cases."""
        sums = [0.0] * len(self.keys)
        with ddp.together(self.info, "validating"):
            for pred, ref, _ in self._segmented(model, card, cfg, device, cfg.postprocess):
                sums = [a + b for a, b in zip(sums, self._scores(pred, ref))]
        *totals, count = ddp.sum_across_ranks(sums + [float(len(self.cases))], self.info)
        scores = {v: t / max(count, 1.0) for v, t in zip(self.keys, totals)}
        log.debug(f"rank {self.info.rank}/{self.info.world_size}: validation Dice {scores!r} over {count:g} case(s)")
        return scores

    def choose_innermost_min(
        self,
        model: torch.nn.Module,
        card: ModelCard,
        cfg: Config,
        device: torch.device,
        candidates: Sequence[float] = INNERMOST_CANDIDATES_MM3,
    ) -> float:
        """Region models: the enhancing-tumour rule's volume (mm^3) with the best mean region Dice
        over all ranks' validation cases (ties: the smallest); 0.0 for a label model."""
        if self.regions is None:
            return 0.0
        candidates = sorted(float(c) for c in candidates)
        sums = [0.0] * len(candidates)
        with ddp.together(self.info, "choosing the enhancing-tumour rule"):
            off = replace(cfg.postprocess, innermost_min_mm3=0.0)
            for pred, ref, spacing in self._segmented(model, card, cfg, device, off):
                sums = [a + b for a, b in zip(sums, innermost_scores(pred, ref, spacing, self.regions, candidates))]
        *totals, count = ddp.sum_across_ranks(sums + [float(len(self.cases))], self.info)
        means = [t / max(count, 1.0) for t in totals]
        best = smallest_best(candidates, means)
        table = ", ".join(f"{c:g}: {m:.4f}" for c, m in zip(candidates, means))
        if self.info.is_main:
            log.info(
                f"enhancing-tumour rule ({self.regions.names[-1]} under N mm^3 -> label {self.regions.innermost[1]}): "
                f"mean region Dice by N {table}; chosen {best:g} mm^3"
            )
        return best

    def choose_decision(self, model: torch.nn.Module, card: ModelCard, cfg: Config, device: torch.device) -> dict:
        """The card fields of the voxel decision with the best mean validation Dice over all
        ranks' cases (see the module docstring): ``{"class_offsets": ...}`` for a label model,
        ``{"region_thresholds": ...}`` for a region model; ``{}`` when the config fixes them
        (``postprocess.class_offsets`` / ``region_thresholds``) or without validation cases."""
        regions = self.regions
        fixed = cfg.postprocess.region_thresholds if regions is not None else cfg.postprocess.class_offsets
        if fixed is not None:
            return {}
        predictor = self._predictor(model, card, cfg, device, cfg.postprocess)
        assert self._prepared is not None  # _predictor prepared the cases
        kept = []
        with ddp.together(self.info, "choosing the voxel decision"):
            for source, case in list(zip(self.cases, self._prepared))[:DECISION_MAX_CASES]:
                _, probs = predictor.segment(case, return_probabilities=True)
                ref, _ = read_label(_label_path(source), max_voxels=cfg.data.max_voxels)
                kept.append((probs, case.nonzero, predictor.input_mask_rule(case.record), ref))
        values = np.asarray(card.label_values)
        if regions is None:  # a log-probability offset per class, background fixed at 0
            start, candidates, first = np.zeros(card.num_classes), OFFSET_CANDIDATES, 1
            decide = lambda p, nz, mode, x: values[labels_within_input(p, nz, mode, np.exp(x))]  # noqa: E731
        else:  # a probability threshold per region
            start, candidates, first = np.full(len(regions), 0.5), THRESHOLD_CANDIDATES, 0
            decide = lambda p, nz, mode, x: regions_within_input(p, nz, mode, regions, x)  # noqa: E731

        def scores(settings) -> list[float]:  # mean Dice over all ranks' cases, per setting
            local = [
                sum(float(np.mean(self._scores(decide(p, nz, mode, x), ref))) for p, nz, mode, ref in kept)
                for x in settings
            ]
            *totals, count = ddp.sum_across_ranks(local + [float(len(kept))], self.info)
            return [t / count for t in totals] if count else []

        best, before, current = coordinate_ascent(start, candidates, first, scores)
        if np.array_equal(best, start):
            return {}
        names = [card.labels[int(v)] for v in values] if regions is None else list(regions.names)
        if self.info.is_main:
            table = ", ".join(f"{n} {x:g}" for n, x, x0 in zip(names, best, start) if x != x0)
            log.info(
                f"voxel decision chosen on the validation cases ({'log-probability offsets' if regions is None else 'thresholds'}): "
                f"{table}; validation Dice {before:.4f} -> {current:.4f}"
            )
        return {"class_offsets" if regions is None else "region_thresholds": tuple(float(x) for x in best)}

    def checked_postprocess(self, model: torch.nn.Module, card: ModelCard, cfg: Config, device: torch.device) -> Config:
        """``cfg``, with each whole-foreground rule switched off where the mean Dice over all ranks'
        validation cases says so (nnU-Net keeps a postprocessing step only where validation says it
        helps). ``largest_foreground`` must raise the Dice to stay: one false-positive blob larger
        than a small tumour would otherwise be all that is kept. ``drop_coreless`` (the plan's
        default for region models, measured on two tumour families) stays unless it lowers the
        Dice: one or two validation cases without a core-less blob cannot show it helping."""
        for flag in ("largest_foreground", "drop_coreless"):
            if not getattr(cfg.postprocess, flag) or (flag == "drop_coreless" and cfg.postprocess.largest_foreground):
                continue  # (the largest cored component kept, no core-less one is left)
            post = cfg.postprocess
            without_rule = (
                replace(post, largest_foreground=False)
                if flag == "largest_foreground"
                else replace(post, drop_coreless=False)
            )
            off = replace(cfg, postprocess=without_rule)
            sums = [0.0, 0.0]
            with ddp.together(self.info, f"checking the {flag} rule"):
                for i, c in enumerate((cfg, off)):
                    for pred, ref, _ in self._segmented(model, card, c, device, c.postprocess):
                        sums[i] += float(np.mean(self._scores(pred, ref)))
            with_rule, without, count = ddp.sum_across_ranks(sums + [float(len(self.cases))], self.info)
            keep = with_rule > without if flag == "largest_foreground" else with_rule >= without
            if not count or keep:
                continue
            if self.info.is_main:
                log.info(
                    f"postprocess.{flag} off: validation Dice {without / count:.4f} without it, "
                    f"{with_rule / count:.4f} with it"
                )
            cfg = off
        return cfg


def no_mirror(cfg: Config):
    """The inference settings validation uses: the config's without test-time mirroring (8x the
    time at every validation; the decision it chooses is applied to the mirrored average too)."""
    return replace(cfg.infer, mirror=False)
