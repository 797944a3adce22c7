"""Region-based training (BraTS WT/TC/ET): targets, loss, oversampling, the model card,
prediction by class order, the enhancing-tumour rule, and label models left as they were.

The data is hand-made: 4 BraTS-2021-layout cases (t1, t1ce, t2, flair, seg; ~32^3 at
1.5 mm) with nested tumour blobs (oedema 2 around necrosis 1 around enhancing 4), written
as NIfTI with a tilted affine, trained on through the CLI in a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss, DiceLoss

from brainseg.config import LabelsConfig, config_from_dict, load_config
from brainseg.errors import BrainsegError
from brainseg.infer.predictor import Predictor
from brainseg.labels.regions import BRATS_2021, BRATS_2023, Regions
from brainseg.model.card import CARD_FORMAT, REGION_CARD_FORMAT, ModelCard
from brainseg.model.checkpoint import load_checkpoint, load_model, save_checkpoint
from brainseg.postprocess.components import postprocess_labels
from brainseg.postprocess.decision import INNERMOST_CANDIDATES_MM3, innermost_rule, regions_within_input
from brainseg.train.recipe import SegLoss, region_targets, resolve_regions
from brainseg.train.sampling.patches import foreground_center, region_locations
from brainseg.train.validation import THRESHOLD_CANDIDATES, innermost_scores, smallest_best

ROOT = Path(__file__).resolve().parent.parent
BRATS_VALUES = [0, 1, 2, 4]
LABELS = {0: "background", 1: "necrosis", 2: "oedema", 4: "enhancing"}
REGIONS_SET = "labels.regions={WT: [1, 2, 4], TC: [1, 4], ET: [4]}"
TINY = [
    "--set",
    "train.patch_size=[16,16,16]",
    "--set",
    "train.batch_size=2",
    "--set",
    "train.iters_per_epoch=2",
    "--set",
    "train.num_workers=0",
    "--set",
    "train.val_every=1",
    "--set",
    "train.threads=1",
    "--set",
    "model.levels=2",
    "--set",
    "model.base_features=4",
    "--set",
    "model.deep_supervision=true",
    "--set",
    "data.target_spacing=[3,3,3]",
    "--set",
    "data.val_fraction=0.25",
    "--set",
    "infer.batch_windows=2",
    "--set",
    "postprocess.input_mask=restrict",
]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "brainseg", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


# --------------------------------------------------------------------------- data


def tumour_label(shape, centre, radii) -> np.ndarray:
    """Nested spheres: oedema 2 (radius radii[0]) around necrosis 1 around enhancing tumour 4."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    r = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
    label = np.zeros(shape, dtype=np.uint8)
    for radius, value in zip(radii, (2, 1, 4)):
        label[r <= radius] = value
    return label


