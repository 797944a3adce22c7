"""Dice, HD95 and folder evaluation, on real NIfTI files in tmp_path."""

from __future__ import annotations

import csv
import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from brainseg.errors import BrainsegError, InputError
from brainseg.evaluate.metrics import dice, hd95
from brainseg.evaluate.per_label import METRICS_NAME, SUMMARY_NAME, evaluate_case, evaluate_folders, parse_labels

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, labels: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> Path:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(labels, dtype=np.int16), affine), str(path))
    return path


def _read_metrics(out_dir: Path) -> list[dict]:
    with open(out_dir / METRICS_NAME, newline="") as fh:
        return list(csv.DictReader(fh))


def _offset_cubes() -> tuple[np.ndarray, np.ndarray]:
    """Two 4x4x4 cubes, the second shifted by 2 voxels along axis 0."""
    a = np.zeros((12, 10, 10), dtype=bool)
    a[2:6, 2:6, 2:6] = True
    b = np.zeros_like(a)
    b[4:8, 2:6, 2:6] = True
    return a, b


# ----------------------------------------------------------------------------- Dice


def test_dice_offset_cubes_by_counting():
    a, b = _offset_cubes()
    # |A| = |B| = 64, overlap = x in {4, 5} x 4 x 4 = 32 -> 2*32 / 128.
    assert dice(a, b) == pytest.approx(0.5)
    b_far = np.roll(b, 3, axis=0)  # now x in 7..10: no overlap
    assert dice(a, b_far) == 0.0
    assert dice(a, a) == 1.0


def test_dice_empty_conventions():
    empty = np.zeros((5, 5, 5), dtype=bool)
    full = empty.copy()
    full[1:3, 1:3, 1:3] = True
    assert dice(empty, empty) == 1.0
    assert dice(full, empty) == 0.0
    assert dice(empty, full) == 0.0


def test_dice_empty_convention_is_monai_ignore_empty_false():
    from monai.metrics import DiceMetric

    empty = torch.zeros((1, 2, 4, 4, 4))
    empty[:, 0] = 1  # all background, class 1 empty in both
    ours = dice(np.zeros((4, 4, 4), bool), np.zeros((4, 4, 4), bool))
    strict = DiceMetric(include_background=False, reduction="none", ignore_empty=False)
    default = DiceMetric(include_background=False, reduction="none")
    assert float(strict(empty, empty)[0, 0]) == ours
    assert math.isnan(float(default(empty, empty)[0, 0]))  # what our docstring warns about


# ----------------------------------------------------------------------------- HD95

# Hand computation for the offset cubes with spacing (s0, 1, 1): A's 56 surface voxels
# (x in 2..5 with y or z on a side face: 12 per x; plus the 2x2 cap centres at x=2 and
# x=5) have these distances to B's surface:
#   side voxels x=2: 2*s0 (12), x=3: s0 (12), x=4, 5: 0 (24);
#   cap x=2: 2*s0 (4), cap x=5: min(s0, 1) (4; B's side face is 1 mm away in y or z).
# 16 of 56 are at 2*s0, the largest value, so the 95th percentile (rank 52.25 of 0..55)
# is 2*s0. B -> A is the mirror image, hence the same.


@pytest.mark.parametrize("s0", [2.0, 0.5, 3.0])
def test_hd95_offset_cubes_anisotropic(s0):
    a, b = _offset_cubes()
    assert hd95(a, b, (s0, 1.0, 1.0)) == pytest.approx(2 * s0)
    assert hd95(b, a, (s0, 1.0, 1.0)) == pytest.approx(2 * s0)


def test_hd95_spacing_applies_to_the_right_axis():
    a, b = _offset_cubes()
    # The shift is along axis 0; stretching axis 2 must not change it.
    assert hd95(a, b, (1.0, 1.0, 3.0)) == pytest.approx(2.0)


def test_hd95_interpolates_the_percentile():
    pred = np.zeros((12, 12, 12), dtype=bool)
    pred[5, 5, 5] = True
    ref = pred.copy()
    ref[5, 5, 9] = True
    # pred -> ref: {0}. ref -> pred: {0, 4 voxels * 0.5 mm = 2 mm};
    # 95th percentile of [0, 2] with linear interpolation = 0.95 * 2.
    assert hd95(pred, ref, (1.0, 1.0, 0.5)) == pytest.approx(1.9)


def test_hd95_ignores_one_outlier_voxel():
    ref = np.zeros((24, 24, 24), dtype=bool)
    ref[2:6, 2:6, 2:6] = True
    pred = ref.copy()
    pred[20, 20, 20] = True  # ~26 mm away, 1 of 57 pred surface voxels
    # pred -> ref: 56 zeros then one large value; rank 0.95 * 56 = 53.2 is still 0.
    assert hd95(pred, ref, (1.0, 1.0, 1.0)) == 0.0
    # A crude max-distance Hausdorff would not have ignored it:
    pred[19:22, 19:22, 19:22] = True  # now 26 of 82 surface voxels are far
    assert hd95(pred, ref, (1.0, 1.0, 1.0)) > 20.0


