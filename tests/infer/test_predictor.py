"""The predictor on real files: the input-mask rule, region models (BraTS WT/TC/ET) and label models.

The region data is hand-made: 4 BraTS-2021-layout cases (t1, t1ce, t2, flair, seg; ~32^3 at
1.5 mm) with nested tumour blobs (oedema 2 around necrosis 1 around enhancing 4), written
as NIfTI with a tilted affine, trained on through the CLI in a subprocess.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainseg.config import PostprocessConfig, config_from_dict, load_config
from brainseg.errors import BrainsegError
from brainseg.infer.predictor import Predictor
from brainseg.infer.sliding_window import SlidingWindow
from brainseg.io.images import Geometry, write_image
from brainseg.labels.regions import BRATS_2021
from brainseg.model.card import CARD_FORMAT, REGION_CARD_FORMAT, ModelCard
from brainseg.model.checkpoint import load_checkpoint, load_model, save_checkpoint
from brainseg.postprocess.components import postprocess_labels
from brainseg.postprocess.decision import INNERMOST_CANDIDATES_MM3, innermost_rule, regions_within_input
from brainseg.preprocessing.foreground import subject_mask
from brainseg.train.decisions import THRESHOLD_CANDIDATES
from tests.conftest import (
    BRATS_VALUES,
    TINY_REGION_TRAIN,
    ct_volume,
    run_cli,
    save_ct,
    tumour_label,
)


def test_input_mask_rule_applies_only_to_zero_background_scans(subjects, tiny_checkpoint, tmp_path):
    """``input_mask: fill`` forces a foreground label wherever the scan is non-zero: on a noisy
    scan that would be everywhere, so there it is not applied (same masks as ``none``)."""
    scans = tmp_path / "scans"
    halved = {}  # every other voxel (twice the voxel size): the same rule, an eighth of the windows
    for name, (image, _, geometry, _) in zip(("stripped", "noisy"), subjects[:2]):
        affine = geometry.affine.copy()
        affine[:3, :3] *= 2.0
        halved[name] = np.ascontiguousarray(image[::2, ::2, ::2])
        write_image(scans / f"{name}_0000.nii.gz", halved[name], Geometry(halved[name].shape, affine))
    outs = {}
    for mode in ("fill", "none"):
        outs[mode] = tmp_path / mode
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "brainseg",
                "predict",
                "--model",
                str(tiny_checkpoint),
                "--input",
                str(scans),
                "--output",
                str(outs[mode]),
                "--device",
                "cpu",
                "--no-progress",
                "--set",
                f"postprocess.input_mask={mode}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
    import nibabel as nib

    masks = {
        m: {c: np.asarray(nib.load(str(outs[m] / f"{c}.nii.gz")).dataobj) for c in ("stripped", "noisy")} for m in outs
    }
    assert np.array_equal(masks["fill"]["noisy"], masks["none"]["noisy"])
    assert not np.array_equal(masks["fill"]["stripped"], masks["none"]["stripped"])
    assert np.all(masks["fill"]["stripped"][halved["stripped"] == 0] == 0)
    with open(outs["fill"] / "volumes.csv") as fh:
        rows = {r["case"]: r for r in csv.DictReader(fh)}
    assert rows["stripped"]["background"] == "zero" and rows["noisy"]["background"] == "noise"


def test_input_mask_rule_leaves_zero_tissue_alone(tiny_checkpoint, tmp_path):
    """Exact-0 voxels inside the subject are never forced to background: not on CT (no zero
    background, so no rule), not inside a skull-stripped scan (the rule's mask has its holes filled)."""
    model, card = load_model(tiny_checkpoint, "cpu")
    hu, _, block = ct_volume()
    stripped = np.where(subject_mask((hu > -500)[None].astype(np.float32)), hu + 1000.0, 0.0).astype(np.float32)
    stripped[block] = 0.0  # a hole of exact zeros inside the "brain"
    cfg = load_config()
    masks = {}
    for rule in ("none", "restrict", "fill"):
        predictor = Predictor(model, card, cfg.infer, PostprocessConfig(input_mask=rule), "cpu")
        for name, volume in (("ct", hu), ("stripped", stripped)):
            path = save_ct(tmp_path / f"{name}_0000.nii.gz", volume)
            case = predictor.prepare([path])
            assert case.record.zero_background == (name == "stripped")
            assert case.nonzero[block].all()  # the hole counts as subject
            masks[rule, name], _ = predictor.segment(case)
    assert np.array_equal(masks["restrict", "ct"], masks["none", "ct"])
    assert np.array_equal(masks["fill", "ct"], masks["none", "ct"])
    assert np.array_equal(masks["restrict", "stripped"][block], masks["none", "stripped"][block])
    assert np.all(masks["fill", "stripped"][block] != 0)  # fill: the hole gets a tissue class
    outside = ~subject_mask(stripped[None])
    assert np.all(masks["restrict", "stripped"][outside] == 0)


def test_windows_reach_past_the_box_only_where_the_background_is_zero(subjects, tiny_checkpoint):
    """``infer.margin`` pads a case's box with its normalised background: on a skull-stripped scan that
    is what lies there; on a noisy scan it would put a constant where the scan has noise, so there the
    windows stay on the box (docs/benchmarks.md: CSF Dice +0.014 on noisy demo scans, 4 models)."""
    model, card = load_model(tiny_checkpoint, "cpu")
    cfg = load_config()
    predictor = Predictor(model, card, cfg.infer, cfg.postprocess, "cpu")
    for (image, _, geometry, _), zero in zip(subjects[:2], (True, False)):
        case = predictor.prepare_arrays(image[None], geometry)
        assert case.record.zero_background == zero
        window, shape = predictor.window(case.record), case.image.shape[1:]
        flush = SlidingWindow(window.patch, window.num_outputs, cfg.infer.overlap, cfg.infer.sigma_scale, 0.0)
        reach = [math.ceil(cfg.infer.margin * p) for p in window.patch]
        if zero:
            assert window.margin == cfg.infer.margin > 0
            assert all(w - s >= 2 * r for w, s, r in zip(window.padded_shape(shape), shape, reach))
        else:
            assert window.margin == 0.0 and window.padded_shape(shape) == flush.padded_shape(shape)
            assert window.locations(shape) == flush.locations(shape)


REGIONS_SET = "labels.regions={WT: [1, 2, 4], TC: [1, 4], ET: [4]}"


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
        *TINY_REGION_TRAIN,
    )
    assert result.returncode == 0, result.stderr
    return run


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
    # the zero frame around the skull-stripped brain is background in the mask, and every region is 0 there
    channels = [np.asarray(nib.load(str(f)).dataobj) for f in sorted(case.glob("*.nii.gz"))]
    outside = ~subject_mask(np.stack(channels))
    assert outside.any() and not p[outside].any()
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


