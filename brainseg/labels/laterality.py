"""Left/right label pairs, from the label names or the config.

Atlases label left and right structures separately (FreeSurfer's ``Left-Hippocampus``,
``ctx-lh-insula``, ``Hippocampus_L``, "left grey matter"). Mirroring a scan along the
subject's left-right axis turns a left structure into a right one, so a flip must swap
each pair's labels; a lateralised label without a partner means no left-right flips at all.

A name is split at spaces, ``_``, ``-`` and ``.``; a part ``left``/``l``/``lh`` or
``right``/``r``/``rh`` (any case) marks the side, and two labels pair when their names
agree everywhere else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from brainseg.errors import BrainsegError

_LEFT = {"left", "l", "lh"}
_RIGHT = {"right", "r", "rh"}
_SPLIT = re.compile(r"[\s_\-.]+")


def _side_and_key(name: str) -> tuple[str | None, tuple[str, ...]]:
    parts = [p for p in _SPLIT.split(name.strip().lower()) if p]
    for i, part in enumerate(parts):
        if part in _LEFT or part in _RIGHT:
            side = "left" if part in _LEFT else "right"
            return side, tuple(parts[:i]) + ("<side>",) + tuple(parts[i + 1 :])
    return None, tuple(parts)


@dataclass(frozen=True)
class Laterality:
    #: (left value, right value) pairs.
    pairs: tuple[tuple[int, int], ...] = ()
    #: Lateralised labels without a partner (left-right flips are then not allowed).
    unpaired: tuple[int, ...] = ()

    @property
    def lateralised(self) -> bool:
        return bool(self.pairs or self.unpaired)

    @property
    def may_flip_left_right(self) -> bool:
        """A left-right flip keeps the labels right once the pairs are swapped."""
        return not self.unpaired

    def swap_table(self, max_label: int) -> np.ndarray:
        """A lookup table t with t[v] the label v becomes under a left-right flip."""
        table = np.arange(max([int(max_label)] + [max(p) for p in self.pairs]) + 1)
        for a, b in self.pairs:
            table[a], table[b] = b, a
        return table

    def channel_permutation(self, class_values: Sequence[int]) -> list[int]:
        """For output channels holding ``class_values`` (channel i = label class_values[i]): the
        channel each one takes after a left-right flip (an index list for ``tensor[:, perm]``)."""
        index = {int(v): i for i, v in enumerate(class_values)}
        perm = list(range(len(class_values)))
        for a, b in self.pairs:
            if a in index and b in index:
                perm[index[a]], perm[index[b]] = index[b], index[a]
        return perm

    def to_config(self) -> list[list[int]] | None:
        """What a run's config records as ``labels.mirror_pairs``: the pairs, or None (found from
        the label names again, which gives the same unpaired labels) when left-right flips are
        not allowed."""
        return [list(p) for p in self.pairs] if self.may_flip_left_right else None

    def describe(self, labels: Mapping[int, str]) -> str:
        """One line for the log: the pairs (``2 (left grey matter) <-> 3 (right grey matter)``) or the unpaired labels."""
        name = lambda v: f"{v} ({labels[v]})" if v in labels else str(v)
        if self.unpaired:
            return (
                "lateralised labels without a partner: "
                + ", ".join(name(v) for v in self.unpaired)
                + " -> no left-right flips"
            )
        if self.pairs:
            return "left/right label pairs: " + ", ".join(f"{name(a)} <-> {name(b)}" for a, b in self.pairs)
        return "no left/right labels: flips along every axis keep the labels"


def from_names(labels: Mapping[int, str]) -> Laterality:
    """The pairs the label names give (background and unnamed labels never pair)."""
    by_key: dict[tuple[str, ...], dict[str, list[int]]] = {}
    for value, name in sorted(labels.items()):
        side, key = _side_and_key(str(name))
        if side is not None and int(value) != 0:
            by_key.setdefault(key, {"left": [], "right": []})[side].append(int(value))
    pairs, unpaired = [], []
    for sides in by_key.values():
        left, right = sides["left"], sides["right"]
        if len(left) == 1 and len(right) == 1:
            pairs.append((left[0], right[0]))
        else:
            unpaired.extend(left + right)
    return Laterality(tuple(sorted(pairs)), tuple(sorted(unpaired)))


def from_config(pairs: Sequence[Sequence[int]], labels: Mapping[int, str]) -> Laterality:
    """Pairs given in the config (``labels.mirror_pairs``), checked against the label table."""
    out, seen = [], set()
    for pair in pairs:
        if len(pair) != 2 or pair[0] == pair[1]:
            raise BrainsegError(f"config labels.mirror_pairs: {list(pair)} is not a pair of two different labels")
        for v in pair:
            if int(v) not in labels or int(v) == 0:
                raise BrainsegError(f"config labels.mirror_pairs: {v} is not a foreground label of the data set")
            if int(v) in seen:
                raise BrainsegError(f"config labels.mirror_pairs: label {v} is in two pairs")
            seen.add(int(v))
        out.append((int(pair[0]), int(pair[1])))
    return Laterality(tuple(out), ())


def resolve(config_pairs: Sequence[Sequence[int]] | None, labels: Mapping[int, str]) -> Laterality:
    """The config's pairs when it gives them, else the names'."""
    return from_names(labels) if config_pairs is None else from_config(config_pairs, labels)


def from_run_config(config: Mapping, labels: Mapping[int, str]) -> Laterality:
    """The laterality a stored run config (a model card's ``config``) gives: its
    ``labels.mirror_pairs``, or the label names' where it has none (a card from before the
    field, or one whose unpaired labels forbid left-right flips)."""
    section = config.get("labels") if isinstance(config, Mapping) else None
    pairs = section.get("mirror_pairs") if isinstance(section, Mapping) else None
    try:
        return resolve(pairs, labels)
    except (TypeError, ValueError):
        raise BrainsegError(f"labels.mirror_pairs {pairs!r}: not a list of [left, right] label pairs") from None
