"""Patch dataset and loader for training.

Sample ``i`` (a global counter over the whole run) is a pure function of
``(seed, rank, i)``: which case, where, which augmentation. So results do not depend
on the number of worker processes, a resumed run draws exactly the patches the
uninterrupted run would have drawn, and each DDP rank draws different patches.
Within each batch the last ``ceil(batch * foreground_fraction)`` samples are centred
on a voxel of a randomly chosen foreground class present in their case; for region
training (a ``region_table``) on a voxel of a randomly chosen region present in it
(:func:`~brainseg.train.sampling.patches.region_locations`: the stored voxels of its classes).
Targets stay class indices either way; the loss turns them into region masks.

A flip along axis 0 (the subject's left-right axis: the cache is in RAS order) swaps the
labels of each left/right pair of the dataset's :class:`~brainseg.labels.laterality.Laterality`, and
does not happen when a lateralised label has no partner (:func:`~brainseg.train.sampling.augment.flip`).

With ``synth`` > 0 that share of the patches gets an image redrawn from its (flipped) labels in a
random contrast (:mod:`brainseg.train.sampling.synth`), before the intensity augmentation; its
draws come from a generator spawned from the patch's, so every other draw of the patch stays as
it is, and ``synth`` 0 leaves every patch exactly as without it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from brainseg.config import AugmentConfig, NormalizationScheme
from brainseg.labels.laterality import Laterality
from brainseg.preprocessing.cache import CachedCase
from brainseg.train.sampling import augment, synth
from brainseg.train.sampling.patches import (
    extract_patch,
    foreground_center,
    random_center,
    region_locations,
)


class PatchDataset(Dataset):
    def __init__(
        self,
        cases: Sequence[CachedCase],
        patch_size: Sequence[int],
        batch_size: int,
        foreground_fraction: float,
        augment_cfg: AugmentConfig,
        seed: int = 0,
        rank: int = 0,
        laterality: Laterality = Laterality(),  # noqa: B008 (frozen: an immutable default)
        label_values: Sequence[int] | None = None,
        region_table: np.ndarray | None = None,
        synth_share: float = 0.0,
        normalization: NormalizationScheme = "zscore",
    ):
        """``laterality``: the left/right label pairs; ``label_values``: the data set's label
        values (the cache's class i is the i-th smallest; needed when there are pairs);
        ``synth_share``: the share of synthetic patches; ``normalization``: the cache's scheme."""
        if not cases:
            raise ValueError("no training cases")
        self.swap: np.ndarray | None = None
        if laterality.pairs:
            if label_values is None:
                raise ValueError("left/right label pairs need the label values of the classes")
            self.swap = np.asarray(laterality.channel_permutation(sorted(label_values)))
        self.left_right = laterality.may_flip_left_right
        self.cases = list(cases)
        self.patch = [int(p) for p in patch_size]
        self.batch_size = int(batch_size)
        self.n_foreground = min(self.batch_size, math.ceil(self.batch_size * foreground_fraction))
        self.aug = augment_cfg
        self.seed = int(seed)
        self.rank = int(rank)
        #: (K, R) class -> region table for region training (foreground patches on regions), or None.
        self.region_table = region_table
        self.synth_share = float(synth_share)
        self.normalization: NormalizationScheme = normalization
        self._arrays: dict[int, tuple] = {}

    def __len__(self) -> int:  # indices are unbounded; the sampler decides
        return 2**62

    def _case(self, k: int):
        if k not in self._arrays:  # opened lazily, per worker process (memory maps)
            case = self.cases[k]
            image, seg = case.load(mmap=True)
            locations = case.locations()
            if self.region_table is not None:
                locations = region_locations(locations, self.region_table)
            n_classes = max(case.classes, default=0) + 1
            mix = synth.subject_mix(image, seg, case.record, n_classes) if self.synth_share else None
            self._arrays[k] = (image, seg, locations, mix)
        return self._arrays[k]

    def wants_foreground(self, index: int) -> bool:
        return (index % self.batch_size) >= self.batch_size - self.n_foreground

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.rank, int(index)])
        k = int(rng.integers(len(self.cases)))
        image, seg, locations, mix = self._case(k)
        center = foreground_center(locations, rng) if self.wants_foreground(index) else None
        if center is None:
            center = random_center(seg.shape, self.patch, rng)
        record = self.cases[k].record
        fill = record.pad_values()
        matrix = augment.spatial_matrix(rng, self.aug)
        img, lab = extract_patch(image, seg, center, self.patch, matrix, fill)
        img, lab = augment.flip(img, lab, rng, self.aug, self.swap, self.left_right)
        raw_zero = [-m / s for m, s in zip(record.norm_mean, record.norm_std)]
        background = fill if record.zero_background else None
        if mix is not None:
            drawn = synth.redraw(rng.spawn(1)[0], self.synth_share, img, lab, record, mix, self.normalization)
            if drawn is not None:
                img, zero = drawn
                raw_zero = [float(v) for v in zero]
                background = raw_zero if record.zero_background else None
        img = augment.intensity(img, rng, self.aug, background, raw_zero)
        return torch.from_numpy(np.ascontiguousarray(img)), torch.from_numpy(np.ascontiguousarray(lab).astype(np.int64))


class RangeSampler(Sampler[int]):
    """Yields global sample indices ``start, start+1, ...``; the trainer moves ``start``."""

    def __init__(self, count: int):
        self.start = 0
        self.count = int(count)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.start + self.count))

    def __len__(self) -> int:
        return self.count


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def make_loader(dataset: PatchDataset, sampler: RangeSampler, num_workers: int, pin_memory: bool) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=dataset.batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        drop_last=False,
    )