def test_probabilities_and_uncertainty_say_background_where_the_input_mask_rule_does(tiny_checkpoint_factory, tmp_path):
    """With ``postprocess.input_mask`` restrict, a skull-stripped scan's zero frame is background in the
    mask, and the probabilities and the uncertainty written beside it say so; inside the subject they are
    what the network gives, the same as with the rule off."""
    path = tiny_checkpoint_factory()
    scan = tmp_path / "scans" / "head_0000.nii.gz"
    scan.parent.mkdir()
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in (22, 20, 24)], indexing="ij"))
    head = sum(((g - s / 2) / (s / 2.5)) ** 2 for g, s in zip(grid, (22, 20, 24))) <= 1
    nib.save(nib.Nifti1Image((head * (100 + 40 * np.sin(grid[0] / 3.0))).astype(np.float32), np.eye(4)), str(scan))
    maps = {}
    for mode in ("none", "restrict"):
        out = tmp_path / mode
        args = ["--save-probabilities", "--save-uncertainty", "--set", f"postprocess.input_mask={mode}"]
        result = run_cli("predict", "--model", str(path), "--input", str(scan.parent), "--output", str(out), *args)
        assert result.returncode == 0, result.stderr
        maps[mode] = [
            np.asarray(nib.load(str(out / f"head{s}.nii.gz")).dataobj) for s in ("", "_probabilities", "_uncertainty")
        ]
    (mask, probs, unc), (mask_off, probs_off, unc_off) = maps["restrict"], maps["none"]
    outside = ~head
    assert (probs_off[outside].argmax(-1) > 0).any() and (unc_off[outside] > 0).any()  # the network's own say
    assert not mask[outside].any()
    assert np.all(probs[outside][:, 0] == 1) and not probs[outside][:, 1:].any() and not unc[outside].any()
    assert np.array_equal(probs[head], probs_off[head]) and np.array_equal(unc[head], unc_off[head])
    assert np.array_equal(mask[head], mask_off[head])


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
