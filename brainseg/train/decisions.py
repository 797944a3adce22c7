"""Choosing how probabilities become masks: the voxel decision (a log-probability offset per class,
or a threshold per region), the postprocessing rules and the enhancing-tumour rule.

Two callers, one search: a single training run chooses on its validation cases
(:class:`~brainseg.train.validation.Validation`), a cross-validation on all its out-of-fold cases
pooled (:func:`choose_on_pool`, nnU-Net's ``find_best_configuration`` step), which rests on many
cases instead of one or two. Each step is kept only where it raises the mean Dice by more than
:data:`DECISION_MIN_GAIN` (less is noise of a few voxels); a postprocessing rule must also raise
more cases than it lowers, and lower no fold's out-of-fold mean (:func:`helps`):

1. the voxel decision, by coordinate ascent (:func:`coordinate_ascent`: two sweeps over the
   classes or regions, each trying :data:`OFFSET_CANDIDATES` / :data:`THRESHOLD_CANDIDATES`);
2. the postprocessing rules, greedily from the configured ones: the largest component of the
   whole foreground, for a region model the removal of core-less components, then per label its largest component and a minimum component size
   (:data:`MIN_SIZE_CANDIDATES_MM3`);
3. for a region model, the enhancing-tumour rule's volume
   (:data:`~brainseg.postprocess.decision.INNERMOST_CANDIDATES_MM3`, the smallest on a tie).

A config that fixes a step (``postprocess.class_offsets``, ``region_thresholds``,
``innermost_min_mm3``) keeps it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from brainseg.config import InputMask, PostprocessConfig
from brainseg.evaluate.metrics import dice, region_dice
from brainseg.labels.regions import Regions
from brainseg.model.card import ModelCard
from brainseg.postprocess.components import postprocess_labels
from brainseg.postprocess.decision import (
    INNERMOST_CANDIDATES_MM3,
    innermost_rule,
    labels_within_input,
    regions_within_input,
)

#: Log-probability offsets tried for each foreground class of a label model.
OFFSET_CANDIDATES: tuple[float, ...] = (-0.6, -0.4, -0.2, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
#: Probability thresholds tried for each region of a region model.
THRESHOLD_CANDIDATES: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
#: Minimum component sizes (mm^3) tried per label on the pooled cross-validation cases.
MIN_SIZE_CANDIDATES_MM3: tuple[float, ...] = (20.0, 100.0, 500.0)
#: The mean Dice a change must add (less is noise of a few voxels).
DECISION_MIN_GAIN = 1e-3


def coordinate_ascent(
    start: np.ndarray, candidates: Sequence[float], first: int, mean_dice: Callable[[list[np.ndarray]], list[float]]
) -> tuple[np.ndarray, float, float]:
    """(best setting, mean Dice at ``start``, at the best): two sweeps over entries ``first..``,
    each entry tried at every candidate with the others fixed; ``mean_dice(settings)`` scores a list."""
    best = np.asarray(start, dtype=np.float64)
    before = current = (mean_dice([best]) or [0.0])[0]
    for _sweep in range(2):
        for k in range(first, len(best)):
            tried = [np.where(np.arange(len(best)) == k, c, best) for c in candidates]
            means = mean_dice(tried)
            if means and max(means) > current + DECISION_MIN_GAIN:
                best, current = tried[int(np.argmax(means))], max(means)
    return best, before, current


def helps(tried: np.ndarray, before: np.ndarray, folds: Sequence[int] | None = None) -> bool:
    """A postprocessing rule is kept when it raises the mean Dice by more than :data:`DECISION_MIN_GAIN`,
    raises more cases than it lowers, and (``folds``: each case's fold) lowers no fold's mean by
    more than that: a rule that deletes components can gain on average by rescuing a few cases
    while wiping out others (the largest component of a weak model's mask is as often a false
    blob as the tumour), and that coin flip does not carry over; one that helps across folds,
    each fold a model of its own, is what carries over to new cases."""
    delta = np.asarray(tried) - np.asarray(before)
    raised, lowered = int(np.count_nonzero(delta > 1e-9)), int(np.count_nonzero(delta < -1e-9))
    if not (float(delta.mean()) > DECISION_MIN_GAIN and raised > lowered):
        return False
    fold_of = np.zeros(len(delta), dtype=int) if folds is None else np.asarray(folds)
    return all(float(delta[fold_of == f].mean()) >= -DECISION_MIN_GAIN for f in np.unique(fold_of))


def smallest_best(candidates: Sequence[float], means: Sequence[float]) -> float:
    """The smallest candidate with the best mean (ties go to the smaller volume: less changed)."""
    best = max(means)
    return min(c for c, m in zip(candidates, means) if m == best)


def innermost_scores(pred, ref, spacing, regions: Regions, candidates: Sequence[float]) -> list[float]:
    """One case's mean region Dice with the enhancing-tumour rule at each candidate volume."""
    out = []
    for t in candidates:
        scores = region_dice(innermost_rule(pred, spacing, regions, t), ref, regions)
        out.append(sum(scores.values()) / len(scores))
    return out


@dataclass(frozen=True)
class PooledCase:
    """One out-of-fold case: its probabilities (C, X, Y, Z) and everything deciding them needs, in its own grid."""

    probs: np.ndarray
    nonzero: np.ndarray
    input_mask: InputMask
    ref: np.ndarray
    spacing: tuple[float, ...]
    #: The fold whose model predicted it (a postprocessing rule must not lower any fold: :func:`helps`).
    fold: int = 0


@dataclass(frozen=True)
class Decision:
    """What :func:`choose_on_pool` chose, and how the pooled mean Dice moved at each kept step."""

    class_offsets: tuple[float, ...]
    region_thresholds: tuple[float, ...]
    innermost_min_mm3: float
    postprocess: PostprocessConfig
    dice_before: float
    dice_after: float
    steps: list[dict] = field(default_factory=list)


def case_mean_dice(pred: np.ndarray, ref: np.ndarray, card: ModelCard) -> float:
    """The mean Dice over a case's foreground labels (regions), as the cross-validation scores it."""
    if card.regions is not None:
        return float(np.mean(list(region_dice(pred, ref, card.regions).values())))
    return float(np.mean([dice(pred == v, ref == v) for v in card.label_values if v != 0]))


def choose_on_pool(cases: Sequence[PooledCase], card: ModelCard, post: PostprocessConfig) -> Decision:
    """The decision with the best mean Dice over ``cases`` (see the module docstring); ``card``
    says what the outputs are, ``post`` is the postprocessing configured (its fixed fields kept)."""
    regions, values = card.regions, np.asarray(card.label_values)
    if regions is None:
        start = np.zeros(card.num_classes)
        decide = lambda c, x: values[labels_within_input(c.probs, c.nonzero, c.input_mask, np.exp(x))]  # noqa: E731
        fixed, candidates, first = post.class_offsets, OFFSET_CANDIDATES, 1
    else:
        start = np.full(len(regions), 0.5)
        decide = lambda c, x: regions_within_input(c.probs, c.nonzero, c.input_mask, regions, x)  # noqa: E731
        fixed, candidates, first = post.region_thresholds, THRESHOLD_CANDIDATES, 0
    inner = 0.0 if post.innermost_min_mm3 is None else float(post.innermost_min_mm3)
    core = () if regions is None else regions.class_order[1:]

    def finished(labels: np.ndarray, c: PooledCase, rules: PostprocessConfig, volume: float) -> np.ndarray:
        out = postprocess_labels(labels, c.spacing, rules, core)
        return innermost_rule(out, c.spacing, regions, volume) if regions is not None else out

    def mean(setting) -> float:
        return float(np.mean([case_mean_dice(decide(c, setting), c.ref, card) for c in cases]))

    steps = []
    setting = np.asarray(fixed, dtype=np.float64) if fixed else start
    if not fixed:
        setting, raw_before, raw_after = coordinate_ascent(start, candidates, first, lambda s: [mean(x) for x in s])
        if not np.array_equal(setting, start):
            steps.append({"step": "voxel decision", "setting": setting.tolist(), "dice": [raw_before, raw_after]})
    decided = [decide(c, setting) for c in cases]

    def per_case(rules: PostprocessConfig, volume: float) -> np.ndarray:
        return np.array([case_mean_dice(finished(d, c, rules, volume), c.ref, card) for d, c in zip(decided, cases)])

    def pooled(rules: PostprocessConfig, volume: float) -> float:
        return float(per_case(rules, volume).mean())

    baseline = [case_mean_dice(finished(decide(c, start), c, post, inner), c.ref, card) for c in cases]
    before = float(np.mean(baseline))
    rules, scores = post, per_case(post, inner)
    current = float(scores.mean())
    foreground = [int(v) for v in (regions.class_order if regions is not None else values) if v != 0]

    def toggle_foreground(r: PostprocessConfig) -> PostprocessConfig:
        return replace(r, largest_foreground=not r.largest_foreground)

    def toggle_coreless(r: PostprocessConfig) -> PostprocessConfig:
        return replace(r, drop_coreless=not r.drop_coreless)

    def toggle_largest(v: int) -> Callable[[PostprocessConfig], PostprocessConfig]:
        return lambda r: replace(r, largest_component=sorted(set(r.largest_component) ^ {v}))

    def min_size(v: int, mm3: float) -> Callable[[PostprocessConfig], PostprocessConfig]:
        return lambda r: replace(r, min_size_mm3={**r.min_size_mm3, v: mm3})

    changes: list[tuple[str, Callable[[PostprocessConfig], PostprocessConfig]]] = [
        ("largest_foreground", toggle_foreground)
    ]
    if regions is not None:
        changes.append(("drop_coreless", toggle_coreless))
    for v in foreground:
        changes.append((f"largest_component {v}", toggle_largest(v)))
        changes += [(f"min_size_mm3 {v}={m:g}", min_size(v, m)) for m in MIN_SIZE_CANDIDATES_MM3]
    for name, change in changes:
        candidate = change(rules)
        tried = per_case(candidate, inner)
        if helps(tried, scores, [c.fold for c in cases]):
            steps.append({"step": name, "dice": [current, float(tried.mean())]})
            rules, scores, current = candidate, tried, float(tried.mean())
    if regions is not None and post.innermost_min_mm3 is None:
        volumes = sorted(INNERMOST_CANDIDATES_MM3)
        means = [pooled(rules, t) for t in volumes]
        inner = smallest_best(volumes, means)
        if max(means) > current + DECISION_MIN_GAIN:
            steps.append({"step": f"innermost_min_mm3={inner:g}", "dice": [current, max(means)]})
            current = max(means)
        else:
            inner = 0.0
    return Decision(
        class_offsets=tuple(float(x) for x in setting) if regions is None else (),
        region_thresholds=tuple(float(x) for x in setting) if regions is not None else (),
        innermost_min_mm3=inner,
        postprocess=rules,
        dice_before=before,
        dice_after=current,
        steps=steps,
    )
