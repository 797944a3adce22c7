"""The decision chosen on pooled out-of-fold cases: offsets, postprocessing rules, the ET rule."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from brainseg.config import PostprocessConfig
from brainseg.labels.regions import brats_regions
from brainseg.model.checkpoint import load_card
from brainseg.train.decisions import PooledCase, case_mean_dice, choose_on_pool, coordinate_ascent, helps

SHAPE = (20, 20, 20)


def label_case(blob: bool) -> PooledCase:
    """Three classes: a cube of label 1 with a thin slab of label 2 on it that the probabilities
    under-call (0.45 against 0.55), and optionally a far, confident false-positive blob of label 1."""
    ref = np.zeros(SHAPE, np.int16)
    ref[4:14, 4:14, 4:14] = 1
    ref[4:14, 4:14, 14:16] = 2
    probs = np.zeros((3, *SHAPE), np.float32)
    probs[0] = 1.0
    probs[:, ref == 1] = np.array([0.0, 1.0, 0.0])[:, None]
    probs[:, ref == 2] = np.array([0.0, 0.55, 0.45])[:, None]
    if blob:
        probs[:, 15:19, 15:19, 0:4] = np.array([0.0, 1.0, 0.0])[:, None, None, None]
    return PooledCase(probs, np.ones(SHAPE, bool), "none", ref, (1.0, 1.0, 1.0))


def test_offsets_and_a_component_rule_are_kept_where_they_raise_the_pooled_dice(tiny_checkpoint: Path):
    card = load_card(tiny_checkpoint)
    cases = [label_case(blob=True), label_case(blob=False)]
    decision = choose_on_pool(cases, card, PostprocessConfig())
    assert decision.class_offsets[0] == 0.0 and decision.class_offsets[2] - decision.class_offsets[1] > 0.2
    assert decision.dice_before < 0.7 and decision.dice_after == 1.0  # the slab found, the blob removed
    kept = [s["step"] for s in decision.steps]
    assert kept[0] == "voxel decision" and len(kept) == 2  # one rule removes the blob; no other rule is kept
    assert decision.postprocess.largest_foreground or decision.postprocess.largest_component == [1]
    nothing = choose_on_pool([label_case(blob=False)], card, PostprocessConfig(class_offsets=[0.0, 0.0, 0.0]))
    assert nothing.class_offsets == (0.0, 0.0, 0.0) and [s["step"] for s in nothing.steps] == []


def test_a_region_model_chooses_its_thresholds_and_the_enhancing_tumour_volume(tiny_checkpoint_factory):
    regions = brats_regions([0, 1, 2, 4])
    card = load_card(tiny_checkpoint_factory(labels={"0": "bg", "1": "NCR", "2": "ED", "4": "ET"}, regions=regions))
    ref = np.zeros(SHAPE, np.int16)
    ref[5:15, 5:15, 5:15] = 2
    ref[8:12, 8:12, 8:12] = 1
    probs = np.zeros((3, *SHAPE), np.float32)
    for i, mask in enumerate(regions.masks(ref)):
        probs[i][mask] = 0.35  # every region under-called at 0.5
    probs[2, 1:2, 1:2, 1:2] = 0.9  # a 1-voxel ET speck where there is no tumour
    case = PooledCase(probs, np.ones(SHAPE, bool), "none", ref, (1.0, 1.0, 1.0))
    decision = choose_on_pool([case], card, PostprocessConfig())
    assert all(t <= 0.3 for t in decision.region_thresholds[:2])
    assert decision.dice_after > decision.dice_before + 0.5
    assert case_mean_dice(ref, ref, card) == 1.0


def _region_case(regions, blob_in_ref: bool) -> PooledCase:
    """A two-lesion tumour (each with a core) and, apart from it, an oedema-only blob the
    probabilities call with confidence: a false positive, or (``blob_in_ref``) a real core-less lesion."""
    ref = np.zeros(SHAPE, np.int16)
    ref[3:11, 3:11, 3:11] = 2
    ref[5:9, 5:9, 5:9] = 4
    ref[14:18, 2:6, 2:6] = 2
    ref[15:17, 3:5, 3:5] = 1
    pred = ref.copy()
    pred[14:18, 14:18, 14:18] = 2
    if blob_in_ref:
        ref = pred.copy()
    probs = np.stack([m.astype(np.float32) for m in regions.masks(pred)])
    return PooledCase(probs, np.ones(SHAPE, bool), "none", ref, (1.0, 1.0, 1.0))


def test_core_less_components_go_only_where_the_folds_say_so(tiny_checkpoint_factory):
    regions = brats_regions([0, 1, 2, 4])
    card = load_card(tiny_checkpoint_factory(labels={"0": "bg", "1": "NCR", "2": "ED", "4": "ET"}, regions=regions))
    thresholds = [0.5, 0.5, 0.5]
    false_blobs = [_region_case(regions, blob_in_ref=False) for _ in range(2)]
    on = choose_on_pool(false_blobs, card, PostprocessConfig(region_thresholds=thresholds, innermost_min_mm3=0))
    assert [s["step"] for s in on.steps] == ["drop_coreless"]  # largest_foreground would lose a lesion
    assert on.postprocess.drop_coreless and not on.postprocess.largest_foreground and on.dice_after == 1.0
    real = [_region_case(regions, blob_in_ref=True) for _ in range(2)]
    configured = PostprocessConfig(region_thresholds=thresholds, innermost_min_mm3=0, drop_coreless=True)
    off = choose_on_pool(real, card, configured)
    assert not off.postprocess.drop_coreless and off.dice_before < 1.0 and off.dice_after == 1.0


def test_coordinate_ascent_moves_only_for_a_real_gain():
    target = np.array([0.0, 0.4, -0.2])
    score = lambda settings: [float(-np.abs(s - target).sum()) for s in settings]  # noqa: E731
    best, before, after = coordinate_ascent(np.zeros(3), (-0.2, 0.0, 0.2, 0.4), 1, score)
    assert best.tolist() == [0.0, 0.4, -0.2] and before == pytest.approx(-0.6) and after == 0.0
    flat, b, a = coordinate_ascent(np.zeros(3), (-0.2, 0.0, 0.2), 1, lambda s: [1.0 + 1e-4 * x[1] for x in s])
    assert flat.tolist() == [0.0, 0.0, 0.0] and a == b  # a gain under DECISION_MIN_GAIN is noise


def test_a_rule_that_rescues_one_case_and_lowers_two_is_not_kept():
    assert not helps(np.array([1.0, 0.4, 0.4]), np.array([0.2, 0.5, 0.5]))  # the mean rises by 0.2: a coin flip
    assert helps(np.array([0.9, 0.9, 0.5]), np.array([0.8, 0.85, 0.5]))  # most cases gain, none loses
    assert not helps(np.array([0.8005, 0.8]), np.array([0.8, 0.8]))  # a gain under DECISION_MIN_GAIN


def test_a_rule_must_not_lower_any_folds_cases():
    before, tried = np.array([0.5, 0.5, 0.5, 0.5, 0.8]), np.array([0.9, 0.9, 0.9, 0.9, 0.2])
    assert helps(tried, before)  # pooled: four cases up, one down
    assert helps(tried, before, [0, 0, 1, 1, 1])  # the second fold's mean still rises
    assert not helps(tried, before, [0, 0, 0, 0, 1])  # the second fold's only case is wiped out


def test_the_pool_keeps_a_rule_only_where_no_fold_loses(tiny_checkpoint_factory):
    """largest_foreground rescues fold 0's cases (a false blob beside the tumour, larger than
    nothing) and wipes out fold 1's (its false blob is larger than its tumour): kept on fold 0
    alone, not when fold 1's cases are in the pool."""
    card = load_card(tiny_checkpoint_factory(labels={"0": "bg", "1": "a", "2": "b"}))

    def case(fold: int, blob_larger: bool) -> PooledCase:
        ref = np.zeros(SHAPE, np.int16)
        ref[2:8, 2:8, 2:8] = 1
        pred = ref.copy()
        side = 9 if blob_larger else 5
        pred[10 : 10 + side, 10 : 10 + side, 10 : 10 + side] = 1
        probs = np.stack([(pred == v).astype(np.float32) for v in (0, 1, 2)])
        return PooledCase(probs, np.ones(SHAPE, bool), "none", ref, (1.0, 1.0, 1.0), fold=fold)

    post = PostprocessConfig(class_offsets=[0.0, 0.0, 0.0])
    fold0 = [case(0, False) for _ in range(3)]
    assert choose_on_pool(fold0, card, post).postprocess.largest_foreground
    mixed = [*fold0, case(1, True)]
    assert choose_on_pool([replace(c, fold=0) for c in mixed], card, post).postprocess.largest_foreground
    assert not choose_on_pool(mixed, card, post).postprocess.largest_foreground
