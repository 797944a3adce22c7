"""Nested label regions (BraTS's whole tumour / tumour core / enhancing tumour).

A region is a set of label values; region-based training has one sigmoid output per
region, and a prediction becomes a label map again by ``class_order``: each region, in
order, writes its label value where its probability passes the threshold, later regions
overwriting earlier ones (nnU-Net v2's ``regions_class_order``). With the BraTS regions
WT = {1, 2, 4} > TC = {1, 4} > ET = {4} and the order (2, 1, 4) this gives back exactly
the BraTS label map: oedema (2) where only WT holds, necrosis (1) where TC but not ET,
enhancing tumour (4) where ET.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from brainseg.errors import BrainsegError


@dataclass(frozen=True)
class Regions:
    #: Region names, e.g. ("WT", "TC", "ET").
    names: tuple[str, ...]
    #: Per region, the label values it contains.
    labels: tuple[tuple[int, ...], ...]
    #: Per region, the label value it writes when a prediction becomes a label map.
    class_order: tuple[int, ...]

    def __post_init__(self) -> None:
        n = len(self.names)
        if n == 0 or len(self.labels) != n or len(self.class_order) != n:
            raise BrainsegError(
                f"regions: {n} name(s), {len(self.labels)} label list(s) and {len(self.class_order)} "
                "class-order value(s) must be as many, and at least one"
            )
        if len(set(self.names)) != n:
            raise BrainsegError(f"regions: names repeat: {list(self.names)}")
        for name, values, written in zip(self.names, self.labels, self.class_order):
            if not values or min(values) <= 0:
                raise BrainsegError(f"regions: {name!r} must hold positive label values, got {list(values)}")
            if written not in values:
                raise BrainsegError(
                    f"regions: {name!r} writes label {written}, which it does not contain {list(values)}"
                )

    def __len__(self) -> int:
        return len(self.names)

    @property
    def label_values(self) -> tuple[int, ...]:
        """Every label value some region contains, sorted."""
        return tuple(sorted({v for values in self.labels for v in values}))

    def masks(self, seg: np.ndarray) -> np.ndarray:
        """(R, *seg.shape) bool: where each region holds in the label map ``seg``."""
        return np.stack([np.isin(seg, values) for values in self.labels])

    def class_table(self, label_values) -> np.ndarray:
        """(K, R) bool: whether class index k (the k-th smallest of ``label_values``, the cache's
        class indices) lies in region r; ``table[classes]`` turns class indices into region masks."""
        values = sorted(int(v) for v in label_values)
        missing = sorted(set(self.label_values) - set(values))
        if missing:
            raise BrainsegError(
                f"regions: label value(s) {missing} of {self.to_dict()} are not among the data set's labels {values}"
            )
        return np.array([[v in region for region in self.labels] for v in values], dtype=bool)

    @property
    def innermost(self) -> tuple[int, int]:
        """(the label the last region of the class order writes, the label the one before writes, or 0):
        the BraTS enhancing-tumour rule relabels a too-small ET (4) as the tumour core's label (1)."""
        return self.class_order[-1], (self.class_order[-2] if len(self) > 1 else 0)

    def to_label_map(self, masks: np.ndarray, dtype=np.uint8) -> np.ndarray:
        """A label map from (R, ...) region masks (bool, or probabilities already thresholded)."""
        if masks.shape[0] != len(self):
            raise BrainsegError(f"regions: {masks.shape[0]} region masks for {len(self)} regions")
        out = np.zeros(masks.shape[1:], dtype=dtype)
        for mask, value in zip(masks, self.class_order):
            out[mask.astype(bool)] = value
        return out

    # ------------------------------------------------------------------ stored forms
    def to_dict(self) -> dict[str, Any]:
        """The model card's form: {"names": [...], "labels": [[...]], "class_order": [...]}."""
        return {
            "names": list(self.names),
            "labels": [list(v) for v in self.labels],
            "class_order": list(self.class_order),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Regions:
        try:
            return cls(
                tuple(str(n) for n in raw["names"]),
                tuple(tuple(int(v) for v in values) for values in raw["labels"]),
                tuple(int(v) for v in raw["class_order"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BrainsegError(f"regions: malformed {dict(raw)!r} ({exc})") from None

    @classmethod
    def from_config(cls, regions: Mapping[str, list[int]], class_order: list[int] | None) -> Regions:
        """From the config's ``labels.regions`` (name -> values) and ``labels.regions_class_order``;
        without an order, each region writes its smallest label value that no later region holds
        (for nested regions: the value that is its own), else its largest."""
        names = tuple(regions)
        labels = tuple(tuple(sorted(int(v) for v in regions[n])) for n in names)
        if class_order is None:
            order = []
            for i, values in enumerate(labels):
                later = {v for other in labels[i + 1 :] for v in other}
                own = [v for v in values if v not in later]
                order.append(own[0] if own else values[-1])
            class_order = order
        return cls(names, labels, tuple(int(v) for v in class_order))


#: BraTS 2021 and earlier (labels 1 necrosis / non-enhancing core, 2 oedema, 4 enhancing).
BRATS_2021 = Regions(("WT", "TC", "ET"), ((1, 2, 4), (1, 4), (4,)), (2, 1, 4))
#: BraTS 2023 (enhancing tumour written as 3).
BRATS_2023 = Regions(("WT", "TC", "ET"), ((1, 2, 3), (1, 3), (3,)), (2, 1, 3))


def brats_regions(label_values) -> Regions:
    """The BraTS regions for a data set's label values: 2023's when it uses 3 and not 4."""
    values = set(int(v) for v in label_values)
    return BRATS_2023 if 3 in values and 4 not in values else BRATS_2021
