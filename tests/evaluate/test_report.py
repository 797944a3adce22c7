"""``dice_boxplot.png`` and ``cases_worst_first.csv`` of an evaluation, from planted Dice values.

Real label maps in tmp folders whose Dice is known exactly: a prediction equal to the
reference (1), one that holds half of a label's block (2·256 / (512 + 256) = 2/3), one that
misses a label (0); per label through ``brainseg evaluate`` (a subprocess) and per region.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from brainseg.evaluate.per_region import evaluate_region_folders
from brainseg.evaluate.report import BOXPLOT_NAME, WORST_FIRST_NAME, worst_first
from brainseg.io.pictures import boxplot_figure
from brainseg.labels.regions import BRATS_2021
from tests.conftest import REPO, tumour_label, write_labels

SHAPE = (16, 16, 16)


def reference() -> np.ndarray:
    ref = np.zeros(SHAPE, np.int16)
    ref[2:10, 2:10, 2:10] = 1  # 512 voxels
    ref[11:15, 11:15, 11:15] = 2  # 64 voxels
    return ref


def planted(root: Path) -> dict[str, tuple[float, float]]:
    """Write ref/ and pred/ for four cases; return each case's (label 1, label 2) Dice."""
    ref = reference()
    preds = {"good": ref.copy(), "mid": ref.copy(), "bad": ref.copy(), "worst": np.zeros(SHAPE, np.int16)}
    preds["mid"][2:10, 2:10, 6:10] = 0  # half of label 1's block
    preds["bad"][preds["bad"] == 1] = 0  # label 1 missed
    for case, pred in preds.items():
        write_labels(root / "ref" / f"{case}.nii.gz", ref)
        write_labels(root / "pred" / f"{case}.nii.gz", pred)
    return {"good": (1.0, 1.0), "mid": (2 / 3, 1.0), "bad": (0.0, 1.0), "worst": (0.0, 0.0)}


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_label_evaluation_writes_the_cases_worst_first_and_a_box_plot(tmp_path: Path):
    expected = planted(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    res = subprocess.run(
        [sys.executable, "-m", "brainseg", "evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref")]
        + ["--out", str(tmp_path / "out"), "--worst", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr

    rows = read_rows(tmp_path / "out" / WORST_FIRST_NAME)
    assert [r["case"] for r in rows] == ["worst", "bad", "mid", "good"]
    for row in rows:
        d1, d2 = expected[row["case"]]
        assert float(row["1_dice"]) == pytest.approx(d1, abs=1e-9)
        assert float(row["2_dice"]) == pytest.approx(d2, abs=1e-9)
        assert float(row["mean_dice"]) == pytest.approx((d1 + d2) / 2, abs=1e-9)
    lines = res.stdout.splitlines()
    at = lines.index("worst 2 case(s) by mean Dice:")
    assert [line.split() for line in lines[at + 1 : at + 3]] == [
        ["worst", "mean", "Dice", "0.0000"],
        ["bad", "mean", "Dice", "0.5000"],
    ]
    width, height = png_size(tmp_path / "out" / BOXPLOT_NAME)
    assert 400 <= width <= 1000 and height == 450
    assert f"wrote {tmp_path / 'out' / BOXPLOT_NAME}" in res.stdout


def test_region_evaluation_writes_the_cases_worst_first_and_a_box_plot(tmp_path: Path):
    ref = tumour_label(SHAPE, (8, 8, 8), (6, 4, 2))  # oedema 2 around necrosis 1 around enhancing 4
    no_enhancing = np.where(ref == 4, 1, ref)  # whole tumour and core right, enhancing tumour missed
    for case, pred in {"same": ref, "empty": np.zeros_like(ref), "no_et": no_enhancing}.items():
        write_labels(tmp_path / "ref" / f"{case}.nii.gz", ref)
        write_labels(tmp_path / "pred" / f"{case}.nii.gz", pred)

    evaluate_region_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", BRATS_2021, progress=False)

    rows = read_rows(tmp_path / "out" / WORST_FIRST_NAME)
    assert [r["case"] for r in rows] == ["empty", "no_et", "same"]
    names = list(BRATS_2021.names)
    assert list(rows[0]) == ["case", "mean_dice", *(f"{n}_dice" for n in names)]
    assert [float(rows[1][f"{n}_dice"]) for n in names] == [1.0, 1.0, 0.0]
    assert [float(r["mean_dice"]) for r in rows] == pytest.approx([0.0, 2 / 3, 1.0], abs=1e-9)
    assert png_size(tmp_path / "out" / BOXPLOT_NAME)[1] == 450


def test_the_box_plot_draws_each_labels_median_and_ties_sort_by_case():
    fig = boxplot_figure({"1": [0.2, 0.9, 0.5], "2": [1.0, 0.0]}, "Dice per label")
    (ax,) = fig.axes
    medians = {line.get_gid(): float(np.mean(line.get_ydata())) for line in ax.lines if line.get_gid()}
    assert medians == {"median:1": pytest.approx(0.5), "median:2": pytest.approx(0.5)}
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2"]
    assert worst_first({"b": {"1": 0.5}, "a": {"1": 0.5}, "c": {"1": 0.1}}) == [("c", 0.1), ("a", 0.5), ("b", 0.5)]
