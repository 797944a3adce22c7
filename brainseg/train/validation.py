"""Validation during training: ``brainseg predict`` + ``brainseg evaluate`` on the held-out cases.

:func:`validation_dice` segments each case with the :class:`~brainseg.infer.predictor.Predictor`
that ``predict`` uses (windows, input-mask rule, far background, postprocessing), on the
case's own files, and scores the mask in the case's own grid against its label file with
:func:`brainseg.metrics.dice`. Under torchrun each rank scores ``cases[rank::world]`` and
the per-label Dice sums and the case count are all-reduced, so every rank returns the
same means, the means one process would compute.

A region model is scored per region (Dice of each region's mask, by region name), as
BraTS is. At the end of its training :meth:`Validation.choose_innermost_min` picks the
enhancing-tumour rule's volume: the candidate (:data:`~brainseg.postprocess.INNERMOST_CANDIDATES_MM3`)
with the best mean region Dice over the validation cases, the smallest on a tie.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Sequence

import torch

from ..card import ModelCard
from ..config import Config
from ..data.cases import Case
from ..infer.predictor import Predictor
from ..io import read_label
from ..metrics import dice
from ..postprocess import INNERMOST_CANDIDATES_MM3, innermost_rule
from ..regions import Regions
from ..runtime import DistInfo
from . import distributed as ddp

log = logging.getLogger(__name__)


class Validation:
    """The validation cases of this rank, read and preprocessed once, segmented at every call."""

    def __init__(self, cases: Sequence[Case], label_values: Sequence[int], info: DistInfo, regions: Regions | None = None):
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
            return list(self.regions.dice(pred, ref).values())
        return [dice(pred == v, ref == v) for v in self.values]

    def _segmented(self, model: torch.nn.Module, card: ModelCard, cfg: Config, device: torch.device, postprocess):
        """(prediction, reference, spacing) of each of this rank's cases, segmented as ``predict`` does."""
        predictor = Predictor(model, card, cfg.infer, postprocess, device, max_voxels=cfg.data.max_voxels)
        if self._prepared is None:
            self._prepared = [predictor.prepare(list(c.images)) for c in self.cases]
        for source, case in zip(self.cases, self._prepared):
            pred, _ = predictor.segment(case)
            ref, _ = read_label(source.label, max_voxels=cfg.data.max_voxels)
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
        self, model: torch.nn.Module, card: ModelCard, cfg: Config, device: torch.device,
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
            log.info(f"enhancing-tumour rule ({self.regions.names[-1]} under N mm^3 -> label {self.regions.innermost[1]}): "
                     f"mean region Dice by N {table}; chosen {best:g} mm^3")
        return best


def innermost_scores(pred, ref, spacing, regions: Regions, candidates: Sequence[float]) -> list[float]:
    """One case's mean region Dice with the enhancing-tumour rule at each candidate volume."""
    out = []
    for t in candidates:
        scores = regions.dice(innermost_rule(pred, spacing, regions, t), ref)
        out.append(sum(scores.values()) / len(scores))
    return out


def smallest_best(candidates: Sequence[float], means: Sequence[float]) -> float:
    """The smallest candidate with the best mean (ties go to the smaller volume: less changed)."""
    best = max(means)
    return min(c for c, m in zip(candidates, means) if m == best)
