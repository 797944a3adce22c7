"""The trust experiment (``python -m scripts.experiments.trust``): its damaged test set is what its
manifest says, on the labels' exact grids, and the driver runs the CLI end to end.

The test set is written once per module from two small synthetic cases (a two-label sphere on an
anisotropic, shifted grid, background exactly 0) and read back with nibabel; the end-to-end run
(``slow``) predicts it with a tiny two-fold "run folder" (the ``tiny_checkpoint`` copied into
``fold_0`` and ``fold_1``), which has no quality calibration.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from brainseg.evaluate.metrics import dice
from brainseg.io.images import Geometry, read_image, read_label, write_image
from scripts.experiments.trust import degrade, report
from tests.conftest import env

REPO = Path(__file__).resolve().parents[2]
SEED = 11
SHAPE = (20, 22, 24)
AFFINE = np.array([[1.0, 0, 0, -10.0], [0, 1.2, 0, 4.0], [0, 0, 1.5, -7.0], [0, 0, 0, 1]])
OUTER, INNER = 100.0, 160.0  # mean intensity of label 1 (a shell) and label 2 (its core)


def write_cases(data: Path, n: int = 2, affine: np.ndarray = AFFINE, shape=SHAPE) -> Path:
    """``n`` one-channel cases in nnU-Net's held-out layout: label 1 a shell, 2 its core, 0 outside (image 0 there)."""
    grid = np.indices(shape, dtype=np.float64)
    for i in range(n):
        rng = np.random.default_rng(i)
        r = np.sqrt(sum(((g - (s - 1) / 2 - i) / (s / 2 - 2)) ** 2 for g, s in zip(grid, shape)))
        labels = (r < 1.0).astype(np.uint8) + (r < 0.55)
        image = np.select([labels == 1, labels == 2], [OUTER, INNER], 0.0) + 4.0 * rng.standard_normal(shape) * (
            labels > 0
        )
        geom = Geometry(shape=shape, affine=affine)
        write_image(data / "imagesTs" / f"s{i}_0000.nii.gz", image.astype(np.float32), geom)
        write_image(data / "labelsTs" / f"s{i}.nii.gz", labels, geom)
    return data


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("held_out")
    (data / "imagesTs").mkdir()
    (data / "labelsTs").mkdir()
    return write_cases(data)


