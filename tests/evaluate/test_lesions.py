"""BraTS 2023 lesion-wise Dice and HD95 on hand-built label maps, written as NIfTI files and read back.

Cubes on a 1 mm grid (unless a test says otherwise); a 5 x 5 x 5 cube is 125 mm³, above the 50 mm³
under which the challenge leaves a reference lesion out; 374 mm is the lesion-wise HD95 penalty.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from brainseg.cli import main
from brainseg.evaluate.lesions import LesionRule, LesionScores, lesion_scores, reference_lesions
from brainseg.evaluate.metrics import dice, hd95
from brainseg.io.images import read_label
from brainseg.labels.regions import BRATS_2023
from tests.conftest import brainseg, read_metrics_csv, write_labels

SHAPE = (40, 40, 40)
FIRST = (slice(5, 10), slice(5, 10), slice(5, 10))  # 125 voxels
FAR = (slice(28, 33), slice(28, 33), slice(28, 33))  # 125 voxels, far from FIRST


def mask(*boxes: tuple[slice, ...]) -> np.ndarray:
    out = np.zeros(SHAPE, dtype=np.int16)
    for box in boxes:
        out[box] = 1
    return out


def scored(tmp_path: Path, pred: np.ndarray, ref: np.ndarray, spacing=(1.0, 1.0, 1.0), **rule) -> LesionScores:
    """Both masks written as NIfTI files, read back, and scored lesion-wise."""
    pred_img, pred_geom = read_label(write_labels(tmp_path / "pred.nii.gz", pred, spacing))
    ref_img, _ = read_label(write_labels(tmp_path / "ref.nii.gz", ref, spacing))
    return lesion_scores(pred_img > 0, ref_img > 0, pred_geom.spacing, LesionRule(**rule))


def test_one_lesion_found_exactly(tmp_path):
    assert scored(tmp_path, mask(FIRST), mask(FIRST)) == LesionScores(1.0, 0.0, 1, 1, 0, 0)


def test_a_missed_second_lesion_halves_the_score(tmp_path):
    s = scored(tmp_path, mask(FIRST), mask(FIRST, FAR))
    assert (s.dice, s.hd95_mm) == (0.5, 187.0)  # (1 + 0) / 2, (0 + 374) / 2
    assert (s.n_lesions, s.n_found, s.n_missed, s.n_false_positive) == (2, 1, 1, 0)
    assert dice(mask(FIRST), mask(FIRST, FAR)) == pytest.approx(2 / 3)  # voxel-wise: 250 / 375


def test_a_false_positive_blob_far_away_is_penalised(tmp_path):
    blob = (slice(30, 33), slice(30, 33), slice(30, 33))  # 27 voxels: small, yet a false positive
    s = scored(tmp_path, mask(FIRST, blob), mask(FIRST))
    assert (s.dice, s.hd95_mm) == (0.5, 187.0)  # (1 + 0) / (1 lesion + 1 false positive)
    assert (s.n_lesions, s.n_found, s.n_false_positive) == (1, 1, 1)
    assert dice(mask(FIRST, blob), mask(FIRST)) == pytest.approx(250 / 277)  # voxel-wise hardly moves
    two = scored(tmp_path, mask(FIRST, blob, (slice(30, 33), slice(5, 8), slice(5, 8))), mask(FIRST))
    assert (two.dice, two.hd95_mm, two.n_false_positive) == (pytest.approx(1 / 3), pytest.approx(748 / 3), 2)


def test_two_predicted_pieces_of_one_lesion_are_one_match(tmp_path):
    ref = mask((slice(5, 15), slice(5, 15), slice(5, 15)))  # 1000 voxels
    pred = ref.copy()
    pred[10] = 0  # cut in two: 500 + 400 voxels, two components
    s = scored(tmp_path, pred, ref)
    assert (s.n_lesions, s.n_found, s.n_false_positive) == (1, 1, 0)
    assert s.dice == pytest.approx(1800 / 1900)  # both pieces against the lesion together
    assert s.hd95_mm == hd95(pred > 0, ref > 0, (1, 1, 1)) == 3.0  # one lesion, all matched: the voxel-wise HD95


def test_the_dilation_reaches_three_voxels(tmp_path):
    """A piece 2 voxels from the lesion belongs to it (the lesion dilated 3 times reaches it); 3 voxels off it is a
    false positive. Reference pieces 2 voxels apart are one lesion."""
    near = (slice(12, 14), slice(6, 9), slice(6, 9))  # 18 voxels, x = 12 is 3 steps from x = 9
    s = scored(tmp_path, mask(FIRST, near), mask(FIRST))
    assert (s.dice, s.n_false_positive) == (pytest.approx(250 / 268), 0)
    off = (slice(13, 15), slice(6, 9), slice(6, 9))
    s = scored(tmp_path, mask(FIRST, off), mask(FIRST))
    assert (s.dice, s.hd95_mm, s.n_false_positive) == (0.5, 187.0, 1)
    assert scored(tmp_path, mask(FIRST, off), mask(FIRST), dilation=4).n_false_positive == 0
    # the reference: FIRST and a cube 2 voxels beyond it are one lesion, half of it found
    second = (slice(12, 17), slice(5, 10), slice(5, 10))
    assert reference_lesions(mask(FIRST, second) > 0, 3)[1] == 1 and reference_lesions(mask(FIRST, FAR) > 0, 3)[1] == 2
    s = scored(tmp_path, mask(FIRST), mask(FIRST, second))
    assert (s.dice, s.n_lesions, s.n_found) == (pytest.approx(250 / 375), 1, 1)


def test_small_reference_lesions_are_left_out_by_volume_in_mm3(tmp_path):
    small = (slice(30, 33), slice(30, 33), slice(30, 33))  # 27 voxels
    s = scored(tmp_path, mask(FIRST), mask(FIRST, small))
    assert (s.dice, s.hd95_mm, s.n_lesions, s.n_ignored) == (1.0, 0.0, 1, 1)
    s = scored(tmp_path, mask(FIRST, small), mask(FIRST, small))  # found: no false positive either
    assert (s.dice, s.n_false_positive, s.n_ignored) == (1.0, 0, 1)
    s = scored(tmp_path, mask(), mask(small))  # only a small lesion, nothing predicted: nothing to score
    assert (s.dice, s.hd95_mm, s.n_ignored) == (1.0, 0.0, 1)
    # at 2 mm, the 27 voxels are 216 mm³: scored, and missed
    s = scored(tmp_path, mask(FIRST), mask(FIRST, small), spacing=(2.0, 2.0, 2.0))
    assert (s.dice, s.hd95_mm, s.n_lesions, s.n_ignored) == (0.5, 187.0, 2, 0)
    assert scored(tmp_path, mask(FIRST), mask(FIRST, small), min_volume_mm3=0).n_missed == 1


def test_empty_masks(tmp_path):
    assert scored(tmp_path, mask(), mask()) == LesionScores(1.0, 0.0, 0, 0, 0, 0)
    assert scored(tmp_path, mask(FIRST), mask()) == LesionScores(0.0, 374.0, 0, 0, 1, 0)
    assert scored(tmp_path, mask(), mask(FIRST)) == LesionScores(0.0, 374.0, 1, 0, 0, 0)
    assert scored(tmp_path, mask(), mask(FIRST), penalty_mm=100.0).hd95_mm == 100.0
    with pytest.raises(ValueError, match="lesion rule"):
        LesionRule(dilation=-1)


def brats_case(second_tumour: bool, et_blob: bool) -> np.ndarray:
    """A BraTS 2023 label map: oedema (2) around enhancing tumour (3) around necrosis (1); optionally a second,
    oedema-only tumour far away and a far enhancing blob."""
    seg = np.zeros(SHAPE, dtype=np.int16)
    seg[4:16, 4:16, 4:16] = 2
    seg[7:13, 7:13, 7:13] = 3
    seg[9:11, 9:11, 9:11] = 1
    if second_tumour:
        seg[FAR] = 2
    if et_blob:
        seg[30:34, 5:9, 30:34] = 3
    return seg


def test_cli_evaluate_regions_brats_prints_and_writes_the_lesion_wise_scores(tmp_path, capsys, tiny_checkpoint_factory):
    # "missed": the second tumour (WT only) not predicted; "blob": a false enhancing blob (in WT, TC and ET)
    for cid, pred, ref in (
        ("missed", brats_case(False, False), brats_case(True, False)),
        ("blob", brats_case(False, True), brats_case(False, False)),
    ):
        write_labels(tmp_path / "pred" / f"{cid}.nii.gz", pred)
        write_labels(tmp_path / "ref" / f"{cid}.nii.gz", ref)
    out = tmp_path / "ev"
    res = brainseg(
        "evaluate",
        "--pred",
        str(tmp_path / "pred"),
        "--ref",
        str(tmp_path / "ref"),
        "--out",
        str(out),
        "--regions",
        "brats",
    )
    assert res.returncode == 0, res.stderr
    rows = {r["case"]: r for r in read_metrics_csv(out)}
    assert list(rows["missed"]) == ["case"] + [
        f"{r}_{m}" for r in ("WT", "TC", "ET") for m in ("dice", "hd95_mm", "lesion_dice", "lesion_hd95_mm")
    ]
    missed, blob = rows["missed"], rows["blob"]
    assert float(missed["WT_dice"]) == pytest.approx(2 * 1728 / (1728 + 1853))
    assert (float(missed["WT_lesion_dice"]), float(missed["WT_lesion_hd95_mm"])) == (0.5, 187.0)
    assert (float(missed["TC_lesion_dice"]), float(missed["ET_lesion_dice"])) == (1.0, 1.0)
    assert float(blob["ET_dice"]) == pytest.approx(2 * 208 / (208 + 272))
    for region in ("WT", "TC", "ET"):
        assert (float(blob[f"{region}_lesion_dice"]), float(blob[f"{region}_lesion_hd95_mm"])) == (0.5, 187.0)
    summary = json.loads((out / "summary.json").read_text())
    wt = summary["regions"]["WT"]
    assert wt["lesion_dice"]["mean"] == 0.5 and wt["lesion_hd95_mm"]["mean"] == 187.0
    assert wt["lesions"] == {"scored": 3, "found": 2, "missed": 1, "false_positive": 1, "too_small": 0}
    assert summary["regions"]["ET"]["lesion_dice"]["mean"] == 0.75
    assert summary["mean_over_regions"]["lesion_dice"] == pytest.approx((0.5 + 0.75 + 0.75) / 3)
    assert summary["lesion_rule"] == {"dilation": 3, "min_volume_mm3": 50.0, "penalty_mm": 374.0}
    assert "26-connected" in summary["conventions"]
    lines = res.stdout.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("region"))
    assert header.split("  ")[1:] == ["mean Dice", "mean HD95 (mm)", "lesion Dice", "lesion HD95 (mm)"]
    et = next(line for line in lines if line.split()[:1] == ["ET"]).split()
    assert et[3:] == ["0.7500", "93.50"]
    mean = next(line for line in lines if line.split()[:1] == ["mean"]).split()
    assert mean[3] == f"{(0.5 + 0.75 + 0.75) / 3:.4f}"
    # a region model's regions (--model) score the same, lesion-wise too (in-process: the start-up is the slow part)
    labels = {"0": "background", "1": "NCR", "2": "ED", "3": "ET"}
    model = tiny_checkpoint_factory(labels=labels, regions=BRATS_2023)
    args = ["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--out", str(tmp_path / "m")]
    assert main([*args, "--model", str(model)]) == 0
    assert "lesion Dice" in capsys.readouterr().out
    assert read_metrics_csv(tmp_path / "m") == read_metrics_csv(out)
