"""The tumour-family check (``python -m scripts.experiments.tumour_family``): the independent family is a
BraTS 2021 folder that discovery reads as it is, its shape and intensity models do what its docstring
says, its held-out cases depend only on the seed, the report reads the scores and the label confusion
right, and (``slow``) the whole check runs end to end.
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

from brainseg.data.inputs import discover_inputs
from brainseg.data.layouts import discover_dataset
from brainseg.labels.regions import BRATS_2021
from scripts.experiments.tumour_family import family, report

REPO = Path(__file__).resolve().parents[2]
SEQUENCES = ("t1", "t1ce", "t2", "flair")


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("family") / "f"
    return out, family.make_family(out, n_train=2, n_test=2, seed=4, spacing=3.0, log=lambda msg: None)


def test_the_family_is_a_brats_2021_folder_that_training_and_prediction_read(made):
    out, manifest = made
    ds = discover_dataset(out / "train")
    assert ds.layout == "brats" and ds.channels == SEQUENCES and ds.regions == BRATS_2021
    assert [c.case_id for c in ds.train] == ["BraTS2021_50000", "BraTS2021_50001"] == manifest["train"]
    held_out = discover_inputs([out / "test"])
    assert [c.case_id for c in held_out] == ["BraTS2021_51000", "BraTS2021_51001"] == manifest["test"]
    assert not list((out / "test").rglob("*seg*")) and len(list((out / "test_labels").iterdir())) == 2
    assert json.loads((out / "manifest.json").read_text()) == manifest


def case_files(out: Path, cid: str, split: str) -> tuple[list[Path], Path]:
    folder = out / split / cid
    seg = folder / f"{cid}_seg.nii.gz" if split == "train" else out / "test_labels" / f"{cid}.nii.gz"
    return [folder / f"{cid}_{s}.nii.gz" for s in SEQUENCES], seg


@pytest.mark.parametrize("index", range(4))
def test_each_case_labels_on_its_images_grid_integer_scans_zero_outside_the_brain(made, index):
    out, manifest = made
    info = manifest["cases"][index]
    images, seg_path = case_files(out, info["id"], info["split"])
    seg, seg_affine = load(seg_path)
    loaded = [load(p) for p in images]
    brain = loaded[0][0] > 0
    for image, affine in loaded:
        assert image.shape == seg.shape and np.allclose(affine, seg_affine, atol=1e-6)
        assert np.array_equal(image > 0, brain) and np.array_equal(image, np.round(image))  # integer values
    assert "".join(nib.aff2axcodes(seg_affine)) == info["grid"]["orientation"]
    assert np.allclose(np.linalg.norm(seg_affine[:3, :3], axis=0), 3.0, atol=1e-4)
    values = set(np.unique(seg).tolist())
    assert values <= {0, 1, 2, 4} and 2 in values and not (seg > 0)[~brain].any()
    assert info["volume_mm3"]["oedema"] == pytest.approx(np.count_nonzero(seg == 2) * 27.0)
    assert (4 in values) == (info["kind"] != "non_enhancing")
    if info["split"] == "test":
        assert info["kind"] == family.held_out_kind(4, int(info["id"][-3:]))
    assert len({a["gamma"] for a in info["acquisition"].values()}) == 4  # each sequence its own


def test_held_out_cases_depend_only_on_the_seed(made, tmp_path):
    out, manifest = made
    again = family.make_family(tmp_path / "a", n_train=0, n_test=1, seed=4, spacing=3.0, log=lambda msg: None)
    other = family.make_family(tmp_path / "b", n_train=0, n_test=1, seed=5, spacing=3.0, log=lambda msg: None)
    assert again["test"] == ["BraTS2021_51000"] and not (tmp_path / "a" / "train").exists()
    for a, b in zip(*(case_files(root, "BraTS2021_51000", "test")[0] for root in (out, tmp_path / "a"))):
        np.testing.assert_array_equal(load(a)[0], load(b)[0])
    flair_a, flair_b = (load(case_files(root, "BraTS2021_51000", "test")[0][3])[0] for root in (out, tmp_path / "b"))
    assert flair_a.shape != flair_b.shape or not np.array_equal(flair_a, flair_b)  # another seed, another case
    assert other["cases"][0]["signal"] != again["cases"][0]["signal"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "x.txt").write_text("x")
    with pytest.raises(SystemExit, match="not a tumour family"):
        family.make_family(tmp_path / "mine", n_test=1, log=lambda msg: None)


def sphere(shape=(40, 40, 40), radius=12.0) -> np.ndarray:
    r = np.sqrt(sum((g - s / 2.0) ** 2 for g, s in zip(np.indices(shape, dtype=np.float32), shape)))
    return r < radius


def test_rims_from_the_blurred_core_are_thin_or_thick():
    core = sphere()
    surface = np.count_nonzero(core & ~ndimage.binary_erosion(core))
    thickness = {}
    for thick in (False, True):
        necrosis, sigma = family.blurred_necrosis(np.random.default_rng(0), core, thick)
        assert necrosis.any() and not (necrosis & ~core).any()
        thickness[thick] = np.count_nonzero(core & ~necrosis) / surface
        assert (1.2 <= sigma <= 2.0) if thick else (0.6 <= sigma <= 0.9)
    assert thickness[False] < 1.5 < 2.0 < thickness[True]


def test_the_core_is_one_lump_around_its_centre_and_oedema_grows_along_white_matter():
    rng = np.random.default_rng(1)
    core = family.level_set_core(rng, (40, 40, 40), np.array([20, 20, 20]), 18.0, 2.0)
    assert core[20, 20, 20] and ndimage.label(core, np.ones((3, 3, 3)))[1] == 1 and 50 < core.sum() < 40**3 / 2
    small = sphere(radius=4.0)
    wm = np.zeros(small.shape, np.float32)
    wm[:, :, 20:] = 1.0  # white matter on one side only
    oedema = family.grow_oedema(np.random.default_rng(2), small, wm, np.ones(small.shape, bool), steps=12)
    assert not (oedema & small).any()
    reach = {
        side: np.abs(np.argwhere(oedema[:, :, sl])[:, 2] - off).max()
        for side, sl, off in (("wm", np.s_[20:], 0), ("gm", np.s_[:20], 19))
    }
    assert reach["wm"] > reach["gm"] + 3


def test_polynomial_bias_spans_its_ratio_and_the_mass_effect_pushes_tissue_away():
    brain = sphere((30, 34, 28), 12.0)
    field = family.polynomial_bias(np.random.default_rng(3), brain, 1.8)
    assert float(field[brain].max() / field[brain].min()) == pytest.approx(1.8, rel=1e-4)
    coords = np.indices((30, 30, 30), dtype=np.float32)
    before = coords.copy()
    centre = np.array([15, 15, 15])
    family.mass_effect(coords, centre, 2.0, 0.3, 10.0)
    assert np.allclose(coords[:, 15, 15, 15], before[:, 15, 15, 15])
    near = coords[:, 15, 15, 18] - 15.0  # 3 voxels from the centre shows a point closer to it
    assert 0 < near[2] < 3.0 and np.allclose(near[:2], 0.0, atol=1e-4)
    assert np.allclose(coords[:, 0, 0, 0], before[:, 0, 0, 0], atol=1e-3)  # far away: unchanged
    kinds = {family.draw_kind(np.random.default_rng(s)) for s in range(60)}
    assert kinds == set(family.KINDS)
    for seed in range(5):  # any four consecutive held-out cases hold every kind
        assert {family.held_out_kind(seed, j) for j in range(3, 7)} == set(family.KINDS)


# --------------------------------------------------------------------------- the report


def test_label_confusion_and_recalls():
    ref = np.array([0, 1, 1, 1, 1, 2, 2, 4, 4, 4])
    pred = np.array([0, 1, 4, 4, 4, 2, 0, 4, 4, 1])
    conf = report.label_confusion(pred, ref)
    assert conf["necrosis"] == {"background": 0, "necrosis": 1, "oedema": 0, "enhancing": 3, "other": 0}
    assert report.recall(conf, 1) == 0.25 and report.recall(conf, 2) == 0.5
    assert report.recall(report.label_confusion(pred, np.zeros_like(ref)), 1) is None


def fake_metrics(value: float) -> dict[str, float]:
    return {f"{r}_{m}": value for r in report.REGIONS for m in report.METRICS}


def test_family_scores_over_seeds_and_the_bar():
    conf_a = report.label_confusion(np.array([1, 4, 2, 0]), np.array([1, 1, 2, 2]))  # necrosis 1/2, oedema 1/2
    conf_b = report.label_confusion(np.array([2, 2]), np.array([2, 2]))  # no necrosis, oedema 2/2
    metrics = {"a": fake_metrics(0.9), "b": fake_metrics(0.7), "z": fake_metrics(0.1)}
    res = report.family_scores(metrics, {"a": conf_a, "b": conf_b}, ["a", "b", "gone"], {"a": "ring"})
    assert res["n_cases"] == 2 and res["missing"] == ["gone"]
    assert res["regions"]["WT"]["dice"] == pytest.approx(0.8) and res["mean_dice"] == pytest.approx(0.8)
    assert res["necrosis_recall"] == 0.5 and res["oedema_recall"] == pytest.approx(3 / 4)  # pooled voxels
    assert res["per_case"]["b"]["necrosis_recall"] is None and res["per_case"]["a"]["kind"] == "ring"
    second = report.family_scores(
        {"a": fake_metrics(0.86), "b": fake_metrics(0.9)}, {"a": conf_a, "b": conf_b}, ["a", "b"], {}
    )
    results = {"demo_s0": {"family": res}, "demo_s1": {"family": second}}
    summary = {"demo": {"family": report.over_seeds(results, "demo", "family", [0, 1])}}
    wt = summary["demo"]["family"]["WT_dice"]
    assert wt["mean"] == pytest.approx(0.84) and wt["std"] == pytest.approx(0.04) and wt["per_seed"] == [0.8, 0.88]
    check = report.bar(summary)
    assert check["met"] is False and check["mean"] == pytest.approx(0.84)
    results["demo_s0"]["family"] = second
    assert report.bar({"demo": {"family": report.over_seeds(results, "demo", "family", [0, 1])}})["met"] is True
    text = report.tables({"bar": check, "summary": summary, "results": results, "commands": ["python -m x"]})
    assert "| demo (`demo-data --kind tumour`) | independent family | 0.840 ± 0.040 (0.800 / 0.880) |" in text
    assert "0.840 ± 0.040 (0.800 / 0.880)" in text and ": not met." in text and "    python -m x" in text
    assert "| demo_s1 | independent family | a | ? | 0.860 / 0.860 / 0.860 |" in text


@pytest.mark.slow
def test_the_quick_check_runs_end_to_end(tmp_path):
    out = tmp_path / "tf"
    res = subprocess.run(
        [sys.executable, "-m", "scripts.experiments.tumour_family", "--out", str(out), "--quick", "--minutes", "0.02"]
        + ["--set", "augment.per_channel=true"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=1800,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["results"]) == {"demo_s0"} and set(rep["results"]["demo_s0"]) == {"demo", "family"}
    for fam, res_f in rep["results"]["demo_s0"].items():
        assert res_f["n_cases"] == 1 and not res_f["missing"], fam
        assert set(res_f["regions"]) == {"WT", "TC", "ET"}
    assert (
        rep["bar"]["met"] is not None
        and rep["git"]["commit"]
        and rep["commands"][0].startswith("python -m brainseg demo-data")
    )
    assert "| demo_s0 | independent family | BraTS2021_51000 |" in (out / "report.md").read_text()
    # the arm's override reached the training: the run's config says so, and the report records it
    assert rep["settings"]["overrides"] == ["augment.per_channel=true"]
    assert "--set augment.per_channel=true" in next(c for c in rep["commands"] if " train " in c)
    assert "per_channel: true" in (out / "runs" / "demo_s0" / "config.yaml").read_text()


def test_the_post_hoc_component_check_scores_masks_with_and_without_the_rule(tmp_path: Path):
    """A mask that is its reference plus a core-less blob far from the tumour: as predicted the blob costs
    WT Dice and is a false-positive lesion; with core-less components removed every score is 1. The
    command prints one row per rule."""
    from scripts.experiments.tumour_family import components

    ref = np.zeros((40, 40, 40), np.uint8)
    ref[5:15, 5:15, 5:15] = 2
    ref[8:12, 8:12, 8:12] = 4
    ref[9:11, 9:11, 9:11] = 1
    mask = ref.copy()
    mask[28:34, 28:34, 28:34] = 2  # 216 voxels of oedema, no core
    labels, masks = tmp_path / "labels", tmp_path / "masks"
    labels.mkdir()
    masks.mkdir()
    case = f"BraTS2021_{family.TEST_BASE}"
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(ref, affine), str(labels / f"{case}.nii.gz"))
    nib.save(nib.Nifti1Image(mask, affine), str(masks / f"{case}.nii.gz"))
    scores = components.score_folder(masks, labels)
    wt = 2 * 1000 / (1000 + 1000 + 216)
    plain, cleaned = scores["as predicted"][case], scores["core-less components removed"][case]
    assert plain["WT"] == pytest.approx(wt) and plain["TC"] == 1.0 and plain["ET"] == 1.0
    assert plain["lesion WT"] == pytest.approx(0.5)  # one lesion found whole, one false-positive lesion
    assert cleaned == {"WT": 1.0, "TC": 1.0, "ET": 1.0, "mean": 1.0, "lesion WT": 1.0}
    assert components.family_of(case) == "independent" and components.family_of("BraTS2021_00012") == "demo"
    res = subprocess.run(
        [sys.executable, "-m", "scripts.experiments.tumour_family.components", str(masks), "--labels", str(labels)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr
    assert "| core-less components removed |" in res.stdout and "+0." in res.stdout