@pytest.fixture(scope="module")
def test_set(source: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("trust") / "test"
    return out, degrade.make_test_set(source, out, SEED, log=lambda msg: None)


def _read(folder: Path, cid: str) -> tuple[Geometry, np.ndarray, Geometry, np.ndarray]:
    """(scan grid, scan, label grid, label) of one case of a test-set folder."""
    image, geom = read_image(folder / "imagesTs" / f"{cid}_0000.nii.gz")
    labels, label_geom = read_label(folder / "labelsTs" / f"{cid}.nii.gz")
    return geom, image.astype(np.float64), label_geom, labels


def _case(manifest: dict, source: str, suffix: str) -> dict:
    return next(c for c in manifest["cases"] if c["case"] == f"{source}_{suffix}")


def test_every_variant_of_every_case_is_written_on_its_labels_grid(test_set):
    folder, manifest = test_set
    suffixes = [d.suffix for d in degrade.DAMAGES]
    assert [c["case"] for c in manifest["cases"]] == [f"s{i}_{s}" for i in range(2) for s in suffixes]
    assert json.loads((folder / degrade.VARIANTS_JSON).read_text()) == manifest
    assert {c["degradation"] for c in manifest["cases"]} == {"clean", "noise", "bias", "lowres", "contrast"}
    for case in manifest["cases"]:
        img, image, lab, _ = _read(folder, case["case"])
        assert img.shape == lab.shape and np.allclose(img.affine, lab.affine, atol=1e-6), case["case"]
        assert np.isfinite(image).all()
        damage = next(d for d in degrade.DAMAGES if d.suffix == case["case"].split("_")[1])
        if damage.kind != "clean":
            assert damage.low <= case["level"] <= damage.high, case
        if damage.kind != "lowres":
            assert img.shape == SHAPE and np.allclose(img.affine, AFFINE), case["case"]


def test_the_clean_copy_is_the_input(source, test_set):
    folder, _ = test_set
    for i in range(2):
        assert (folder / "imagesTs" / f"s{i}_clean_0000.nii.gz").read_bytes() == (
            source / "imagesTs" / f"s{i}_0000.nii.gz"
        ).read_bytes()
        assert (folder / "labelsTs" / f"s{i}_clean.nii.gz").read_bytes() == (
            source / "labelsTs" / f"s{i}.nii.gz"
        ).read_bytes()


def test_the_same_seed_writes_the_same_set_and_another_seed_another(source, test_set, tmp_path):
    folder, manifest = test_set
    again = degrade.make_test_set(source, tmp_path / "again", SEED, log=lambda msg: None)
    assert again["cases"] == manifest["cases"]
    for case in manifest["cases"]:
        assert np.array_equal(_read(folder, case["case"])[1], _read(tmp_path / "again", case["case"])[1])
    other = degrade.make_test_set(source, tmp_path / "other", SEED + 1, log=lambda msg: None)
    assert [c["level"] for c in other["cases"]] != [c["level"] for c in manifest["cases"]]
    messages: list[str] = []
    assert degrade.make_test_set(source, folder, SEED, log=messages.append) == manifest and "reusing" in messages[0]


def test_low_resolution_has_thick_slices_and_the_label_sampled_on_the_same_grid(source, test_set):
    folder, manifest = test_set
    for i in range(2):
        for suffix in ("lowres1", "lowres2"):
            case = _case(manifest, f"s{i}", suffix)
            img, image, lab, labels = _read(folder, case["case"])
            axis, spacing = case["axis"], np.linalg.norm(img.affine[:3, :3], axis=0)
            expected = np.linalg.norm(AFFINE[:3, :3], axis=0)
            expected[axis] = case["level"]
            assert np.allclose(spacing, expected, atol=1e-4) and np.allclose(lab.affine, img.affine)
            assert img.header is not None and np.allclose(img.header.get_zooms()[:3], expected, atol=1e-4)
            assert img.shape[axis] == round(SHAPE[axis] * np.linalg.norm(AFFINE[:3, axis]) / case["level"])
            # The same extent: the grid's centre stays where the source's was.
            centre = img.affine @ np.array([*((np.array(img.shape) - 1) / 2), 1.0])
            assert np.allclose(centre, AFFINE @ np.array([*((np.array(SHAPE) - 1) / 2), 1.0]), atol=1e-6)
            # Nearest neighbour: each new voxel holds the source label at the nearest source voxel.
            src = read_label(source / "labelsTs" / f"s{i}.nii.gz")[0]
            ijk = np.indices(img.shape).reshape(3, -1)
            old = np.linalg.solve(
                AFFINE[:3, :3], img.affine[:3, :3] @ ijk + (img.affine[:3, 3] - AFFINE[:3, 3])[:, None]
            )
            old = np.clip(np.rint(old).astype(int), 0, np.array(SHAPE)[:, None] - 1)
            assert np.mean(src[tuple(old)] == labels.ravel()) > 0.99
            # The scan: the source's tissues still sit under the resampled label.
            assert np.mean(image[labels == 2]) > np.mean(image[labels == 1]) > 4 * np.mean(image[labels == 0])


def test_rician_noise_lifts_the_background_to_its_rayleigh_floor(source, test_set):
    folder, manifest = test_set
    for suffix in ("noise1", "noise2"):
        case = _case(manifest, "s0", suffix)
        _, image, _, labels = _read(folder, case["case"])
        _, clean, _, _ = _read(source, "s0")
        assert not clean[labels == 0].any() and (image[labels == 0] > 0).all()
        assert case["sigma"] == pytest.approx(case["level"] * clean[labels > 0].mean(), rel=1e-4)
        # Where there is no signal the magnitude is Rayleigh: median sigma * sqrt(2 ln 2).
        assert np.median(image[labels == 0]) == pytest.approx(case["sigma"] * math.sqrt(2 * math.log(2)), rel=0.08)


def test_the_bias_field_spans_its_ratio_over_the_brain(source, test_set):
    folder, manifest = test_set
    _, clean, _, labels = _read(source, "s1")
    for suffix in ("bias1", "bias2"):
        case = _case(manifest, "s1", suffix)
        field = _read(folder, case["case"])[1][labels > 0] / clean[labels > 0]
        assert field.max() / field.min() == pytest.approx(case["level"], rel=1e-3)
        assert case["order"] in (2, 3)


def test_the_wrong_contrast_reverses_the_tissues_and_keeps_the_brains_values(source, test_set):
    folder, manifest = test_set
    _, clean, _, labels = _read(source, "s0")
    assert clean[labels == 1].mean() < clean[labels == 2].mean()
    mild = _read(folder, _case(manifest, "s0", "contrast1")["case"])[1]
    heavy = _read(folder, _case(manifest, "s0", "contrast2")["case"])[1]
    assert 0 < mild[labels == 2].mean() - mild[labels == 1].mean() < 0.7 * (INNER - OUTER)  # flatter, same order
    assert heavy[labels == 1].mean() > heavy[labels == 2].mean()  # reversed
    for remapped in (mild, heavy):
        assert np.array_equal(remapped[labels == 0], clean[labels == 0])
        assert np.isin(remapped[labels > 0], clean[labels > 0]).all()  # values read through the brain's quantiles


def test_targets_judge_planted_predictions():
    def row(case, kind, true, pred, flag):
        entry = {"case": case, "degradation": kind, "dice": {"ensemble": true, "fold_0": true - 0.01}}
        return {**entry, "dice_per_label": {"a": true}, "predicted": {"dice": {"a": pred}, "mean": pred, "flag": flag}}

    cases = [
        row("c_clean", "clean", 0.9, 0.85, False),
        row("d_clean", "clean", 0.88, 0.6, True),  # a false alarm on a clean case
        row("c_noise2", "noise", 0.5, 0.4, True),
        row("c_bias2", "bias", 0.65, 0.8, False),  # a miss
    ]
    check = report.own_check(cases)
    assert check["spearman"]["a"] == check["spearman"]["mean"] == pytest.approx(0.8)
    assert check["mae_mean"] == pytest.approx(np.mean([0.05, 0.28, 0.1, 0.15]))
    versus = report.ensemble_vs_folds(cases, ["fold_0"])
    assert versus["clean"]["met"] and versus["all"]["ensemble"] == pytest.approx(0.7325)
    raw = {"spearman": {"a": 0.75, "mean": 0.65, "p": {"a": 0.01}}, "mae": 0.1, "n": 4, "curve": [0.1, 0.2]}
    trust = report.flatten(raw)
    assert trust == {"spearman.a": 0.75, "spearman.mean": 0.65, "spearman.p.a": 0.01, "mae": 0.1, "n": 4}
    assert report.spearman_entries(trust) == {"spearman.a": 0.75, "spearman.mean": 0.65}
    judged = report.targets(cases, trust, check, 0.7, versus)
    assert judged["spearman >= 0.7 per label and mean"]["met"] is False
    assert "spearman.mean" in judged["spearman >= 0.7 per label and mean"]["value"]
    assert judged["every case under 0.7 flagged"] == {"value": "1/2 flagged; missed c_bias2", "met": False}
    assert judged["no clean case flagged"] == {"value": "1/2 flagged: d_clean", "met": False}
    assert judged["ensemble >= mean single fold (all cases)"]["met"] is True
    no_qc = report.targets([{**c, "predicted": None} for c in cases], None, check, 0.7, versus)
    assert no_qc["no clean case flagged"] == {"value": report.NO_QC, "met": None}


@pytest.mark.slow
def test_the_driver_predicts_evaluates_and_reports_every_case_and_model(tiny_checkpoint, tmp_path):
    run_dir = tmp_path / "run"
    for k in range(2):
        shutil.copytree(tiny_checkpoint.parent, run_dir / f"fold_{k}")
    data = tmp_path / "data"
    (data / "imagesTs").mkdir(parents=True)
    (data / "labelsTs").mkdir()
    write_cases(data, affine=np.diag([1.5, 1.5, 1.5, 1.0]), shape=(24, 24, 24))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "scripts.experiments.trust", "--run", str(run_dir), "--data", str(data)]
    cmd += ["--out", str(out), "--seed", "3"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO, env=env())
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-2000:]
    result = json.loads((out / "report.json").read_text())
    assert result["models"] == ["ensemble", "fold_0", "fold_1"]
    expected = [f"s{i}_{d.suffix}" for i in range(2) for d in degrade.DAMAGES]
    assert [c["case"] for c in result["cases"]] == expected
    variants = json.loads((out / "test" / degrade.VARIANTS_JSON).read_text())["cases"]
    for case, variant in zip(result["cases"], variants):
        assert {k: case[k] for k in variant} == variant
        assert all(case["dice"][m] is not None for m in result["models"]), case
    # The ensemble's Dice of a case is that of the mask it wrote.
    clean = result["cases"][0]
    mask = read_label(out / "pred_ensemble" / "s0_clean.nii.gz")[0]
    ref = read_label(out / "test" / "labelsTs" / "s0_clean.nii.gz")[0]
    assert clean["dice"]["ensemble"] == pytest.approx(np.mean([dice(mask == v, ref == v) for v in (1, 2)]), abs=1e-4)
    versus = result["ensemble_vs_folds"]
    assert versus["all"]["n_cases"] == 18 and versus["clean"]["n_cases"] == 2
    if not result["quality"]["quality_columns"]:  # the tiny model has no calibration
        assert "no quality columns" in result["quality"]["note"]
        assert result["targets"]["no clean case flagged"]["met"] is None
    assert "| s1_contrast2 |" in res.stdout and (out / "report.md").read_text().startswith("# Measured trust")

    # --skip-predict reuses the masks and reports the same cases.
    stamp = (out / "pred_fold_1" / "s1_noise2.nii.gz").stat().st_mtime_ns
    res = subprocess.run([*cmd, "--skip-predict"], capture_output=True, text=True, timeout=600, cwd=REPO, env=env())
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "pred_fold_1" / "s1_noise2.nii.gz").stat().st_mtime_ns == stamp
    assert json.loads((out / "report.json").read_text())["cases"] == result["cases"]