def test_hd95_empty_conventions():
    empty = np.zeros((6, 6, 6), dtype=bool)
    full = empty.copy()
    full[2:4, 2:4, 2:4] = True
    assert hd95(empty, empty, (1.0, 1.0, 1.0)) == 0.0
    assert hd95(full, empty, (1.0, 1.0, 1.0)) == math.inf
    assert hd95(empty, full, (1.0, 1.0, 1.0)) == math.inf


def test_hd95_crop_matches_whole_volume_transform():
    """The bounding-box shortcut gives the same answer as whole-volume transforms."""
    rng = np.random.default_rng(3)
    shape = (40, 30, 20)
    spacing = (0.8, 1.3, 2.1)
    pred = ndimage.gaussian_filter(rng.random(shape), 2) > 0.52
    ref = ndimage.gaussian_filter(rng.random(shape), 2) > 0.52
    pred[0, :, :] = True  # touch the volume border too

    def surface(m):
        return m & ~ndimage.binary_erosion(m)

    sp, sr = surface(pred), surface(ref)
    d1 = ndimage.distance_transform_edt(~sr, sampling=spacing)[sp]
    d2 = ndimage.distance_transform_edt(~sp, sampling=spacing)[sr]
    expected = max(np.percentile(d1, 95), np.percentile(d2, 95))
    assert expected > 0
    assert hd95(pred, ref, spacing) == pytest.approx(expected, rel=1e-12)


# ----------------------------------------------------------------------------- vs MONAI


def _structured_labels(rng: np.random.Generator, shape, n_labels: int) -> np.ndarray:
    """Smooth random blobs cut into n_labels classes (0 = background)."""
    field = ndimage.gaussian_filter(rng.random(shape), 3)
    edges = np.quantile(field, np.linspace(0.3, 1.0, n_labels + 1)[:-1])
    return np.digitize(field, edges).astype(np.int16)


def _one_hot(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    onehot = np.eye(n_classes, dtype=np.float32)[labels]  # X, Y, Z, C
    return torch.from_numpy(np.moveaxis(onehot, -1, 0)[None].copy())


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecation notice
def test_evaluate_agrees_with_monai(tmp_path: Path):
    """Dice equals MONAI's DiceMetric to 1e-6; HD95 equals compute_hausdorff_distance
    to 1e-5 (relative and absolute).

    Both implement the same definition (6-connected erosion surface, nearest surface
    voxel in mm, torch/numpy linear-interpolation 95th percentile, max of the two
    directions), so they differ only by rounding: MONAI casts the distances to float32
    before its quantile (relative error ~1e-7), we keep float64, and metrics.csv holds
    10 significant digits.
    """
    from monai.metrics import DiceMetric, compute_hausdorff_distance

    rng = np.random.default_rng(42)
    shape, spacing, n_labels = (36, 32, 28), (1.0, 1.5, 2.0), 3
    cases = {}
    for i in range(3):
        ref = _structured_labels(rng, shape, n_labels)
        pred = ref.copy()
        # Perturb: a shifted copy in one region, one label eroded, a stray blob.
        pred[:18] = np.roll(ref, 2, axis=1)[:18]
        pred[ndimage.binary_erosion(pred == 2, iterations=1) ^ (pred == 2)] = 0
        pred[30:34, 2:6, 2:6] = 3
        cases[f"case{i}"] = (pred, ref)
        _write(tmp_path / "ref" / f"case{i}.nii.gz", ref, spacing)
        _write(tmp_path / "pred" / f"case{i}.nii.gz", pred, spacing)

    summary = evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", progress=False)
    rows = _read_metrics(tmp_path / "out")
    assert summary["n_cases"] == 3 and summary["failed"] == []
    assert len(rows) == 3 * n_labels

    dice_metric = DiceMetric(include_background=False, reduction="none")
    hd_seen = []
    for case, (pred, ref) in cases.items():
        y_pred, y = _one_hot(pred, n_labels + 1), _one_hot(ref, n_labels + 1)
        monai_dice = dice_metric(y_pred, y)[0].numpy()
        monai_hd = compute_hausdorff_distance(
            y_pred, y, include_background=False, percentile=95, spacing=list(spacing)
        )[0].numpy()
        mine = {int(r["label"]): r for r in rows if r["case"] == case}
        assert sorted(mine) == list(range(1, n_labels + 1))
        for label in range(1, n_labels + 1):
            assert float(mine[label]["dice"]) == pytest.approx(float(monai_dice[label - 1]), abs=1e-6)
            ours_hd = float(mine[label]["hd95_mm"])
            assert ours_hd == pytest.approx(float(monai_hd[label - 1]), rel=1e-5, abs=1e-5)
            hd_seen.append(ours_hd)
            # Volumes: voxel counts times 1.0 * 1.5 * 2.0 mm3.
            assert float(mine[label]["ref_volume_mm3"]) == pytest.approx(3.0 * np.sum(ref == label))
            assert float(mine[label]["pred_volume_mm3"]) == pytest.approx(3.0 * np.sum(pred == label))
    # The comparison is not vacuous: imperfect Dice and non-zero distances occur.
    assert max(hd_seen) > 1.0
    assert min(float(r["dice"]) for r in rows) < 0.95

    # summary.json holds the per-label statistics of those rows.
    saved = json.loads((tmp_path / "out" / SUMMARY_NAME).read_text())
    assert saved == summary
    for label in range(1, n_labels + 1):
        values = [float(r["dice"]) for r in rows if int(r["label"]) == label]
        stats = saved["labels"][str(label)]["dice"]
        assert stats["mean"] == pytest.approx(np.mean(values))
        assert stats["median"] == pytest.approx(np.median(values))
        assert stats["std"] == pytest.approx(np.std(values))
    assert saved["overall"]["dice"]["mean"] == pytest.approx(np.mean([float(r["dice"]) for r in rows]))
    assert "inf" in saved["conventions"]


# ----------------------------------------------------------------------------- cases and folders


def _cube_labels(shape=(16, 16, 16)) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.int16)
    labels[2:8, 2:8, 2:8] = 1
    labels[9:14, 9:14, 9:14] = 2
    return labels


