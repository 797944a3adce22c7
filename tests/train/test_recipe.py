"""The training recipe: region targets and losses, deep supervision, the time budget, resolving regions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss, DiceLoss

from brainseg.config import LabelsConfig
from brainseg.errors import BrainsegError
from brainseg.labels.regions import BRATS_2021, BRATS_2023
from brainseg.model.unet import UNet3D
from brainseg.train.recipe import (
    COARSEST_WEIGHT,
    SegLoss,
    deep_supervision_weights,
    region_targets,
    resolve_regions,
    run_budget,
)
from tests.conftest import BRATS_VALUES, tumour_label


def test_every_deep_supervision_head_gets_a_gradient():
    """A zero weight left the coarsest head without a gradient, which DDP refuses at step 2."""
    torch.manual_seed(0)
    net = UNet3D(1, 3, levels=4, base_features=4, max_features=16, deep_supervision=True).train()
    outputs = net(torch.randn(2, 1, 16, 16, 16))
    assert len(outputs) == len(net.heads) == 3
    SegLoss()(outputs, torch.randint(0, 3, (2, 16, 16, 16))).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name
    assert deep_supervision_weights(3) == [1.0, 0.5, COARSEST_WEIGHT] and 0 < COARSEST_WEIGHT < 1e-3


def test_the_time_budget_is_the_runs_total():
    assert run_budget(None, None) is None
    assert run_budget(None, 60.0) == 60.0  # a fresh run, or a run that had none: the total
    assert run_budget(60.0, None) == 60.0  # --resume without --max-minutes continues it
    assert run_budget(60.0, 30.0) == 60.0  # a smaller value does not shorten it
    assert run_budget(60.0, 90.0) == 90.0  # a larger one extends it


LABELS = {0: "background", 1: "necrosis", 2: "oedema", 4: "enhancing"}


def test_region_targets_from_class_indices_match_the_label_maps_regions():
    label = np.array([[[0, 1, 2, 4], [4, 2, 1, 0]]], dtype=np.int16)  # label values
    classes = np.searchsorted(BRATS_VALUES, label)  # the cache's class indices
    table = BRATS_2021.class_table(BRATS_VALUES)
    assert table.tolist() == [[False, False, False], [True, True, False], [True, False, False], [True, True, True]]
    targets = region_targets(torch.from_numpy(classes)[None], torch.from_numpy(table))
    assert targets.shape == (1, 3, 1, 2, 4) and targets.dtype == torch.float32
    assert np.array_equal(targets[0].numpy().astype(bool), BRATS_2021.masks(label))
    with pytest.raises(BrainsegError, match=r"label value\(s\) \[4\]"):
        BRATS_2021.class_table([0, 1, 2, 3])  # a BraTS 2023 data set with the 2021 regions


def _batch():
    """A (2, 24^3) class-index batch with nested blobs, and the BraTS table."""
    label = tumour_label((24, 24, 24), (12, 11, 12), (8, 5, 2.5))
    label2 = tumour_label((24, 24, 24), (10, 13, 12), (6, 3, 1.5))
    classes = torch.from_numpy(np.searchsorted(BRATS_VALUES, np.stack([label, label2])).astype(np.int64))
    return classes, BRATS_2021.class_table(BRATS_VALUES)


def test_region_loss_near_zero_for_perfect_logits_and_holds_a_bce_term():
    classes, table = _batch()
    loss = SegLoss(table)
    target = region_targets(classes, torch.from_numpy(table))
    perfect = (target * 2 - 1) * 30.0  # sigmoid 1 inside each region, 0 outside
    assert float(loss(perfect, classes)) < 1e-4
    # zero logits: every probability 0.5, so the BCE term is exactly ln 2 on top of the Dice term
    zeros = torch.zeros_like(target)
    dice = DiceLoss(include_background=True, sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)(zeros, target)
    assert float(loss(zeros, classes)) == pytest.approx(float(dice) + np.log(2.0), abs=1e-5)
    # what MONAI's DiceCELoss(sigmoid=True) would have added instead: a softmax CE across regions
    monai = DiceCELoss(include_background=True, sigmoid=True, batch=True)(zeros, target)
    assert float(monai) != pytest.approx(float(loss(zeros, classes)), abs=1e-3)


def test_region_loss_with_deep_supervision_scores_every_output():
    classes, table = _batch()
    loss = SegLoss(table)
    target = region_targets(classes, torch.from_numpy(table))
    perfect = (target * 2 - 1) * 30.0
    mid = torch.nn.functional.interpolate(perfect, size=(12, 12, 12), mode="nearest")
    coarsest = torch.nn.functional.interpolate(perfect, size=(6, 6, 6), mode="nearest")
    assert float(loss([perfect, mid, coarsest], classes)) < 1e-3
    assert float(loss([perfect, -mid, coarsest], classes)) > 1.0  # the half-resolution output weighs 1/3


def test_label_loss_is_monai_dice_ce_as_before():
    """Label models keep their loss exactly: MONAI's DiceCELoss(softmax) on one-hot targets."""
    torch.manual_seed(0)
    classes, _ = _batch()
    logits = torch.randn(2, 4, 24, 24, 24)
    reference = DiceCELoss(
        include_background=False, to_onehot_y=True, softmax=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5
    )(logits, classes[:, None])
    assert torch.equal(SegLoss()(logits, classes), reference)


def test_regions_resolve_from_the_config_else_the_data_set():
    labels = LABELS
    assert resolve_regions(LabelsConfig(), None, labels) is None  # label data: per-label training
    assert resolve_regions(LabelsConfig(), BRATS_2021, labels) == BRATS_2021  # the data set's
    assert resolve_regions(LabelsConfig(regions={}), BRATS_2021, labels) is None  # {}: per label
    mine = resolve_regions(LabelsConfig(regions={"WT": [1, 2, 4], "ET": [4]}), BRATS_2021, labels)
    assert mine.names == ("WT", "ET") and mine.class_order == (1, 4)  # WT writes its smallest own label
    with pytest.raises(BrainsegError, match="not among the data set's labels"):
        resolve_regions(LabelsConfig(), BRATS_2023, labels)
    reordered = resolve_regions(LabelsConfig(regions_class_order=[1, 1, 4]), BRATS_2021, labels)
    assert reordered.names == BRATS_2021.names and reordered.class_order == (1, 1, 4)
    with pytest.raises(BrainsegError, match="regions_class_order is set but there are no regions"):
        resolve_regions(LabelsConfig(regions_class_order=[2, 1, 4]), None, labels)
