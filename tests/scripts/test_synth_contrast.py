"""The synthetic-contrast check (``python -m scripts.experiments.synth_contrast``): its test family is
what its docstring says (each contrast's tissue order, the source scan's background, thick slabs
on a new grid with their labels), it is a function of its seed, the tables and the bar read the
scores right, and (``slow``) the whole check runs on the shared demo data.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from brainseg.config import load_config
from scripts.experiments.synth_contrast import family, report

REPO = Path(__file__).resolve().parents[2]
SHAPE = (20, 22, 18)


def labels_of(shape=SHAPE) -> np.ndarray:
    """A layered sphere: CSF shell, grey matter, white matter core; background around."""
    grid = np.indices(shape, dtype=np.float64)
    r = np.sqrt(sum(((g - s / 2.0) / (0.42 * s)) ** 2 for g, s in zip(grid, shape)))
    labels = np.zeros(shape, np.uint8)
    labels[r < 1.0], labels[r < 0.8], labels[r < 0.55] = 1, 2, 3
    return labels


def tissue_means(image: np.ndarray, labels: np.ndarray) -> list[float]:
    core = labels.copy()
    for k in (1, 2, 3):  # away from the partial-volume rims
        core[(labels == k) & ~ndimage.binary_erosion(labels == k)] = 255
    return [float(image[core == k].mean()) for k in (1, 2, 3)]


@pytest.mark.parametrize("stripped", [True, False])
def test_each_contrast_has_its_tissue_order_and_the_source_scans_background(stripped):
    labels = labels_of()
    orders = {"t2": [0, 1, 2], "pd": [0, 1, 2], "flair": [1, 2, 0]}  # brightest first: CSF, grey, white = 0, 1, 2
    for contrast, order in orders.items():
        image, settings = family.contrast_scan(np.random.default_rng(1), labels, contrast, stripped)
        assert image.shape == SHAPE and image.dtype == np.float32
        assert list(np.argsort(tissue_means(image, labels))[::-1]) == order, contrast
        outside = image[labels == 0]
        if stripped:
            assert np.all(outside == 0) and settings["skull_stripped"] and family.skull_stripped(image)
        else:
            assert np.all(outside > 0) and not family.skull_stripped(image)  # Rician noise and an offset
    a, _ = family.contrast_scan(np.random.default_rng(1), labels, "t2", stripped)
    b, _ = family.contrast_scan(np.random.default_rng(2), labels, "t2", stripped)
    assert np.array_equal(a, family.contrast_scan(np.random.default_rng(1), labels, "t2", stripped)[0])
    assert not np.array_equal(a, b)


def test_slab_weights_average_the_voxels_each_slab_covers():
    w = family.slab_weights(10, 1.0, 4.0)
    assert w.shape == (3, 10) and np.allclose(w.sum(1), 1.0)
    assert np.allclose(w[0, :4], 0.25) and np.allclose(w[2, 8:], 0.5)  # the last slab is cut short
    w = family.slab_weights(5, 1.5, 4.5)
    assert np.allclose(w[0], [1 / 3, 1 / 3, 1 / 3, 0, 0]) and np.allclose(w[1], [0, 0, 0, 0.5, 0.5])


def test_thick_slices_lie_on_a_new_grid_with_the_majority_label():
    affine = np.array([[0.0, 0.0, -1.2, 30.0], [1.0, 0.0, 0.0, -10.0], [0.0, 1.0, 0.0, 5.0], [0, 0, 0, 1]])
    labels = np.zeros((4, 5, 12), np.uint8)
    labels[:, :, 3:9] = 2
    labels[:, :, 5] = 1  # one thin slice of another label inside a slab: outvoted
    image = np.broadcast_to(np.arange(12, dtype=np.float32), labels.shape).copy()
    thick, lab, new = family.thicken(image, labels, affine, axis=2, thickness=4.8)  # 4 fine slices per slab
    assert thick.shape == lab.shape == (4, 5, 3)
    assert np.allclose(thick[0, 0], [1.5, 5.5, 9.5])
    assert lab[0, 0].tolist() == [0, 2, 0]
    assert np.allclose(new[:3, 2], affine[:3, 2] * 4) and np.allclose(new[:3, :2], affine[:3, :2])
    # slab 0's centre is the centre of fine slices 0-3
    assert np.allclose(new @ [0, 0, 0, 1], affine @ [0, 0, 1.5, 1])


def write_demo(root: Path) -> Path:
    """A demo-like folder with two held-out cases: one skull-stripped, one with a noisy background."""
    labels = labels_of()
    affine = np.diag([1.5, 1.2, 1.8, 1.0])
    rng = np.random.default_rng(0)
    for i, stripped in enumerate((True, False)):
        t1 = np.choose(labels, [0.0, 0.3, 0.6, 0.9]) + 0.02 * rng.standard_normal(SHAPE)
        t1 = np.where(labels > 0, t1, 0.0) if stripped else np.abs(t1) + 0.05
        for folder, name, data in (("imagesTs", f"d{i}_0000", t1.astype(np.float32)), ("labelsTs", f"d{i}", labels)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data, affine), str(root / folder / f"{name}.nii.gz"))
    return root


def test_the_family_holds_every_set_for_every_held_out_case_and_is_a_function_of_its_seed(tmp_path):
    demo = write_demo(tmp_path / "demo")
    manifest = family.make_family(demo, tmp_path / "a", seed=5, log=lambda msg: None)
    assert json.loads((tmp_path / "a" / "manifest.json").read_text()) == manifest
    assert list(manifest["sets"]) == list(family.SETS)
    for name in family.SETS:
        for entry in manifest["sets"][name]:
            img = nib.load(str(tmp_path / "a" / name / "images" / f"{entry['case_id']}_0000.nii.gz"))
            lab = nib.load(str(tmp_path / "a" / name / "labels" / f"{entry['case_id']}.nii.gz"))
            assert img.shape == lab.shape == tuple(entry["shape"]) and np.allclose(img.affine, lab.affine)
            if name.startswith("thick"):
                zooms = img.header.get_zooms()
                assert zooms[entry["axis"]] == pytest.approx(entry["thickness_mm"], abs=1e-4)
                assert 4.0 <= entry["thickness_mm"] <= 6.0
            else:
                assert img.shape == SHAPE
    t1 = np.asarray(nib.load(str(tmp_path / "a" / "t1" / "images" / "d0_0000.nii.gz")).dataobj)
    source = np.asarray(nib.load(str(demo / "imagesTs" / "d0_0000.nii.gz")).dataobj)
    assert np.array_equal(t1, source)  # the real T1 style: the held-out scan itself
    assert [e["skull_stripped"] for e in manifest["sets"]["t2"]] == [True, False]
    again = family.make_family(demo, tmp_path / "b", seed=5, log=lambda msg: None)
    other = family.make_family(demo, tmp_path / "c", seed=6, log=lambda msg: None)
    assert again["sets"] == manifest["sets"] and other["sets"] != manifest["sets"]
    flair = [np.asarray(nib.load(str(tmp_path / d / "flair" / "images" / "d1_0000.nii.gz")).dataobj) for d in "ab"]
    assert np.array_equal(*flair)


def fake_report(scores: dict[str, dict[str, float]]) -> dict:
    results = {run: {name: {"mean": v} for name, v in sets.items()} for run, sets in scores.items()}
    return {"settings": {"seeds": [0, 1], "arms": ["default", "synth"]}, "results": results}


def test_the_table_and_the_bar_read_the_scores():
    good = {name: 0.85 for name in family.SETS}
    scores = {
        "default_s0": {**{name: 0.3 for name in family.SETS}, "t1": 0.90},
        "default_s1": {**{name: 0.4 for name in family.SETS}, "t1": 0.92},
        "synth_s0": {**good, "t1": 0.90},
        "synth_s1": {**good, "t1": 0.89},
    }
    rep = fake_report(scores)
    check = report.bar(rep)
    assert check["met"] and check["t1_loss"] == pytest.approx(0.015)
    text = report.tables(rep)
    assert "| T2-like | 0.300 / 0.400 | **0.350** | 0.850 / 0.850 | **0.850** | +0.500 |" in text
    assert ": met." in text
    scores["synth_s1"]["t1"] = 0.85  # loses 0.035 on T1
    assert not report.bar(fake_report(scores))["met"]
    scores["synth_s1"]["t1"], scores["synth_s1"]["flair"] = 0.89, 0.70  # FLAIR mean 0.775
    assert not report.bar(fake_report(scores))["met"]


@pytest.mark.slow
def test_the_quick_check_runs_end_to_end(demo_data, tmp_path):
    out = tmp_path / "sc"
    res = subprocess.run(
        [sys.executable, "-m", "scripts.experiments.synth_contrast", "--out", str(out), "--data", str(demo_data)]
        + ["--quick", "--minutes", "0.05", "--set", "train.amp=none"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=1800,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["results"]) == {"default_s0", "synth_s0"}
    for run in rep["results"].values():
        assert set(run) == set(family.SETS) and all(r["n_cases"] == 1 for r in run.values())
    assert "| T2-like |" in (out / "report.md").read_text()
    # --set reaches every arm's training, after the arm's own override
    for arm, share in (("default", 0.0), ("synth", 0.5)):
        config = load_config(out / "runs" / f"{arm}_s0" / "config.yaml")
        assert config.train.amp == "none" and config.train.synth == share
    assert rep["settings"]["overrides"] == ["train.amp=none"]