def test_geometry_mismatch_names_the_prediction_and_both_grids(tmp_path: Path):
    ref = _write(tmp_path / "ref" / "s1.nii.gz", _cube_labels(), spacing=(1.0, 1.0, 1.0))
    pred = _write(tmp_path / "pred" / "s1.nii.gz", _cube_labels(), spacing=(1.0, 1.0, 1.2))
    with pytest.raises(InputError) as info:
        evaluate_case(pred, ref, [1, 2])
    message = str(info.value)
    assert info.value.path == str(pred)
    assert "1x1x1.2 mm" in message and "1x1x1 mm" in message
    assert str(ref) in message


def test_origin_mismatch_is_a_geometry_mismatch(tmp_path: Path):
    ref = _write(tmp_path / "ref" / "s1.nii.gz", _cube_labels())
    pred = _write(tmp_path / "pred" / "s1.nii.gz", _cube_labels(), origin=(0.0, 0.0, 5.0))
    with pytest.raises(InputError, match="origin"):
        evaluate_case(pred, ref, [1])


def test_default_labels_come_from_the_references(tmp_path: Path):
    ref_a = _cube_labels()
    ref_b = _cube_labels()
    ref_b[ref_b == 2] = 0  # label 2 absent from case b's reference ...
    pred_b = ref_b.copy()  # ... and from its prediction
    pred_a = ref_a.copy()
    pred_a[0:2, 0:2, 0:2] = 5  # label 5 exists only in a prediction: not scored
    for name, pred, ref in (("a", pred_a, ref_a), ("b", pred_b, ref_b)):
        _write(tmp_path / "ref" / f"{name}.nii.gz", ref)
        _write(tmp_path / "pred" / f"{name}.nii.gz", pred)
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", progress=False)
    rows = _read_metrics(tmp_path / "out")
    assert list(rows[0]) == ["case", "label", "dice", "hd95_mm", "pred_volume_mm3", "ref_volume_mm3"]
    assert sorted(summary["labels"]) == ["1", "2"]
    assert [(r["case"], r["label"]) for r in rows] == [("a", "1"), ("a", "2"), ("b", "1"), ("b", "2")]
    b2 = rows[3]
    assert (float(b2["dice"]), float(b2["hd95_mm"]), float(b2["ref_volume_mm3"])) == (1.0, 0.0, 0.0)


def test_explicit_labels_and_inf_in_outputs(tmp_path: Path):
    ref = _cube_labels()
    pred = ref.copy()
    pred[pred == 2] = 0  # label 2 missed entirely -> Dice 0, HD95 inf
    _write(tmp_path / "ref" / "c.nii.gz", ref)
    _write(tmp_path / "pred" / "c.nii.gz", pred)
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", labels=[2], progress=False)
    rows = _read_metrics(tmp_path / "out")
    assert [(r["label"], r["dice"], r["hd95_mm"]) for r in rows] == [("2", "0", "inf")]
    hd = summary["labels"]["2"]["hd95_mm"]
    assert hd["n_inf"] == 1 and hd["n"] == 0 and hd["mean"] is None
    text = (tmp_path / "out" / SUMMARY_NAME).read_text()
    assert "Infinity" not in text and "NaN" not in text  # strict JSON