def test_rescore_rewrites_the_quality_columns_from_the_recorded_measures(tiny_checkpoint_factory, tmp_path):
    """A refitted score applied to a finished prediction: the qc columns change to the new
    score's values, every other column and the masks stay."""
    from brainseg.model.checkpoint import load_card, replace_card
    from scripts.experiments.trust.run import rescore
    from tests.infer.test_qc import SOFT_DICE

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_checkpoint_factory(quality=SOFT_DICE).parent, run_dir / "fold_0")
    data = tmp_path / "data"
    (data / "imagesTs").mkdir(parents=True)
    (data / "labelsTs").mkdir()
    write_cases(data, affine=np.diag([1.5, 1.5, 1.5, 1.0]), shape=(24, 24, 24))
    pred = tmp_path / "pred"
    cmd = [sys.executable, "-m", "brainseg", "predict", "--model", str(run_dir / "fold_0")]
    res = subprocess.run([*cmd, "--input", str(data / "imagesTs"), "--output", str(pred), "--no-progress"],
                         capture_output=True, text=True, timeout=300, cwd=REPO, env=env())  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    before = list(csv.DictReader(open(pred / "volumes.csv")))
    mask_stamp = (pred / "s0.nii.gz").stat().st_mtime_ns
    checkpoint = run_dir / "fold_0" / "checkpoint_final.pt"
    flat = [replace(c, weights=(0.0,) * len(c.weights), intercept=0.42) for c in SOFT_DICE.calibrations]
    replace_card(checkpoint, replace(load_card(checkpoint), quality=replace(SOFT_DICE, calibrations=tuple(flat))))
    assert rescore(run_dir, pred, 0.7) == 2
    after = list(csv.DictReader(open(pred / "volumes.csv")))
    assert [r["case"] for r in after] == [r["case"] for r in before] == ["s0", "s1"]
    for old, new in zip(before, after):
        assert {k: v for k, v in new.items() if not k.startswith("qc_")} == {
            k: v for k, v in old.items() if not k.startswith("qc_")
        }
        assert [new[k] for k in ("qc_dice_a", "qc_dice_b", "qc_dice_mean", "qc_flag")] == ["0.4200"] * 3 + ["1"]
        assert new["qc_dice_a"] != old["qc_dice_a"]
    assert (pred / "s0.nii.gz").stat().st_mtime_ns == mask_stamp
