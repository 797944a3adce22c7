"""Validation during training: ``brainseg predict`` + ``brainseg evaluate`` on the held-out cases.

:func:`validation_dice` segments each case with the :class:`~brainseg.infer.predictor.Predictor`
that ``predict`` uses (windows, input-mask rule, far background, postprocessing), on the
case's own files, and scores the mask in the case's own grid against its label file with
:func:`brainseg.metrics.dice`. Under torchrun each rank scores ``cases[rank::world]`` and
the per-label Dice sums and the case count are all-reduced, so every rank returns the
same means, the means one process would compute.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch

from ..card import ModelCard
from ..config import Config
from ..data.cases import Case
from ..infer.predictor import Predictor
from ..io import read_label
from ..metrics import dice
from ..runtime import DistInfo
from . import distributed as ddp

log = logging.getLogger(__name__)


class Validation:
    """The validation cases of this rank, read and preprocessed once, segmented at every call."""

    def __init__(self, cases: Sequence[Case], label_values: Sequence[int], info: DistInfo):
        self.info = info
        self.cases = list(cases)[info.rank :: info.world_size]
        self.values = [int(v) for v in sorted(label_values) if v != 0]
        self._prepared: list | None = None

    def dice(self, model: torch.nn.Module, card: ModelCard, cfg: Config, device: torch.device) -> dict[int, float]:
        """Mean Dice per foreground label value over all ranks' validation cases."""
        sums = [0.0] * len(self.values)
        with ddp.together(self.info, "validating"):
            predictor = Predictor(model, card, cfg.infer, cfg.postprocess, device, max_voxels=cfg.data.max_voxels)
            if self._prepared is None:
                self._prepared = [predictor.prepare(list(c.images)) for c in self.cases]
            for source, case in zip(self.cases, self._prepared):
                pred, _ = predictor.segment(case)
                ref, _ = read_label(source.label, max_voxels=cfg.data.max_voxels)
                for i, v in enumerate(self.values):
                    sums[i] += dice(pred == v, ref == v)
        *totals, count = ddp.sum_across_ranks(sums + [float(len(self.cases))], self.info)
        scores = {v: t / max(count, 1.0) for v, t in zip(self.values, totals)}
        log.debug(f"rank {self.info.rank}/{self.info.world_size}: validation Dice {scores!r} over {count:g} case(s)")
        return scores