def test_channel_suffix_pairing_and_unmatched_files(tmp_path: Path, caplog):
    labels = _cube_labels()
    _write(tmp_path / "ref" / "sub1.nii.gz", labels)
    _write(tmp_path / "pred" / "sub1_0000.nii.gz", labels)  # named after the image
    _write(tmp_path / "ref" / "sub2.nii.gz", labels)  # no prediction
    _write(tmp_path / "pred" / "stray.nii.gz", labels)  # no reference
    (tmp_path / "pred" / "notes.txt").write_text("not an image")
    probs = np.zeros((16, 16, 16, 3), dtype=np.float32)
    nib.save(nib.Nifti1Image(probs, np.eye(4)), str(tmp_path / "pred" / "sub1_0000_probabilities.nii.gz"))

    with caplog.at_level(logging.INFO):
        summary = evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", progress=False)
    rows = _read_metrics(tmp_path / "out")
    assert {r["case"] for r in rows} == {"sub1"}
    assert all(float(r["dice"]) == 1.0 for r in rows)
    assert sorted(f["case"] for f in summary["failed"]) == ["stray", "sub2"]
    errors = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    assert f"{tmp_path / 'ref' / 'sub2.nii.gz'}: no prediction" in errors
    assert f"{tmp_path / 'pred' / 'stray.nii.gz'}: no reference" in errors
    assert "probabilities" not in errors


def test_missing_folder_is_a_user_error(tmp_path: Path):
    _write(tmp_path / "ref" / "a.nii.gz", _cube_labels())
    with pytest.raises(BrainsegError, match="prediction folder not found"):
        evaluate_folders(tmp_path / "nope", tmp_path / "ref", tmp_path / "out", progress=False)


def test_parse_labels():
    assert parse_labels(None) is None
    assert parse_labels("1, 2,3,2") == [1, 2, 3]
    for bad in ("a", "1,,2", "0", "-1", "1.5", ""):
        with pytest.raises(BrainsegError):
            parse_labels(bad)


# ----------------------------------------------------------------------------- CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "brainseg", "evaluate", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_corrupt_prediction_among_good_ones(tmp_path: Path):
    good = _cube_labels()
    worse = good.copy()
    worse[2:4] = 0  # label 1 loses a third of its extent
    for name in ("case1", "case2", "case3", "case4"):
        _write(tmp_path / "ref" / f"{name}.nii.gz", good)
    _write(tmp_path / "pred" / "case1.nii.gz", good)
    (tmp_path / "pred" / "case2.nii.gz").write_bytes(b"\x1f\x8b this is not a NIfTI file")
    _write(tmp_path / "pred" / "case3.nii.gz", worse)
    # case4: no prediction at all

    result = _cli("--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--out", str(tmp_path / "out"))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    err_lines = result.stderr.splitlines()
    bad = [line for line in err_lines if "case2.nii.gz" in line]
    assert len(bad) == 1 and bad[0].startswith(f"brainseg: error: {tmp_path / 'pred' / 'case2.nii.gz'}: ")
    assert any("case4.nii.gz" in line and "no prediction" in line for line in err_lines)

    rows = _read_metrics(tmp_path / "out")
    assert sorted({r["case"] for r in rows}) == ["case1", "case3"]
    by_key = {(r["case"], r["label"]): float(r["dice"]) for r in rows}
    assert by_key[("case1", "1")] == 1.0
    # case3 label 1: |P| = 4*6*6 = 144, |R| = 216, overlap 144 -> 288 / 360.
    assert by_key[("case3", "1")] == pytest.approx(0.8)
    summary = json.loads((tmp_path / "out" / SUMMARY_NAME).read_text())
    assert summary["n_cases"] == 2
    assert sorted(f["case"] for f in summary["failed"]) == ["case2", "case4"]
    assert "mean Dice" in result.stdout and str(tmp_path / "out" / METRICS_NAME) in result.stdout


def test_cli_success_and_bad_labels(tmp_path: Path):
    labels = _cube_labels()
    _write(tmp_path / "ref" / "a.nii.gz", labels)
    _write(tmp_path / "pred" / "a.nii.gz", labels)
    ok = _cli(
        "--pred",
        str(tmp_path / "pred"),
        "--ref",
        str(tmp_path / "ref"),
        "--out",
        str(tmp_path / "out"),
        "--labels",
        "2",
    )
    assert ok.returncode == 0, ok.stderr
    assert [r["label"] for r in _read_metrics(tmp_path / "out")] == ["2"]

    bad = _cli(
        "--pred",
        str(tmp_path / "pred"),
        "--ref",
        str(tmp_path / "ref"),
        "--out",
        str(tmp_path / "out2"),
        "--labels",
        "1,x",
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("brainseg: error: --labels '1,x'")
    assert not (tmp_path / "out2").exists()
