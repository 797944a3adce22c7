"""Region evaluation with BraTS's conventions (`brainseg evaluate --regions`) on real files."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from brainseg.cli import main
from brainseg.errors import BrainsegError
from brainseg.evaluate.per_region import evaluate_region_folders, regions_from_spec
from brainseg.labels.regions import BRATS_2021, BRATS_2023
from tests.conftest import NNUNET_REGIONS, REPO, msd_root, save_1mm


def test_regions_from_spec_names_and_refusals(tmp_path):
    assert regions_from_spec("brats") is None  # chosen from the references
    assert regions_from_spec("brats2021") is BRATS_2021 and regions_from_spec("brats2023") is BRATS_2023
    with pytest.raises(BrainsegError, match="expected brats, brats2021, brats2023 or a dataset.json"):
        regions_from_spec(str(tmp_path / "nope.json"))
    plain = tmp_path / "dataset.json"
    plain.write_text(json.dumps({"channel_names": {"0": "T1"}, "labels": {"background": 0, "a": 1}}))
    with pytest.raises(BrainsegError, match="defines no regions"):
        regions_from_spec(str(plain))


def evaluate_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "brainseg", "evaluate", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )


def write_cases(root: Path, et: int) -> None:
    """Three cases (enhancing tumour written as ``et``): perfect, ET missed, no ET on either side."""
    ref = np.zeros((20, 20, 20), dtype=np.uint8)
    ref[4:16, 4:16, 4:16] = 2
    ref[7:13, 7:13, 7:13] = et
    ref[9:11, 9:11, 9:11] = 1
    no_et = np.where(ref == et, 1, ref)  # the prediction of "missed"; both sides of "none"
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    for cid, p, r in (("perfect", ref, ref), ("missed", no_et, ref), ("none", no_et, no_et)):
        save_1mm(root / "pred" / f"{cid}.nii.gz", p, affine)
        save_1mm(root / "ref" / f"{cid}.nii.gz", r, affine)


@pytest.mark.parametrize("et, year", [(4, 2021), (3, 2023)])
def test_evaluate_regions_brats_picks_the_year_and_writes_csv_and_summary(tmp_path, caplog, et, year):
    write_cases(tmp_path, et)
    res = evaluate_cli(
        "--pred",
        str(tmp_path / "pred"),
        "--ref",
        str(tmp_path / "ref"),
        "--out",
        str(tmp_path / "ev"),
        "--regions",
        "brats",
    )
    assert res.returncode == 0, res.stderr
    assert f"BraTS {year} regions" in res.stderr and "3 case(s) scored, 0 failed" in res.stdout
    with open(tmp_path / "ev" / "metrics.csv", newline="") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    assert list(next(iter(rows.values()))) == ["case"] + [
        f"{r}_{m}" for r in ("WT", "TC", "ET") for m in ("dice", "hd95_mm", "lesion_dice", "lesion_hd95_mm")
    ]
    assert all(
        float(rows["perfect"][k]) == (1.0 if k.endswith("dice") else 0.0) for k in rows["perfect"] if k != "case"
    )
    assert float(rows["missed"]["ET_dice"]) == 0.0 and float(rows["missed"]["ET_hd95_mm"]) == 373.13
    assert float(rows["missed"]["TC_dice"]) == 1.0 and float(rows["missed"]["WT_dice"]) == 1.0
    assert float(rows["none"]["ET_dice"]) == 1.0 and float(rows["none"]["ET_hd95_mm"]) == 0.0
    # one ET lesion each: missed -> lesion Dice 0 and the lesion-wise penalty; none on either side -> 1 and 0
    assert (float(rows["missed"]["ET_lesion_dice"]), float(rows["missed"]["ET_lesion_hd95_mm"])) == (0.0, 374.0)
    assert (float(rows["none"]["ET_lesion_dice"]), float(rows["none"]["ET_lesion_hd95_mm"])) == (1.0, 0.0)
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert list(summary["regions"]) == ["WT", "TC", "ET"] and summary["n_cases"] == 3 and summary["failed"] == []
    assert summary["regions"]["ET"]["labels"] == [et] and summary["regions"]["TC"]["labels"] == [1, et]
    et_stats = summary["regions"]["ET"]
    assert et_stats["dice"]["mean"] == pytest.approx(2 / 3) and et_stats["dice"]["median"] == 1.0
    assert et_stats["hd95_mm"]["mean"] == pytest.approx(373.13 / 3)
    assert et_stats["dice"]["std"] == pytest.approx(np.std([1.0, 0.0, 1.0]))
    assert summary["mean_over_regions"]["dice"] == pytest.approx((1 + 1 + 2 / 3) / 3)
    assert summary["mean_over_regions"]["hd95_mm"] == pytest.approx(373.13 / 9)
    assert summary["hd95_penalty_mm"] == 373.13 and "373.13" in summary["conventions"]
    # the other year's regions, named explicitly, miss this ET entirely (and say so)
    other = BRATS_2023 if year == 2021 else BRATS_2021
    with caplog.at_level(logging.WARNING, logger="brainseg"):
        summary = evaluate_region_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "ev2", other, progress=False)
    assert f"the prediction holds label(s) [{et}], which no region contains" in caplog.text
    assert summary["regions"]["ET"]["dice"]["mean"] == 1.0  # both sides empty in every case
    assert json.loads((tmp_path / "ev2" / "summary.json").read_text()) == summary


def test_evaluate_regions_from_dataset_json_and_refusals(tmp_path, capsys, tiny_checkpoint_factory):
    write_cases(tmp_path, 3)  # values 1, 2, 3 read as nnU-Net's regions: whole tumor [1,2,3], tumor core [2,3], ...
    meta = msd_root(tmp_path / "ds", NNUNET_REGIONS) / "dataset.json"
    res = evaluate_cli(
        "--pred",
        str(tmp_path / "pred"),
        "--ref",
        str(tmp_path / "ref"),
        "--out",
        str(tmp_path / "ev"),
        "--regions",
        str(meta),
    )
    assert res.returncode == 0, res.stderr
    header = (tmp_path / "ev" / "metrics.csv").read_text().splitlines()[0]
    assert header == "case," + ",".join(
        f"{r}_{m}"
        for r in ("whole tumor", "tumor core", "enhancing tumor")
        for m in ("dice", "hd95_mm", "lesion_dice", "lesion_hd95_mm")
    )
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["regions"]["tumor core"]["labels"] == [2, 3]
    # "missed" wrote ET (3) as 1: nnU-Net's tumor core [2, 3] loses those voxels
    assert summary["regions"]["tumor core"]["dice"]["mean"] < 1.0
    # refusals: one error line, exit 1, nothing written (in-process: the CLI's start-up is the slow part)
    common = [
        "evaluate",
        "--pred",
        str(tmp_path / "pred"),
        "--ref",
        str(tmp_path / "ref"),
        "--out",
        str(tmp_path / "bad"),
    ]
    for args, expected in (
        (["--regions", "bogus"], "--regions 'bogus': expected brats, brats2021, brats2023 or a dataset.json"),
        (["--model", str(tiny_checkpoint_factory())], "the model card defines no regions"),
    ):
        capsys.readouterr()
        assert main(common + args) == 1
        err = capsys.readouterr().err
        assert expected in err and err.startswith("brainseg: error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit) as info:
        main(common + ["--regions", "brats", "--labels", "1"])
    assert info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
