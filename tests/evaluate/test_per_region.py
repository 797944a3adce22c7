"""Regions from a data set (nnU-Net v2 region dataset.json, BraTS layouts) and their evaluation
with BraTS's conventions (`brainseg evaluate --regions`), on real files."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainseg.cli import main
from brainseg.data.cases import DiscoveryError
from brainseg.data.layouts import discover_dataset
from brainseg.errors import BrainsegError
from brainseg.evaluate.metrics import BRATS_HD95_PENALTY_MM, dice, hd95, region_scores
from brainseg.evaluate.per_region import evaluate_region_folders, regions_from_spec
from brainseg.labels.regions import BRATS_2021, BRATS_2023

REPO = Path(__file__).resolve().parents[1]
NNUNET_REGIONS = {
    "channel_names": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
    "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
    "regions_class_order": [1, 2, 3],
}
AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])


def save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.uint8), affine), str(path))
    return path


def msd_root(root: Path, meta: dict) -> Path:
    """An nnU-Net folder with one four-channel case and ``meta`` as dataset.json."""
    for i in range(4):
        save(root / "imagesTr" / f"a_000{i}.nii.gz", np.ones((4, 4, 4)))
    save(root / "labelsTr" / "a.nii.gz", np.zeros((4, 4, 4)))
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


# ----------------------------------------------------------------------------- dataset.json


def test_region_dataset_json_gives_regions_and_the_label_table(tmp_path):
    ds = discover_dataset(msd_root(tmp_path / "ds", NNUNET_REGIONS))
    assert ds.regions.names == ("whole tumor", "tumor core", "enhancing tumor")
    assert ds.regions.labels == ((1, 2, 3), (2, 3), (3,)) and ds.regions.class_order == (1, 2, 3)
    assert ds.labels == {0: "background", 1: "whole tumor", 2: "tumor core", 3: "enhancing tumor"}
    # a single value is a region of one label; a value no region writes is named label_N
    meta = dict(NNUNET_REGIONS, labels={"bg": 0, "lesion": [1, 2, 5], "active": 2}, regions_class_order=[1, 2])
    ds = discover_dataset(msd_root(tmp_path / "ds2", meta))
    assert ds.regions.names == ("lesion", "active") and ds.regions.labels == ((1, 2, 5), (2,))
    assert ds.labels == {0: "bg", 1: "lesion", 2: "active", 5: "label_5"}
    # the same file through --regions
    assert regions_from_spec(str(tmp_path / "ds" / "dataset.json")) == discover_dataset(tmp_path / "ds").regions
    # plain labels (the Decathlon's Task01 names): no regions
    plain = dict(NNUNET_REGIONS, labels={"background": 0, "edema": 1, "non-enhancing tumor": 2, "enhancing tumour": 3})
    ds = discover_dataset(msd_root(tmp_path / "plain", plain))  # regions_class_order ignored, as nnU-Net does
    assert ds.regions is None and ds.labels == {
        0: "background",
        1: "edema",
        2: "non-enhancing tumor",
        3: "enhancing tumour",
    }


BAD_REGIONS = [
    (
        {"labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3]}},
        "\"labels\" defines regions ('whole tumor', 'tumor core') but \"regions_class_order\" is missing",
    ),
    ({"regions_class_order": [1, 2]}, '"regions_class_order" must list one label value per region (3:'),
    ({"regions_class_order": "1,2,3"}, '"regions_class_order" must list one label value per region'),
    ({"regions_class_order": [1, 2, 1]}, "'enhancing tumor' writes label 1, which it does not contain [3]"),
    ({"labels": {"background": 0, "whole tumor": [], "x": [3]}}, "region 'whole tumor' must be a non-empty list"),
    ({"labels": {"background": 0, "whole tumor": [1, -2], "x": [3]}}, "region 'whole tumor' must be a non-empty list"),
    ({"labels": {"background": 0, "whole tumor": ["1"], "x": [3]}}, "region 'whole tumor' must be a non-empty list"),
]


@pytest.mark.parametrize("change, expected", BAD_REGIONS, ids=[e[:40] for _, e in BAD_REGIONS])
def test_malformed_region_dataset_json_is_one_line_naming_the_file(tmp_path, change, expected):
    meta = {**NNUNET_REGIONS, **change}
    if "labels" in change and "regions_class_order" not in change:
        meta.pop("regions_class_order")
    root = msd_root(tmp_path / "ds", meta)
    with pytest.raises(DiscoveryError) as info:
        discover_dataset(root)
    msg = str(info.value)
    assert len(info.value.problems) == 1 and "\n" not in msg
    assert msg.startswith(f"{root}: dataset.json: field") and expected in msg
    with pytest.raises(BrainsegError, match="dataset.json"):
        regions_from_spec(str(root / "dataset.json"))


def test_regions_from_spec_names_and_refusals(tmp_path):
    assert regions_from_spec("brats") is None  # chosen from the references
    assert regions_from_spec("brats2021") is BRATS_2021 and regions_from_spec("brats2023") is BRATS_2023
    with pytest.raises(BrainsegError, match="expected brats, brats2021, brats2023 or a dataset.json"):
        regions_from_spec(str(tmp_path / "nope.json"))
    plain = tmp_path / "dataset.json"
    plain.write_text(json.dumps({"channel_names": {"0": "T1"}, "labels": {"background": 0, "a": 1}}))
    with pytest.raises(BrainsegError, match="defines no regions"):
        regions_from_spec(str(plain))


# ----------------------------------------------------------------------------- metrics


def test_region_scores_follow_the_brats_conventions():
    assert BRATS_HD95_PENALTY_MM == round(math.sqrt(240**2 + 240**2 + 155**2), 2)
    ref = np.zeros((20, 20, 20), dtype=np.uint8)
    ref[5:15, 5:15, 5:15] = 2  # oedema
    ref[8:12, 8:12, 8:12] = 4  # enhancing core, no necrosis
    scores = region_scores(ref, ref, BRATS_2021, (1, 1, 1))
    assert scores == {"WT": (1.0, 0.0), "TC": (1.0, 0.0), "ET": (1.0, 0.0)}
    # the prediction calls the core necrosis: TC right, ET missed (one empty -> Dice 0, the penalty)
    pred = ref.copy()
    pred[pred == 4] = 1
    scores = region_scores(pred, ref, BRATS_2021, (1, 1, 1))
    assert scores["WT"] == (1.0, 0.0) and scores["TC"] == (1.0, 0.0) and scores["ET"] == (0.0, 373.13)
    # both without ET: Dice 1, HD95 0
    no_et = np.where(ref == 4, 1, ref).astype(np.uint8)
    assert region_scores(no_et, no_et, BRATS_2021, (1, 1, 1))["ET"] == (1.0, 0.0)
    # a shifted WT: the plain metrics on the region masks, the spacing applied
    shifted = np.roll(ref, 2, axis=0)
    scores = region_scores(shifted, ref, BRATS_2021, (2.0, 1.0, 1.0))
    wt_p, wt_r = shifted > 0, ref > 0
    assert scores["WT"] == (dice(wt_p, wt_r), hd95(wt_p, wt_r, (2.0, 1.0, 1.0)))
    assert scores["WT"][0] == pytest.approx(0.8) and scores["WT"][1] == pytest.approx(4.0)
    # BraTS 2023 writes ET as 3; 2021's regions would not see it
    ref23 = np.where(ref == 4, 3, ref).astype(np.uint8)
    assert region_scores(ref23, ref23, BRATS_2023, (1, 1, 1))["ET"] == (1.0, 0.0)
    assert region_scores(ref23, ref, BRATS_2021, (1, 1, 1))["ET"] == (0.0, 373.13)
    assert region_scores(pred, ref, BRATS_2021, (1, 1, 1), penalty_mm=99.0)["ET"] == (0.0, 99.0)


# ----------------------------------------------------------------------------- brainseg evaluate --regions


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
        save(root / "pred" / f"{cid}.nii.gz", p, affine)
        save(root / "ref" / f"{cid}.nii.gz", r, affine)


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
    assert list(next(iter(rows.values()))) == [
        "case",
        "WT_dice",
        "WT_hd95_mm",
        "TC_dice",
        "TC_hd95_mm",
        "ET_dice",
        "ET_hd95_mm",
    ]
    assert all(
        float(rows["perfect"][k]) == (1.0 if k.endswith("dice") else 0.0) for k in rows["perfect"] if k != "case"
    )
    assert float(rows["missed"]["ET_dice"]) == 0.0 and float(rows["missed"]["ET_hd95_mm"]) == 373.13
    assert float(rows["missed"]["TC_dice"]) == 1.0 and float(rows["missed"]["WT_dice"]) == 1.0
    assert float(rows["none"]["ET_dice"]) == 1.0 and float(rows["none"]["ET_hd95_mm"]) == 0.0
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
    assert header == (
        "case,whole tumor_dice,whole tumor_hd95_mm,tumor core_dice,tumor core_hd95_mm,"
        "enhancing tumor_dice,enhancing tumor_hd95_mm"
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
