"""The generalisation check (``python -m scripts.experiments.generalisation``): its shifted scans are
what their settings say, its scores are those of the masks, and the whole check runs.

The shifted set is written to real files once per module (the six scans of the issue and
one drawn seventh, ~25 s on one core) and read back with nibabel; the end-to-end run
(``slow``) trains both pipelines for a few seconds on (a copy of) the session's shared
demo data set (conftest.py: 3 training subjects, 1 held out).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainseg.demo.template import orientation_matrix
from brainseg.evaluate.metrics import dice
from scripts.benchmark.compare import mask_agreement
from scripts.experiments.generalisation import shifted
from scripts.experiments.generalisation.run import score

REPO = Path(__file__).resolve().parents[2]

N_SCANS = 7  # the six fixed scans and one drawn from the ranges
SEED = 4321


@pytest.fixture(scope="module")
def shifted_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("shifted")
    manifest = shifted.make_shifted_set(out, N_SCANS, SEED, log=lambda msg: None)
    return out, manifest


def _load(folder: Path, case: dict) -> tuple[nib.Nifti1Image, np.ndarray, nib.Nifti1Image, np.ndarray]:
    img = nib.load(str(folder / "images" / f"{case['case_id']}_0000.nii.gz"))
    lab = nib.load(str(folder / "labels" / f"{case['case_id']}.nii.gz"))
    return img, np.asarray(img.dataobj, dtype=np.float32), lab, np.asarray(lab.dataobj)


def test_settings_lie_outside_the_demo_ranges():
    cases = [shifted.scan_settings(0, i) for i in range(6)]
    assert {c.scale for c in cases} == {1.0, 400.0, 2500.0}
    assert {c.orientation for c in cases} >= {"RAS", "ASL", "LPS", "LAS", "PIR"}
    assert {tuple(c.spacing) for c in cases} >= {
        (1.0, 1.0, 1.0),
        (2.0, 2.0, 2.0),
        (1.5, 1.5, 1.5),
        (1.2, 1.0, 2.0),
        (1.4, 1.4, 1.4),
    }
    assert max(c.tilt_degrees for c in cases) == 12.0  # the demo tilts 2-7 degrees
    assert sum(c.skull_stripped for c in cases) == 1  # most backgrounds are noise
    assert all(0.6 <= c.gamma <= 1.6 and c.bias_std >= 0.2 and c.noise > 0 for c in cases)
    assert min(c.gamma for c in cases) < 0.75 and max(c.gamma for c in cases) > 1.35  # beyond the demo's gamma
    drawn = [shifted.scan_settings(0, i) for i in range(6, 12)]
    assert all(0.6 <= c.gamma <= 1.6 and 1.0 <= min(c.spacing) and max(c.spacing) <= 2.0 for c in drawn)
    assert shifted.scan_settings(0, 8) == shifted.scan_settings(0, 8) != shifted.scan_settings(1, 8)


def test_each_scan_has_the_grid_its_settings_say(shifted_set):
    folder, manifest = shifted_set
    assert len(manifest["cases"]) == N_SCANS and manifest["seed"] == SEED
    for case in manifest["cases"]:
        img, _, lab, _ = _load(folder, case)
        assert img.shape == tuple(case["shape"]) == lab.shape
        assert np.array_equal(img.affine, lab.affine)
        assert "".join(nib.aff2axcodes(img.affine)) == case["orientation"], case["case_id"]
        assert np.allclose(img.header.get_zooms()[:3], case["spacing"], atol=1e-4), case["case_id"]
        assert np.allclose(np.linalg.norm(img.affine[:3, :3], axis=0), case["spacing"], atol=1e-4)
        assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
        # The tilt: the rotation between the grid's axes and the plain orientation's.
        direction = img.affine[:3, :3] / np.asarray(case["spacing"])[None, :]
        rot = direction @ orientation_matrix(case["orientation"]).T
        skew = rot - rot.T
        sine = np.linalg.norm([skew[2, 1], skew[0, 2], skew[1, 0]]) / 2
        angle = math.degrees(math.atan2(sine, (np.trace(rot) - 1) / 2))
        assert angle == pytest.approx(case["tilt_degrees"], abs=0.01), case["case_id"]
        # The field of view holds the whole brain: no label on the outer faces.
        labels = np.asarray(lab.dataobj)
        faces = [labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]]
        assert not any(f.any() for f in faces), case["case_id"]
    assert {c["tilt_degrees"] for c in manifest["cases"]} >= {0.0, 12.0}


def test_labels_are_the_demo_classes_with_brain_sized_volumes(shifted_set):
    folder, manifest = shifted_set
    for case in manifest["cases"]:
        img, _, _, labels = _load(folder, case)
        assert labels.dtype == np.uint8 and set(np.unique(labels).tolist()) == {0, 1, 2, 3}, case["case_id"]
        ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
        litres = {v: float((labels == v).sum()) * ml / 1000.0 for v in (1, 2, 3)}
        assert 1.0 <= sum(litres.values()) <= 1.9, (case["case_id"], litres)
        assert 0.05 <= litres[1] <= 0.4 and 0.5 <= litres[2] <= 1.1 and 0.3 <= litres[3] <= 0.8, litres
        assert sum(litres.values()) == pytest.approx(case["brain_litres"], abs=1e-3)


def test_backgrounds_are_noise_except_the_skull_stripped_case(shifted_set):
    folder, manifest = shifted_set
    kinds = [case["skull_stripped"] for case in manifest["cases"]]
    assert kinds.count(False) >= len(kinds) - 2 and True in kinds
    for case in manifest["cases"]:
        _, image, _, labels = _load(folder, case)
        outside = labels == 0
        zeros = image == 0
        if case["skull_stripped"]:
            assert np.array_equal(zeros, outside), case["case_id"]  # exactly 0 outside the brain, never inside
            continue
        assert zeros.mean() < 0.01, case["case_id"]
        # Rician noise where there is no signal is Rayleigh: median sigma * sqrt(2 ln 2), above the offset.
        sigma, offset = case["noise_sigma"], case["offset"] * case["scale"]
        far = image[_far_from_brain(labels)]
        assert np.median(far) - offset == pytest.approx(sigma * math.sqrt(2 * math.log(2)), rel=0.1), case["case_id"]
        # The noise is the settings' share of white matter, which is where the scale puts it.
        wm = float(np.median(image[labels == 3]))
        assert wm == pytest.approx(case["white_matter_median"], rel=1e-5)
        assert sigma / (wm - offset) == pytest.approx(case["noise"], rel=0.1), case["case_id"]
        assert 0.2 * case["scale"] <= wm - offset <= 2.0 * case["scale"]


def _far_from_brain(labels: np.ndarray, voxels: int = 4) -> np.ndarray:
    """The background more than ``voxels`` from any brain voxel (no partial-volume signal)."""
    from scipy.ndimage import binary_dilation

    return ~binary_dilation(labels > 0, iterations=voxels)


def test_a_matching_set_is_reused(shifted_set):
    folder, manifest = shifted_set
    first = folder / "images" / f"{manifest['cases'][0]['case_id']}_0000.nii.gz"
    stamp = first.stat().st_mtime_ns
    messages = []
    again = shifted.make_shifted_set(folder, N_SCANS, SEED, log=messages.append)
    assert again == manifest and first.stat().st_mtime_ns == stamp and "reusing" in messages[0]


def _write_like(label_file: Path, data: np.ndarray, out: Path, shift_mm: float = 0.0) -> None:
    ref = nib.load(str(label_file))
    affine = ref.affine.copy()
    affine[0, 3] += shift_mm
    nib.save(nib.Nifti1Image(data.astype(np.uint8), affine, ref.header), str(out))


def test_scores_are_those_of_planted_masks(shifted_set, tmp_path: Path):
    """Masks equal to the labels score Dice 1; one with white matter relabelled grey matter
    scores exactly what its voxel counts say (``brainseg evaluate`` run for real)."""
    folder, manifest = shifted_set
    images, labels = folder / "images", folder / "labels"
    masks = tmp_path / "masks" / "shifted"
    masks.mkdir(parents=True)
    ids = [c["case_id"] for c in manifest["cases"][:2]]
    for cid in ids:
        _write_like(
            labels / f"{cid}.nii.gz",
            np.asarray(nib.load(str(labels / f"{cid}.nii.gz")).dataobj),
            masks / f"{cid}.nii.gz",
        )
    planted = np.asarray(nib.load(str(labels / f"{ids[1]}.nii.gz")).dataobj)
    n_grey, n_white = int((planted == 2).sum()), int((planted == 3).sum())
    _write_like(labels / f"{ids[1]}.nii.gz", np.where(planted == 3, 2, planted), masks / f"{ids[1]}.nii.gz")
    sub = tmp_path / "images"
    sub.mkdir()
    for cid in ids:  # score the two planted cases only
        (sub / f"{cid}_0000.nii.gz").symlink_to(images / f"{cid}_0000.nii.gz")
    ref_dir = tmp_path / "labels"
    ref_dir.mkdir()
    for cid in ids:
        (ref_dir / f"{cid}.nii.gz").symlink_to(labels / f"{cid}.nii.gz")

    result = score("test", {"shifted": (sub, ref_dir)}, tmp_path / "masks", tmp_path / "out")["shifted"]
    assert result["n_cases"] == 2 and not result["failed"] and result["geometry"]["ok"]
    assert result["per_case"][ids[0]] == {"CSF": 1.0, "grey matter": 1.0, "white matter": 1.0, "mean": 1.0}
    grey = 2 * n_grey / (2 * n_grey + n_white)
    case = result["per_case"][ids[1]]
    assert case["CSF"] == 1.0 and case["white matter"] == 0.0
    assert case["grey matter"] == pytest.approx(grey, abs=1e-6)
    assert result["dice"] == pytest.approx({"CSF": 1.0, "grey matter": (1 + grey) / 2, "white matter": 0.5}, abs=1e-6)
    assert result["mean"] == pytest.approx((1.0 + (1 + grey) / 2 + 0.5) / 3, abs=1e-6)


def test_a_mask_off_its_scans_grid_is_caught(shifted_set, tmp_path: Path):
    from scripts.experiments.generalisation.report import mask_geometry

    folder, manifest = shifted_set
    ids = [c["case_id"] for c in manifest["cases"]]
    for k, cid in enumerate(ids[:-1]):  # the last case has no mask; the first is 0.5 mm off
        label = folder / "labels" / f"{cid}.nii.gz"
        _write_like(label, np.asarray(nib.load(str(label)).dataobj), tmp_path / f"{cid}.nii.gz", 0.5 if k == 0 else 0)
    geometry = mask_geometry(folder / "images", tmp_path)
    assert not geometry["ok"]
    cases = geometry["cases"]
    assert cases[ids[0]]["ok"] is False and cases[ids[0]]["affine_max_abs_diff"] == pytest.approx(0.5, abs=1e-4)
    assert cases[ids[-1]] == {"ok": False, "problem": "no mask"}
    assert all(cases[cid]["ok"] and cases[cid]["values"] == [0, 1, 2, 3] for cid in ids[1:-1])


@pytest.mark.slow
def test_the_check_runs_end_to_end(tmp_path: Path, demo_data_copy: Path):
    """Both pipelines trained for a few seconds: the report's every Dice and agreement is the one
    the masks it wrote give, and every mask lies on its scan's grid."""
    demo = demo_data_copy
    out, extra_json = tmp_path / "run", tmp_path / "extra.json"
    cmd = [sys.executable, "-m", "scripts.experiments.generalisation", "--out", str(out), "--data", str(demo)]
    cmd += ["--minutes", "0.05", "--n-shifted", "1", "--json", str(extra_json), "--no-mirror"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert json.loads(extra_json.read_text()) == report
    assert report["command"].startswith("python -m scripts.experiments.generalisation --out")
    assert "| shifted scans | MONAI reference |" in res.stdout and (out / "report.md").is_file()
    assert [c["case_id"] for c in report["shifted_cases"]] == ["shifted_000"]
    sets = {
        "demo_heldout": (demo / "imagesTs", demo / "labelsTs"),
        "shifted": (out / "shifted" / "images", out / "shifted" / "labels"),
    }
    names = {1: "CSF", 2: "grey matter", 3: "white matter"}
    for pipeline in ("brainseg", "monai"):
        assert report["training"][pipeline]["steps"] >= 1
        for key, (images, labels) in sets.items():
            r = report["results"][pipeline][key]
            scans = sorted(images.glob("*_0000.nii.gz"))
            assert r["n_cases"] == len(scans) == 1 and not r["failed"]
            assert r["geometry"]["ok"], r["geometry"]
            for scan in scans:
                cid = scan.name.replace("_0000.nii.gz", "")
                src = nib.load(str(scan))
                mask_img = nib.load(str(out / "masks" / pipeline / key / f"{cid}.nii.gz"))
                assert mask_img.shape == src.shape and np.allclose(mask_img.affine, src.affine, atol=1e-5)
                mask = np.asarray(mask_img.dataobj)
                ref = np.asarray(nib.load(str(labels / f"{cid}.nii.gz")).dataobj)
                expected = {n: dice(mask == v, ref == v) for v, n in names.items()}
                assert r["per_case"][cid] == pytest.approx(
                    {**expected, "mean": np.mean(list(expected.values()))}, abs=1e-6
                )
            per_label = {n: np.mean([r["per_case"][c][n] for c in r["per_case"]]) for n in names.values()}
            assert r["dice"] == pytest.approx(per_label, abs=1e-6)
    for cid, value in report["agreement_shifted"].items():
        a = np.asarray(nib.load(str(out / "masks" / "brainseg" / "shifted" / f"{cid}.nii.gz")).dataobj)
        b = np.asarray(nib.load(str(out / "masks" / "monai" / "shifted" / f"{cid}.nii.gz")).dataobj)
        assert value == pytest.approx(mask_agreement(a, b, [0, 1, 2, 3])["agreement"]) == pytest.approx(np.mean(a == b))


def test_the_training_note_names_the_config_or_the_plan(tmp_path: Path):
    from scripts.experiments.generalisation.run import brainseg_training

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,step,elapsed_minutes\n1,50,0.4\n2,100,0.8\n")
    record = brainseg_training(run)
    assert record["steps"] == 100 and record["minutes"] == 0.8
    assert record["note"].startswith("configs/demo.yaml, 100 steps in 0.8 min")
    (run / "plan.yaml").write_text("# plan\n")
    assert brainseg_training(run)["note"].startswith("no config (its plan.yaml), 100 steps")
    assert brainseg_training(tmp_path / "none")["steps"] is None
