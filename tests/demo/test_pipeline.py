"""`brainseg demo` end to end (tiny settings): data -> train -> predict -> evaluate -> picture, for the tissue and tumour kinds."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from brainseg.evaluate.metrics import dice
from tests.conftest import TINY_REGION_TRAIN, run_cli


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reports_where_everything_is(tmp_path):
    out = tmp_path / "demo"
    tiny = [
        "--set",
        "model.levels=3",
        "--set",
        "model.base_features=4",
        "--set",
        "model.max_features=16",
        "--set",
        "train.patch_size=[32,32,32]",
        "--set",
        "train.iters_per_epoch=4",
        "--set",
        "train.num_workers=0",
        "--set",
        "train.val_every=1",
        "--set",
        "train.epochs=2",
        "--set",
        "data.target_spacing=[3.0,3.0,3.0]",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(
        [sys.executable, "-m", "brainseg", "demo", "--out", str(out), "--n", "3", "--max-minutes", "2", *tiny],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Dice on the held-out demo subjects" in res.stdout
    assert "mean foreground" in res.stdout
    for path in (
        "data/dataset.json",
        "run/checkpoint_final.pt",
        "run/curves.png",
        "predictions/volumes.csv",
        "evaluation/metrics.csv",
        "evaluation/summary.json",
        "overlay.png",
    ):
        assert (out / path).is_file(), path
    assert (out / "overlay.png").read_bytes()[:4] == b"\x89PNG"

    # The reported Dice is the Dice of the written masks against the held-out labels, recomputed
    # here from the files, and the trained model beats chance on the tissue labels.
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    with open(out / "evaluation" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    cases = sorted(p.name[: -len(".nii.gz")] for p in (out / "data" / "labelsTs").glob("*.nii.gz"))
    assert cases and sorted({r["case"] for r in rows}) == cases
    assert sorted(int(r["label"]) for r in rows if r["case"] == cases[0]) == [1, 2, 3]
    for row in rows:
        pred = np.asarray(nib.load(out / "predictions" / f"{row['case']}.nii.gz").dataobj)
        ref = np.asarray(nib.load(out / "data" / "labelsTs" / f"{row['case']}.nii.gz").dataobj)
        label = int(row["label"])
        assert float(row["dice"]) == pytest.approx(dice(pred == label, ref == label), abs=1e-6), row
    mean = summary["overall"]["dice"]["mean"]
    assert mean == pytest.approx(np.mean([float(r["dice"]) for r in rows]), abs=1e-6)
    assert mean > 0.25, summary["labels"]  # the two epochs taught it the tissues
    # every held-out subject got a mask on exactly its own grid
    for image in sorted((out / "data" / "imagesTs").glob("*_0000.nii.gz")):
        case = image.name[: -len("_0000.nii.gz")]
        mask = nib.load(out / "predictions" / f"{case}.nii.gz")
        scan = nib.load(image)
        assert mask.shape == scan.shape
        np.testing.assert_allclose(mask.affine, scan.affine, atol=1e-6)
        assert np.issubdtype(mask.get_data_dtype(), np.integer)

    # a second run reuses the finished pieces instead of redoing them
    res2 = subprocess.run(
        [sys.executable, "-m", "brainseg", "demo", "--out", str(out), "--n", "3", *tiny],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert res2.returncode == 0, res2.stderr[-2000:]
    assert "reused" in res2.stderr  # the step lines are log messages (stderr)


@pytest.mark.slow
def test_tumour_demo_end_to_end(tmp_path):
    tiny = [a for a in TINY_REGION_TRAIN if a != "--set" and not a.startswith(("data.val_fraction", "postprocess"))]
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
