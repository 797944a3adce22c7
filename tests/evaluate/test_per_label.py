"""Folder evaluation per label on real NIfTI files in tmp_path: pairing, geometry checks, labels, agreement with MONAI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from brainseg.errors import BrainsegError, InputError
from brainseg.evaluate.per_label import SUMMARY_NAME, evaluate_case, evaluate_folders, parse_labels
from tests.conftest import cube_labels, read_metrics_csv, write_labels


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
        write_labels(tmp_path / "ref" / f"case{i}.nii.gz", ref, spacing)
        write_labels(tmp_path / "pred" / f"case{i}.nii.gz", pred, spacing)

    summary = evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", progress=False)
    rows = read_metrics_csv(tmp_path / "out")
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


def test_geometry_mismatch_names_the_prediction_and_both_grids(tmp_path: Path):
    ref = write_labels(tmp_path / "ref" / "s1.nii.gz", cube_labels(), spacing=(1.0, 1.0, 1.0))
    pred = write_labels(tmp_path / "pred" / "s1.nii.gz", cube_labels(), spacing=(1.0, 1.0, 1.2))
    with pytest.raises(InputError) as info:
        evaluate_case(pred, ref, [1, 2])
    message = str(info.value)
    assert info.value.path == str(pred)
    assert "1x1x1.2 mm" in message and "1x1x1 mm" in message
    assert str(ref) in message


def test_origin_mismatch_is_a_geometry_mismatch(tmp_path: Path):
    ref = write_labels(tmp_path / "ref" / "s1.nii.gz", cube_labels())
    pred = write_labels(tmp_path / "pred" / "s1.nii.gz", cube_labels(), origin=(0.0, 0.0, 5.0))
    with pytest.raises(InputError, match="origin"):
        evaluate_case(pred, ref, [1])


def test_default_labels_come_from_the_references(tmp_path: Path):
    ref_a = cube_labels()
    ref_b = cube_labels()
    ref_b[ref_b == 2] = 0  # label 2 absent from case b's reference ...
    pred_b = ref_b.copy()  # ... and from its prediction
    pred_a = ref_a.copy()
    pred_a[0:2, 0:2, 0:2] = 5  # label 5 exists only in a prediction: not scored
    for name, pred, ref in (("a", pred_a, ref_a), ("b", pred_b, ref_b)):
        write_labels(tmp_path / "ref" / f"{name}.nii.gz", ref)
        write_labels(tmp_path / "pred" / f"{name}.nii.gz", pred)
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", progress=False)
    rows = read_metrics_csv(tmp_path / "out")
    assert list(rows[0]) == ["case", "label", "dice", "hd95_mm", "pred_volume_mm3", "ref_volume_mm3"]
    assert sorted(summary["labels"]) == ["1", "2"]
    assert [(r["case"], r["label"]) for r in rows] == [("a", "1"), ("a", "2"), ("b", "1"), ("b", "2")]
    b2 = rows[3]
    assert (float(b2["dice"]), float(b2["hd95_mm"]), float(b2["ref_volume_mm3"])) == (1.0, 0.0, 0.0)


def test_explicit_labels_and_inf_in_outputs(tmp_path: Path):
    ref = cube_labels()
    pred = ref.copy()
    pred[pred == 2] = 0  # label 2 missed entirely -> Dice 0, HD95 inf
    write_labels(tmp_path / "ref" / "c.nii.gz", ref)
    write_labels(tmp_path / "pred" / "c.nii.gz", pred)
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", labels=[2], progress=False)
    rows = read_metrics_csv(tmp_path / "out")
    assert [(r["label"], r["dice"], r["hd95_mm"]) for r in rows] == [("2", "0", "inf")]
    hd = summary["labels"]["2"]["hd95_mm"]
    assert hd["n_inf"] == 1 and hd["n"] == 0 and hd["mean"] is None
    text = (tmp_path / "out" / SUMMARY_NAME).read_text()
    assert "Infinity" not in text and "NaN" not in text  # strict JSON


def test_channel_suffix_pairing_and_unmatched_files(tmp_path: Path, caplog):
    labels = cube_labels()
    write_labels(tmp_path / "ref" / "sub1.nii.gz", labels)
    write_labels(tmp_path / "pred" / "sub1_0000.nii.gz", labels)  # named after the image
    write_labels(tmp_path / "ref" / "sub2.nii.gz", labels)  # no prediction
    write_labels(tmp_path / "pred" / "stray.nii.gz", labels)  # no reference
    (tmp_path / "pred" / "notes.txt").write_text("not an image")
    probs = np.zeros((16, 16, 16, 3), dtype=np.float32)
    nib.save(nib.Nifti1Image(probs, np.eye(4)), str(tmp_path / "pred" / "sub1_0000_probabilities.nii.gz"))
    nib.save(nib.Nifti1Image(probs[..., 0], np.eye(4)), str(tmp_path / "pred" / "sub1_0000_uncertainty.nii.gz"))

    with caplog.at_level(logging.INFO):
        summary = evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", progress=False)
    rows = read_metrics_csv(tmp_path / "out")
    assert {r["case"] for r in rows} == {"sub1"}
    assert all(float(r["dice"]) == 1.0 for r in rows)
    assert sorted(f["case"] for f in summary["failed"]) == ["stray", "sub2"]
    errors = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    assert f"{tmp_path / 'ref' / 'sub2.nii.gz'}: no prediction" in errors
    assert f"{tmp_path / 'pred' / 'stray.nii.gz'}: no reference" in errors
    assert "probabilities" not in errors and "uncertainty" not in errors


def test_missing_folder_is_a_user_error(tmp_path: Path):
    write_labels(tmp_path / "ref" / "a.nii.gz", cube_labels())
    with pytest.raises(BrainsegError, match="prediction folder not found"):
        evaluate_folders(tmp_path / "nope", tmp_path / "ref", tmp_path / "out", progress=False)


def test_parse_labels():
    assert parse_labels(None) is None
    assert parse_labels("1, 2,3,2") == [1, 2, 3]
    for bad in ("a", "1,,2", "0", "-1", "1.5", ""):
        with pytest.raises(BrainsegError):
            parse_labels(bad)
