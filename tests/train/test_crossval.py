"""Cross-validation: deterministic splits that cover every case once, reused and checked on every
rerun; a real 2-fold run through the command line whose out-of-fold masks lie in each case's own
grid and whose summary is what ``brainseg evaluate`` reports on the same masks."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from brainseg.cli import main
from brainseg.data.layouts import discover_dataset
from brainseg.errors import BrainsegError
from brainseg.io.images import read_label
from brainseg.io.naming import CV_DECISION, CV_QUALITY, SPLITS_FILE
from brainseg.model.checkpoint import load_card
from brainseg.train.crossval import (
    fold_record_path,
    fold_splits,
    format_cv_table,
    make_splits,
    write_cv_summary,
)
from brainseg.train.cv_calibration import CALIBRATION_COPIES, refit_quality
from brainseg.train.recipe import split_cases
from brainseg.train.state import check_run_dir
from tests.cli.conftest import AFFINE, TINY_TRAIN, cli, in_process, labels_of, make_train_set, phantom, save
from tests.conftest import error_lines

IDS = [f"case{i:02d}" for i in range(7)]


def held_out(splits) -> list[str]:
    return [i for f in splits for i in f["val"]]


# ----------------------------------------------------------------------------- splits


def test_splits_are_deterministic_disjoint_and_hold_every_case_out_once():
    splits = make_splits(list(reversed(IDS)), 3, seed=12345)
    assert splits == make_splits(IDS, 3, seed=12345)  # the ids' order does not matter: they are sorted
    assert sorted(held_out(splits)) == IDS and len(held_out(splits)) == len(IDS)
    assert [len(f["val"]) for f in splits] == [3, 2, 2]  # KFold's near-equal parts
    for f in splits:
        assert f["train"] == sorted(set(IDS) - set(f["val"])) and f["val"] == sorted(f["val"])
    assert make_splits(IDS, 3, seed=1) != splits  # the seed shuffles
    with pytest.raises(BrainsegError, match=r"--folds 8: .*at most one per case \(7 case\(s\)\)"):
        make_splits(IDS, 8, seed=0)


def test_splits_file_is_written_once_reused_and_checked_against_the_data_set(tmp_path: Path):
    run = tmp_path / "run"
    first = fold_splits(run, IDS, 3, seed=12345)
    path = run / SPLITS_FILE
    assert json.loads(path.read_text()) == first
    text = path.read_text()
    assert fold_splits(run, IDS, 3, seed=999) == first  # reused, whatever the seed now
    assert fold_splits(run, IDS, None, seed=999) == first  # --fold k alone reads the folds back
    assert path.read_text() == text
    with pytest.raises(BrainsegError) as err:
        fold_splits(run, IDS[:-1] + ["case99"], 3, seed=12345)
    message = str(err.value)
    assert message.startswith(f"{path}: the data set's cases changed") and "\n" not in message
    assert "new case(s): case99" in message and "case(s) gone: case06" in message
    with pytest.raises(BrainsegError, match=r"holds 3 folds, not 4 \(--folds\)"):
        fold_splits(run, IDS, 4, seed=12345)
    with pytest.raises(BrainsegError, match=r"not found; give --folds K"):
        fold_splits(tmp_path / "other", IDS, None, seed=12345)
    path.write_text(json.dumps([{"train": IDS[1:], "val": IDS[:1]}, {"train": IDS[1:], "val": IDS[:1]}]))
    with pytest.raises(BrainsegError, match="held out by exactly one fold"):
        fold_splits(run, IDS, None, seed=12345)


def test_a_fold_split_replaces_the_validation_fraction(tmp_path: Path):
    cases = discover_dataset(make_train_set(tmp_path / "data", n=4)).train
    train, val = split_cases(cases, 0.5, seed=0, given=(["c4", "c1"], ["c3"]))
    assert [c.case_id for c in train] == ["c1", "c4"] and [c.case_id for c in val] == ["c3"]
    with pytest.raises(BrainsegError, match="does not hold: c9"):
        split_cases(cases, 0.5, seed=0, given=(["c1"], ["c9"]))


def test_a_single_run_does_not_go_into_a_cross_validation_folder(tmp_path: Path):
    fold_splits(tmp_path, IDS, 2, seed=0)
    with pytest.raises(BrainsegError, match="holds a cross-validation run"):
        check_run_dir(tmp_path, resume=False)


# ----------------------------------------------------------------------------- summary


def write_record(run: Path, fold: int, dice: dict[str, dict[str, float]], failed: dict | None = None) -> None:
    path = fold_record_path(run, fold)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"fold": fold, "kind": "labels", "keys": ["1", "2"], "names": {"1": "a", "2": "b"}}
    path.write_text(json.dumps(record | {"dice": dice, "failed": failed or {}}))


def test_summary_is_rewritten_from_the_fold_records_that_exist(tmp_path: Path):
    write_record(tmp_path, 1, {"c2": {"1": 0.5, "2": 0.7}, "c1": {"1": 0.9, "2": 0.3}})
    summary = write_cv_summary(tmp_path, 2)
    assert summary is not None and not summary["complete"] and summary["folds_done"] == [1]
    assert "1 of 2 fold(s) (incomplete" in format_cv_table(summary)
    write_record(tmp_path, 0, {"c3": {"1": 0.6, "2": 0.8}})
    summary = write_cv_summary(tmp_path, 2)
    assert summary is not None and summary["complete"] and summary["n_cases"] == 3
    assert summary["dice"]["1"]["mean"] == pytest.approx(2.0 / 3.0)
    assert summary["dice"]["1"]["std"] == pytest.approx(np.std([0.9, 0.5, 0.6]))
    assert summary["dice"]["mean"]["mean"] == pytest.approx(np.mean([0.6, 0.6, 0.7]))
    assert summary["per_fold"]["1"]["dice"]["2"]["mean"] == pytest.approx(0.5)
    with open(tmp_path / "cv_summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["case"], r["fold"]) for r in rows] == [("c1", "1"), ("c2", "1"), ("c3", "0")]
    assert list(rows[0]) == ["case", "fold", "dice_1", "dice_2", "dice_mean"] and float(rows[1]["dice_mean"]) == 0.6
    table = format_cv_table(summary).splitlines()
    assert table[0].split() == ["label", "Dice", "mean", "±", "std", "fold", "0", "fold", "1"]
    assert table[1].split() == ["1", "a", "0.6667", "±", f"{np.std([0.9, 0.5, 0.6]):.4f}", "0.6000", "0.7000"]


def test_info_on_a_cross_validation_folder_shows_its_folds_and_scores(tmp_path: Path, capsys):
    fold_splits(tmp_path, IDS, 2, seed=0)
    write_record(tmp_path, 0, {"c1": {"1": 0.8, "2": 0.6}})
    write_cv_summary(tmp_path, 2)
    capsys.readouterr()
    rc = main(["info", str(tmp_path)])
    shown = capsys.readouterr()
    assert rc == 0 and shown.err == ""
    lines = shown.out.splitlines()
    assert lines[0].startswith("cross-validation") and lines[0].endswith(": 2 folds (splits.json); trained: none yet")
    assert f"brainseg info {tmp_path / 'fold_0'}" in lines[1]
    assert "1 a: Dice 0.8000 ± 0.0000" in shown.out and "1 case(s) out of fold, 1 of 2 fold(s)" in shown.out
    rc, err = in_process(capsys, "info", tmp_path, "--checkpoint", "final")
    assert rc == 1 and f"{tmp_path}: a cross-validation run, not one model" in err


# ----------------------------------------------------------------------------- a real run


def cv_data(root: Path) -> Path:
    """Four small labelled heads; c3 in its own grid (another shape, voxel size, origin and a flipped axis)."""
    data = make_train_set(root, n=4)
    image = phantom(shape=(22, 18, 16), seed=3)
    affine = np.array([[-1.3, 0, 0, 14.0], [0, 1.6, 0, -5.0], [0, 0, 1.8, 3.0], [0, 0, 0, 1]])
    save(data / "imagesTr" / "c3_0000.nii.gz", image, affine)
    save(data / "labelsTr" / "c3.nii.gz", labels_of(image), affine)
    assert not np.allclose(affine, AFFINE)
    return data


def train_args(data: Path, run: Path, *extra: object) -> list[object]:
    return ["train", "--data", data, "--out", run, "--epochs", "1", "--no-progress", *extra, *TINY_TRAIN]


@pytest.mark.slow
def test_two_folds_predict_every_case_once_in_its_grid_scored_as_evaluate_does(tmp_path: Path):
    data, run = cv_data(tmp_path / "data"), tmp_path / "run"
    proc = cli(*train_args(data, run, "--folds", "2"), timeout=180)
    assert proc.returncode == 0, proc.stderr
    splits = json.loads((run / SPLITS_FILE).read_text())
    assert sorted(held_out(splits)) == ["c1", "c2", "c3", "c4"]
    for k in (0, 1):
        assert (run / f"fold_{k}" / "checkpoint_final.pt").is_file()
        assert json.loads((run / f"fold_{k}" / "split.json").read_text()) == splits[k]  # validated on its cases
    masks = sorted(p.name for p in (run / "cv_predictions").glob("*.nii.gz"))
    assert masks == ["c1.nii.gz", "c2.nii.gz", "c3.nii.gz", "c4.nii.gz"]
    for cid in ("c1", "c2", "c3", "c4"):
        _, mask_grid = read_label(run / "cv_predictions" / f"{cid}.nii.gz")
        _, label_grid = read_label(data / "labelsTr" / f"{cid}.nii.gz")
        assert mask_grid.same_grid(label_grid), cid
    records = [json.loads(fold_record_path(run, k).read_text()) for k in (0, 1)]
    assert [sorted(r["dice"]) for r in records] == [s["val"] for s in splits]
    assert records[0]["decision"]["postprocess"]["input_mask"] == "fill"

    # the summary's Dice is brainseg evaluate's on the same masks
    ev = cli("evaluate", "--pred", run / "cv_predictions", "--ref", data / "labelsTr", "--out", tmp_path / "ev")
    assert ev.returncode == 0, ev.stderr
    with open(tmp_path / "ev" / "metrics.csv") as fh:
        evaluated = {(r["case"], r["label"]): r["dice"] for r in csv.DictReader(fh)}
    with open(run / "cv_summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["case"] for r in rows] == ["c1", "c2", "c3", "c4"]
    assert {(r["case"], v): format(float(r[f"dice_{v}"]), ".10g") for r in rows for v in "12"} == evaluated
    ev_summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    summary = json.loads((run / "cv_summary.json").read_text())
    for v in "12":
        assert summary["dice"][v]["mean"] == ev_summary["labels"][v]["dice"]["mean"]
        assert summary["dice"][v]["std"] == ev_summary["labels"][v]["dice"]["std"]
    assert summary["complete"] and summary["n_cases"] == 4
    table = proc.stdout.splitlines()
    assert any(line.startswith("1 a ") and f"{summary['dice']['1']['mean']:.4f} ±" in line for line in table)
    assert "4 case(s) out of fold, 2 of 2 fold(s)" in proc.stdout

    # after the last fold: the decision chosen on all folds and the quality score, in every fold's card
    decision = json.loads((run / CV_DECISION).read_text())
    assert decision["on"] == "cross-validation" and decision["cases"] == 4
    assert decision["dice_after"] >= decision["dice_before"] and len(decision["validation_decisions"]) == 2
    assert records[0]["decision"]["class_offsets"] == decision["class_offsets"]  # the masks' decision
    calibration = json.loads((run / CV_QUALITY).read_text())
    variants = [r["variant"] for r in calibration["rows"]]
    assert len(variants) == 4 * (1 + CALIBRATION_COPIES) and variants.count("clean") == 4
    assert {r["case"]: r["dice"] for r in calibration["rows"] if r["variant"] == "clean"} == {
        row["case"]: {v: float(row[f"dice_{v}"]) for v in "12"} for row in rows
    }  # the calibration's clean Dice is the summary's
    for k in (0, 1):
        card = load_card(run / f"fold_{k}")
        assert card.quality is not None and card.quality.keys == ("1", "2") and card.quality.n_cases == len(variants)
        assert card.decision_source is not None and card.decision_source["dice_after"] == decision["dice_after"]
    predicted = cli(
        "predict", "--model", run, "--input", data / "imagesTr", "--output", tmp_path / "pred", "--no-progress"
    )
    assert predicted.returncode == 0, predicted.stderr
    with open(tmp_path / "pred" / "volumes.csv") as fh:
        volumes = list(csv.DictReader(fh))
    assert [c for c in volumes[0] if c.startswith("qc_")] == ["qc_dice_a", "qc_dice_b", "qc_dice_mean", "qc_flag"]
    flags = [r["case"] for r in volumes if r["qc_flag"] == "1"]
    assert flags == [r["case"] for r in volumes if float(r["qc_dice_mean"]) < 0.7]
    assert f"quality: {len(flags)} of 4 case(s) flagged" in predicted.stdout

    # the score fitted again from the stored rows alone: the same score, in every fold's cards
    assert sorted(calibration["reference_volumes_mm3"]) == ["1", "2"]
    (run / CV_QUALITY).write_text(json.dumps({**calibration, "fit": {}}))
    refitted = refit_quality(run)
    assert refitted.to_dict() == load_card(run / "fold_0").quality.to_dict()
    assert refitted.calibrations == load_card(run / "fold_1").quality.calibrations
    assert json.loads((run / CV_QUALITY).read_text())["fit"] == refitted.fit == decision["quality_fit"]

    # a rerun reuses the splits and the plan and trains nothing; a changed data set is refused
    again = cli(*train_args(data, run, "--folds", "2"), timeout=120)
    assert again.returncode == 0, again.stderr
    assert "fold 0: trained already" in again.stdout and "using the plan in" in again.stdout
    assert json.loads((run / SPLITS_FILE).read_text()) == splits
    save(data / "imagesTr" / "c5_0000.nii.gz", phantom(seed=5))
    save(data / "labelsTr" / "c5.nii.gz", labels_of(phantom(seed=5)))
    changed = cli(*train_args(data, run, "--folds", "2"), timeout=120)
    assert changed.returncode == 1
    assert error_lines(changed.stderr) == [
        f"brainseg: error: {run / SPLITS_FILE}: the data set's cases changed since the folds were split "
        f"(new case(s): c5); use a new --out (or delete {SPLITS_FILE} and the folds trained on it)"
    ]
    info = cli("info", run)
    assert info.returncode == 0, info.stderr
    assert "2 folds (splits.json); trained: fold_0, fold_1" in info.stdout and "brainseg info" in info.stdout


@pytest.mark.slow
def test_one_fold_alone_trains_only_that_fold(tmp_path: Path):
    data, run = make_train_set(tmp_path / "data", n=4), tmp_path / "run"
    proc = cli(*train_args(data, run, "--folds", "2", "--fold", "1"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not (run / "fold_0").exists() and (run / "fold_1" / "checkpoint_final.pt").is_file()
    splits = json.loads((run / SPLITS_FILE).read_text())
    masks = sorted(p.name.removesuffix(".nii.gz") for p in (run / "cv_predictions").glob("*.nii.gz"))
    assert masks == splits[1]["val"]
    summary = json.loads((run / "cv_summary.json").read_text())
    assert summary["folds_done"] == [1] and not summary["complete"] and summary["n_cases"] == len(splits[1]["val"])
    assert "1 of 2 fold(s) (incomplete" in proc.stdout
