"""A case's predicted Dice at prediction: measured as calibrated, written to volumes.csv, flagged."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainseg.quality.qc import FEATURES, KeyCalibration, QualityModel
from tests.conftest import brainseg, save_sequence, sequences

#: A quality score that predicts each label's soft Dice (weight 1 on it, nothing else, identity map).
SOFT_DICE = QualityModel(
    keys=("1", "2"),
    calibrations=tuple(
        KeyCalibration(
            0.0,
            1.0,
            (0.0,) * len(FEATURES),
            (1.0,) * len(FEATURES),
            (1.0, 0, 0, 0, 0, 0),
            0.0,
            (-9.0, 9.0),
            (-9.0, 9.0),
        )
        for _ in range(2)
    ),
    n_cases=10,
)


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path) as fh:
        return {r["case"]: r for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scans")
    for i, (_name, data) in enumerate(sorted(sequences().items())):
        save_sequence(folder / f"s{i}_0000.nii.gz", data)
    return folder


def test_the_quality_columns_hold_the_calibrated_score_and_the_flag(
    tiny_checkpoint_factory, scans: Path, tmp_path: Path
):
    model = tiny_checkpoint_factory(quality=SOFT_DICE)
    out = tmp_path / "pred"
    proc = brainseg("predict", "--model", model, "--input", scans, "--output", out, "--save-probabilities",
                    "--qc-threshold", "0.6", "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = read_rows(out / "volumes.csv")
    assert list(next(iter(rows.values())))[-4:] == ["qc_dice_a", "qc_dice_b", "qc_dice_mean", "qc_flag"]
    for case, row in rows.items():
        probs = np.moveaxis(nib.load(out / f"{case}_probabilities.nii.gz").get_fdata(), -1, 0)
        mask = np.asarray(nib.load(out / f"{case}.nii.gz").dataobj)
        for value, name in ((1, "a"), (2, "b")):
            m = mask == value
            soft = 2 * probs[value][m].sum() / (probs[value].sum() + m.sum())
            assert float(row[f"qc_dice_{name}"]) == pytest.approx(soft, abs=1e-4)  # the soft Dice, as calibrated
        mean = (float(row["qc_dice_a"]) + float(row["qc_dice_b"])) / 2
        assert float(row["qc_dice_mean"]) == pytest.approx(mean, abs=1e-4)
        assert row["qc_flag"] == ("1" if mean < 0.6 else "0")
    flagged = sorted(c for c, r in rows.items() if r["qc_flag"] == "1")
    assert f"quality: {len(flagged)} of {len(rows)} case(s) flagged" in proc.stdout
    # The run record keeps what the score measured, so a refitted score can be checked without predicting.
    record = json.loads((out / "brainseg_run.json").read_text())["cases"]
    for case, row in rows.items():
        measured = record[case]["quality"]
        assert set(measured["ood_distance"]) == {"geometry", "contrast"}
        assert measured["measures"]["1"]["soft_dice"] == pytest.approx(float(row["qc_dice_a"]), abs=1e-4)


def test_an_ensemble_is_measured_on_its_first_member_alone(tiny_checkpoint_factory, scans: Path, tmp_path: Path):
    first, second = tiny_checkpoint_factory(quality=SOFT_DICE), tiny_checkpoint_factory(quality=SOFT_DICE, seed=9)
    alone, together = tmp_path / "alone", tmp_path / "together"
    for model, out in (([first], alone), ([first, second], together)):
        proc = brainseg("predict", "--model", *model, "--input", scans, "--output", out, "--no-progress")
        assert proc.returncode == 0, proc.stderr
    a, b = read_rows(alone / "volumes.csv"), read_rows(together / "volumes.csv")
    qc = ["qc_dice_a", "qc_dice_b", "qc_dice_mean", "qc_flag"]
    assert {c: [r[k] for k in qc] for c, r in a.items()} == {c: [r[k] for k in qc] for c, r in b.items()}
    assert any(a[c]["a_mm3"] != b[c]["a_mm3"] for c in a)  # while the masks are the ensemble's