def write_brats_case(root: Path, case_id: str, rng: np.random.Generator, shape=(30, 32, 28)) -> Path:
    folder = root / case_id
    folder.mkdir(parents=True)
    affine = np.array([[1.5, 0.1, 0, -20], [0, 1.5, 0, -25], [0, 0, 1.5, -18], [0, 0, 0, 1]])
    centre = [s / 2 + rng.uniform(-3, 3) for s in shape]
    label = tumour_label(shape, centre, (8 + rng.uniform(0, 2), 5, 2.5))
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    brain = sum(((g - s / 2) / (s / 2.2)) ** 2 for g, s in zip(grid, shape)) <= 1.0
    label[~brain] = 0
    contrast = {
        "t1": (1, 0.8, 0.9, 0.7),
        "t1ce": (1, 0.9, 1.0, 2.5),
        "t2": (1, 1.6, 2.0, 1.3),
        "flair": (1, 1.2, 2.2, 1.1),
    }
    for name, (base, necrosis, oedema, enhancing) in contrast.items():
        image = np.choose(np.searchsorted(BRATS_VALUES, label), [base, necrosis, oedema, enhancing]).astype(np.float32)
        image = (image * 100 + rng.normal(0, 5, shape)) * brain
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), str(folder / f"{case_id}_{name}.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(folder / f"{case_id}_seg.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def brats_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brats") / "BraTS2021"
    rng = np.random.default_rng(3)
    for i in range(4):
        write_brats_case(root, f"BraTS2021_{i:05d}", rng)
    return root


@pytest.fixture(scope="module")
def region_run(brats_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("region_run") / "run"
    result = run_cli(
        "train",
        "--data",
        str(brats_data),
        "--out",
        str(run),
        "--epochs",
        "2",
        "--no-progress",
        "--set",
        REGIONS_SET,
        *TINY,
    )
    assert result.returncode == 0, result.stderr
    return run


# --------------------------------------------------------------------------- targets and loss


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


def test_foreground_centres_fall_in_a_present_region():
    locations = {1: np.array([[1, 1, 1]]), 2: np.array([[5, 5, 5], [6, 6, 6]]), 3: np.zeros((0, 3), dtype=np.int32)}
    table = BRATS_2021.class_table(BRATS_VALUES)  # class 3 = label 4 (ET), absent from this case
    regions = region_locations(locations, table)
    assert sorted(map(tuple, regions[0])) == [(1, 1, 1), (5, 5, 5), (6, 6, 6)]  # WT: classes 1, 2 (3 absent)
    assert sorted(map(tuple, regions[1])) == [(1, 1, 1)]  # TC: classes 1 and 3
    assert len(regions[2]) == 0  # ET absent: never chosen
    rng = np.random.default_rng(0)
    centres = {tuple(foreground_center(regions, rng) - 0.5) for _ in range(200)}
    assert centres == {(1, 1, 1), (5, 5, 5), (6, 6, 6)}


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


# --------------------------------------------------------------------------- the ET rule


def test_regions_become_labels_by_class_order_within_the_input():
    label = tumour_label((20, 20, 20), (10, 10, 10), (7, 4, 2))
    probs = BRATS_2021.masks(label).astype(np.float32) * 0.9 + 0.05
    nonzero = np.ones(label.shape, dtype=bool)
    nonzero[:, :, :10] = False
    out = regions_within_input(probs, nonzero, "restrict", BRATS_2021, (0.5, 0.5, 0.5))
    expected = label.copy()
    expected[~nonzero] = 0
    assert np.array_equal(out, expected) and set(np.unique(out)) <= set(BRATS_VALUES)
    high = regions_within_input(probs, nonzero, "none", BRATS_2021, (0.5, 0.5, 0.96))  # ET never reaches 0.96
    assert 4 not in high and np.array_equal(high == 1, np.isin(label, (1, 4)))  # TC without ET: necrosis


def test_small_enhancing_tumour_becomes_core_large_stays_and_zero_is_off():
    spacing = (1.0, 1.0, 2.0)  # 2 mm^3 voxels
    small = tumour_label((24, 24, 24), (12, 12, 12), (8, 5, 1.5))  # ET: 19 voxels = 38 mm^3
    n_et = int((small == 4).sum())
    assert 0 < n_et * 2 < 100
    out = innermost_rule(small, spacing, BRATS_2021, 100.0)
    assert 4 not in out and np.array_equal(out == 1, np.isin(small, (1, 4)))  # ET -> TC's label (necrosis)
    assert np.array_equal(out == 2, small == 2)
    assert np.array_equal(innermost_rule(small, spacing, BRATS_2021, 0.0), small)  # 0 = off
    large = tumour_label((24, 24, 24), (12, 12, 12), (9, 7, 4))
    assert int((large == 4).sum()) * 2 >= 100
    assert np.array_equal(innermost_rule(large, spacing, BRATS_2021, 100.0), large)
    assert np.array_equal(innermost_rule(small, spacing, BRATS_2023, 100.0), small)  # 2023: ET is 3, absent here


def test_the_et_volume_chosen_on_validation_is_the_smallest_best():
    spacing = (1.0, 1.0, 1.0)
    # case A: no enhancing tumour in the reference, a 19-voxel (19 mm^3) false-positive ET speck predicted
    ref_a = tumour_label((24, 24, 24), (12, 12, 12), (8, 5, -1))
    pred_a = tumour_label((24, 24, 24), (12, 12, 12), (8, 5, 1.5))
    # case B: a real 257-voxel ET, predicted exactly
    ref_b = pred_b = tumour_label((24, 24, 24), (12, 12, 12), (9, 7, 4))
    candidates = (0.0, 10.0, 50.0, 100.0, 500.0)
    a = innermost_scores(pred_a, ref_a, spacing, BRATS_2021, candidates)
    b = innermost_scores(pred_b, ref_b, spacing, BRATS_2021, candidates)
    assert a[0] < 1.0 and a[2:] == [1.0, 1.0, 1.0]  # the speck gone from 50 mm^3 on: a perfect case
    assert b[:4] == [1.0] * 4 and b[4] < 1.0  # 500 mm^3 removes the real ET
    means = [(x + y) / 2 for x, y in zip(a, b)]
    assert smallest_best(candidates, means) == 50.0  # 50 and 100 tie: the smaller
    assert smallest_best(candidates, [0.5] * 5) == 0.0  # nothing helps: off


def test_innermost_volume_must_not_be_negative():
    with pytest.raises(BrainsegError, match="innermost_min_mm3"):
        load_config(overrides=["postprocess.innermost_min_mm3=-5"])


# --------------------------------------------------------------------------- training and prediction


@pytest.mark.slow
def test_cli_training_on_brats_layout_writes_a_region_card(region_run: Path):
    card = ModelCard.from_dict(load_checkpoint(region_run / "checkpoint_final.pt")["card"])
    assert card.regions == BRATS_2021 and card.num_classes == 3 and card.format == REGION_CARD_FORMAT == 3
    assert card.labels == {0: "background", 1: "label_1", 2: "label_2", 4: "label_4"}
    assert len(card.thresholds) == 3 and set(card.thresholds) <= set(THRESHOLD_CANDIDATES)  # chosen on validation
    assert card.innermost_min_mm3 in INNERMOST_CANDIDATES_MM3
    header = (region_run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val_dice_WT", "val_dice_TC", "val_dice_ET", "val_dice_mean"} <= set(header)
    # a stored region card reads back the same
    assert ModelCard.from_dict(card.to_dict()) == card


@pytest.mark.slow
def test_predict_writes_brats_labels_in_the_scans_geometry_and_region_probabilities(region_run, brats_data, tmp_path):
    case = brats_data / "BraTS2021_00001"
    out = tmp_path / "pred"
    result = run_cli(
        "predict",
        "--model",
        str(region_run),
        "--input",
        str(case),
        "--output",
        str(out),
        "--save-probabilities",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    scan = nib.load(str(case / "BraTS2021_00001_t1.nii.gz"))
    mask = nib.load(str(out / "BraTS2021_00001.nii.gz"))
    assert mask.shape == scan.shape and np.allclose(mask.affine, scan.affine)
    values = set(np.unique(np.asarray(mask.dataobj)).tolist())
    assert values <= set(BRATS_VALUES)
    probs = nib.load(str(out / "BraTS2021_00001_probabilities.nii.gz"))
    assert probs.shape == scan.shape + (3,) and np.allclose(probs.affine, scan.affine)
    p = np.asarray(probs.dataobj)
    assert p.min() >= 0 and p.max() <= 1 and not np.allclose(p.sum(-1), 1.0)  # sigmoids, not a softmax
    sidecar = json.loads((out / "BraTS2021_00001_probabilities.json").read_text())
    assert sidecar == {"kind": "regions", "channels": ["WT", "TC", "ET"]}
    # the mask is the probabilities thresholded at the card's thresholds and written by the class order (then the ET rule)
    card = ModelCard.from_dict(load_checkpoint(region_run / "checkpoint_final.pt")["card"])
    brain = np.asarray(scan.dataobj) != 0
    # ... then cleaned by the run's postprocess config (the plan's, e.g. the largest foreground component)
    clean = config_from_dict(card.config).postprocess
    zooms = scan.header.get_zooms()[:3]
    labels = regions_within_input(np.moveaxis(p, -1, 0), brain, "restrict", BRATS_2021, card.thresholds)
    expected = innermost_rule(postprocess_labels(labels, zooms, clean), zooms, BRATS_2021, card.innermost_min_mm3)
    assert np.mean(expected == np.asarray(mask.dataobj)) > 0.999


@pytest.mark.slow
def test_the_et_rule_volume_comes_from_the_card_unless_configured(region_run):
    model, card = load_model(region_run, "cpu")
    stored = ModelCard.from_dict({**card.to_dict(), "innermost_min_mm3": 200.0})
    cfg = load_config(overrides=[])
    assert Predictor(model, stored, cfg.infer, cfg.postprocess).innermost_min_mm3 == 200.0
    off = load_config(overrides=["postprocess.innermost_min_mm3=0"])
    assert Predictor(model, stored, off.infer, off.postprocess).innermost_min_mm3 == 0.0


@pytest.mark.slow
def test_region_thresholds_come_from_the_card_unless_configured(region_run):
    model, card = load_model(region_run, "cpu")
    stored = ModelCard.from_dict({**card.to_dict(), "region_thresholds": [0.4, 0.3, 0.6]})
    cfg = load_config(overrides=[])
    assert Predictor(model, stored, cfg.infer, cfg.postprocess).thresholds == (0.4, 0.3, 0.6)
    fixed = load_config(overrides=["postprocess.region_thresholds=[0.5, 0.5, 0.5]"])
    assert Predictor(model, stored, fixed.infer, fixed.postprocess).thresholds == (0.5, 0.5, 0.5)
    with pytest.raises(BrainsegError, match="region_thresholds"):
        bad = load_config(overrides=["postprocess.region_thresholds=[0.5, 0.5]"])
        Predictor(model, stored, bad.infer, bad.postprocess)


def test_region_card_checks_its_outputs(tiny_checkpoint_factory):
    card = load_checkpoint(tiny_checkpoint_factory())["card"]  # 3 outputs, labels 0, 1, 2
    wrong = {**card, "regions": Regions(("A", "B"), ((1, 2), (2,)), (1, 2)).to_dict()}
    with pytest.raises(BrainsegError, match="2 region"):
        ModelCard.from_dict(wrong)
    right = {**card, "regions": Regions(("A", "B", "C"), ((1, 2), (2,), (1,)), (1, 2, 1)).to_dict()}
    assert ModelCard.from_dict(right).regions.names == ("A", "B", "C")
    with pytest.raises(BrainsegError, match="region_thresholds"):
        ModelCard.from_dict({**right, "region_thresholds": [0.5, 1.5, 0.5]})
    with pytest.raises(BrainsegError, match="format 3 .* no 'regions'"):
        ModelCard.from_dict({**card, "format": 3})
    assert ModelCard.from_dict(right).to_dict()["format"] == 3


def test_old_label_card_without_region_keys_still_predicts_the_same(tiny_checkpoint_factory, tmp_path):
    path = tiny_checkpoint_factory()
    state = load_checkpoint(path)
    old = {k: v for k, v in state["card"].items() if k not in ("regions", "region_thresholds", "innermost_min_mm3")}
    assert ModelCard.from_dict(old).regions is None and state["card"]["format"] == CARD_FORMAT == 2
    old_path = save_checkpoint(tmp_path / "old" / "checkpoint_final.pt", {**state, "card": old})
    scan = tmp_path / "scans" / "head_0000.nii.gz"
    scan.parent.mkdir()
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in (22, 20, 24)], indexing="ij"))
    head = sum(((g - s / 2) / (s / 2.5)) ** 2 for g, s in zip(grid, (22, 20, 24))) <= 1
    data = head * (100 + 40 * np.sin(grid[0] / 3.0))
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([1.4, 1.4, 1.6, 1])), str(scan))
    masks = {}
    for name, model in (("old", old_path), ("new", path)):
        result = run_cli(
            "predict",
            "--model",
            str(model),
            "--input",
            str(scan.parent),
            "--output",
            str(tmp_path / name),
            "--save-probabilities",
            "--no-progress",
        )
        assert result.returncode == 0, result.stderr
        masks[name] = np.asarray(nib.load(str(tmp_path / name / "head.nii.gz")).dataobj)
        probs = np.asarray(nib.load(str(tmp_path / name / "head_probabilities.nii.gz")).dataobj)
        assert np.allclose(probs.sum(-1), 1.0, atol=1e-4)  # softmax over the classes, as before
        assert np.mean(masks[name] == np.argmax(probs, -1)) > 0.999  # the argmax, as before (input_mask none)
    assert np.array_equal(masks["old"], masks["new"]) and len(np.unique(masks["old"])) > 1
    assert json.loads((tmp_path / "old" / "head_probabilities.json").read_text())["kind"] == "classes"


# --------------------------------------------------------------------------- the tumour demo


@pytest.mark.slow
def test_tumour_demo_end_to_end(tmp_path):
    tiny = [a for a in TINY if a != "--set" and not a.startswith(("data.val_fraction", "postprocess"))]
    sets = [x for item in tiny for x in ("--set", item)]
    result = run_cli(
        "demo",
        "--kind",
        "tumour",
        "--n",
        "4",
        "--out",
        str(tmp_path / "demo"),
        "--max-minutes",
        "0.2",
        "--set",
        "train.epochs=2",
        *sets,
    )
    assert result.returncode == 0, result.stderr
    assert "Dice per tumour region" in result.stdout
    table = result.stdout.split("Dice per tumour region", 1)[1].splitlines()
    for region in ("whole tumor", "tumor core", "enhancing tumor"):  # the names the msd dataset.json gives
        assert any(line.strip().startswith(region) for line in table), result.stdout
