"""The demo data set: generated once through the real CLI (the session's shared
``demo_data``, see conftest.py), then inspected as files.

The reference for geometry is the MNI template itself: a subject's label map, put
into world space through its own affine, must overlap the template's labels there
(the deformation is only a few mm), whatever the subject's voxel grid.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from brainseg.errors import BrainsegError
from brainseg.io.images import read_image, read_label

pytest.importorskip("nilearn")
demo = pytest.importorskip("brainseg.demo.tissue")
mni = pytest.importorskip("brainseg.demo.template")

N = 4  # subjects in the shared demo data set (conftest.DEMO_N)
EXPECTED_LABELS = {"background": 0, "CSF": 1, "grey matter": 2, "white matter": 3}


@pytest.fixture(scope="module")
def demo_dir(demo_data) -> Path:
    """``brainseg demo-data OUT --n 4`` (shared by the session; read only)."""
    return demo_data


@pytest.fixture(scope="module")
def meta(demo_dir) -> dict:
    return json.loads((demo_dir / "dataset.json").read_text())


@pytest.fixture(scope="module")
def cases(demo_dir, meta) -> list[dict]:
    """Every case listed in dataset.json, read back with brainseg.io.images."""
    loaded = []
    for entry in meta["training"] + meta["test"]:
        image, igeom = read_image(demo_dir / entry["image"])
        labels, lgeom = read_label(demo_dir / entry["label"])
        loaded.append({"entry": entry, "image": image, "igeom": igeom, "labels": labels, "lgeom": lgeom})
    return loaded


@pytest.fixture(scope="module")
def template():
    return mni.load_template()


# ----------------------------------------------------------------------------- layout


def test_cli_writes_the_data_set_and_names_it(demo_data_run):
    out, proc = demo_data_run
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout


def test_dataset_json(demo_dir, meta):
    n_test = max(1, math.ceil(N / 4))
    assert meta["channel_names"] == {"0": "T1"}
    assert meta["labels"] == EXPECTED_LABELS
    assert meta["file_ending"] == ".nii.gz"
    assert meta["numTraining"] == N - n_test == len(meta["training"])
    assert len(meta["test"]) == n_test
    assert isinstance(meta["name"], str) and meta["name"]
    assert isinstance(meta["description"], str) and meta["description"]
    for split, entries in (("Tr", meta["training"]), ("Ts", meta["test"])):
        listed_images = set()
        listed_labels = set()
        for entry in entries:
            image, label = demo_dir / entry["image"], demo_dir / entry["label"]
            assert image.is_file() and label.is_file()
            assert image.parent.name == f"images{split}" and label.parent.name == f"labels{split}"
            assert image.name == label.name.replace(".nii.gz", "_0000.nii.gz")
            listed_images.add(image.name)
            listed_labels.add(label.name)
        # Nothing on disk that dataset.json does not list.
        assert {p.name for p in (demo_dir / f"images{split}").iterdir()} == listed_images
        assert {p.name for p in (demo_dir / f"labels{split}").iterdir()} == listed_labels
    ids = [Path(e["label"]).name for e in meta["training"] + meta["test"]]
    assert len(set(ids)) == N


def test_every_label_in_every_case(cases):
    for case in cases:
        assert set(np.unique(case["labels"]).tolist()) == {0, 1, 2, 3}, case["entry"]


def test_label_geometry_equals_image_geometry(demo_dir, cases):
    for case in cases:
        ig, lg = case["igeom"], case["lgeom"]
        assert ig.shape == lg.shape == case["image"].shape == case["labels"].shape
        np.testing.assert_array_equal(ig.affine, lg.affine)
        assert (ig.qform_code, ig.sform_code) == (lg.qform_code, lg.sform_code)
        assert ig.sform_code > 0  # a real, coded transform, not the NIfTI default
        assert nib.load(str(demo_dir / case["entry"]["label"])).get_data_dtype() == np.uint8


def test_orientations_and_voxel_sizes_vary(cases):
    codes = ["".join(c["igeom"].axcodes) for c in cases]
    assert codes[0] == "RAS"
    assert len(set(codes)) > 1, codes
    for case in cases:
        spacing = np.array(case["igeom"].spacing)
        assert np.all(spacing > 0.95) and np.all(spacing < 2.25), spacing
        assert all(40 <= s <= 250 for s in case["igeom"].shape), case["igeom"].shape
    assert any(np.ptp(c["igeom"].spacing) > 0.05 for c in cases)  # anisotropic voxels


def test_some_subjects_are_oblique(cases):
    def tilt_degrees(affine: np.ndarray) -> float:
        direction = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
        return math.degrees(math.acos(min(1.0, float(np.abs(direction).max(axis=0).min()))))

    tilts = [tilt_degrees(c["igeom"].affine) for c in cases]
    assert tilts[0] < 0.01
    assert max(tilts) > 1.0, tilts


def test_images_are_t1_with_varied_intensities_and_both_background_kinds(cases):
    """Every third subject is skull-stripped (background exactly 0); the others carry Rician
    noise over the whole field of view (practically no exact zeros, background far below CSF)."""
    tops = []
    for index, case in enumerate(cases):
        image, labels = case["image"], case["labels"]
        assert image.dtype == np.float32
        assert np.all(image >= 0)
        if index % demo.SKULL_STRIPPED_EVERY == 0:
            assert np.all(image[labels == 0] == 0)  # background exactly 0
        else:
            assert np.mean(image == 0) < 0.001
            background, csf = np.median(image[labels == 0]), np.median(image[labels == 1])
            assert 0 < background < 0.5 * csf, (background, csf)
        means = [float(image[labels == k].mean()) for k in (1, 2, 3)]
        assert means[0] < means[1] < means[2], means  # T1 contrast: CSF < GM < WM
        tops.append(float(np.percentile(image[labels > 0], 99)))
    assert max(tops) > 1.2 * min(tops), tops  # each subject has its own intensity scale


def _template_labels_at(case: dict, template, labels_map: np.ndarray) -> np.ndarray:
    """The template's labels at the world position of each voxel centre of ``case``."""
    geom = case["lgeom"]
    idx = np.indices(geom.shape, dtype=np.float64).reshape(3, -1)
    world = geom.affine[:3, :3] @ idx + geom.affine[:3, 3:4]
    inv = np.linalg.inv(template.affine)
    vox = inv[:3, :3] @ world + inv[:3, 3:4]
    return map_coordinates(labels_map, vox, order=0, mode="constant", cval=0).reshape(geom.shape)


def test_labels_lie_where_the_template_anatomy_is(cases, template):
    """Through each file's own affine the anatomy lands on the template's (a few mm off)."""
    reference = mni.template_labels(template.t1, template.gm, template.wm)
    template_brain_ml = (reference > 0).sum() * abs(np.linalg.det(template.affine[:3, :3])) / 1000

    def dice(a: np.ndarray, b: np.ndarray) -> float:
        return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())

    for case in cases:
        labels = case["labels"]
        expected = _template_labels_at(case, template, reference)
        assert dice(labels > 0, expected > 0) > 0.85, case["entry"]
        assert dice(labels == 3, expected == 3) > 0.55, case["entry"]
        voxel_ml = np.prod(case["lgeom"].spacing) / 1000
        brain_ml = (labels > 0).sum() * voxel_ml
        assert 0.75 < brain_ml / template_brain_ml < 1.3, (brain_ml, template_brain_ml)


# ----------------------------------------------------------------------------- determinism


def _arrays(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for path in sorted(folder.glob("*/demo_*.nii.gz")):
        img = nib.load(str(path))
        out[path.name] = (np.asarray(img.dataobj), np.asarray(img.affine))
    return out


def test_same_seed_same_data(tmp_path, demo_dir):
    first = demo.make_demo_dataset(tmp_path / "a", n=2, seed=0, verbose=False)
    # Second run: into a copy of the CLI's 4-subject folder, which it must clean up.
    second = tmp_path / "b"
    shutil.copytree(demo_dir, second)
    demo.make_demo_dataset(second, n=2, seed=0, verbose=False)

    a, b = _arrays(first), _arrays(second)
    expected = ["demo_000.nii.gz", "demo_000_0000.nii.gz", "demo_001.nii.gz", "demo_001_0000.nii.gz"]
    assert sorted(a) == sorted(b) == expected
    for name in a:
        np.testing.assert_array_equal(a[name][0], b[name][0])
        np.testing.assert_array_equal(a[name][1], b[name][1])
    assert (first / "dataset.json").read_text() == (second / "dataset.json").read_text()
    # A subject does not depend on how many were made: the CLI's demo_000 is the same.
    cli = _arrays(demo_dir)
    np.testing.assert_array_equal(cli["demo_000_0000.nii.gz"][0], a["demo_000_0000.nii.gz"][0])
    np.testing.assert_array_equal(cli["demo_001.nii.gz"][0], a["demo_001.nii.gz"][0])


def test_other_seed_other_data(template):
    brain = (template.t1 > 0).astype(np.float32)
    image0, _, geom0, _ = demo.make_subject(template, brain, seed=0, index=1)
    image1, _, geom1, _ = demo.make_subject(template, brain, seed=1, index=1)
    same_grid = geom0.shape == geom1.shape and np.allclose(geom0.affine, geom1.affine)
    assert not (same_grid and np.array_equal(image0, image1))


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "n, n_test, seed", [(1, None, 0), (0, None, 0), (4, 4, 0), (4, 0, 0), (3, 5, 0), (4, None, -1)]
)
def test_bad_arguments_are_refused(tmp_path, n, n_test, seed):
    with pytest.raises(BrainsegError):
        demo.make_demo_dataset(tmp_path / "x", n=n, n_test=n_test, seed=seed, verbose=False)
    assert not (tmp_path / "x").exists()


def test_cli_reports_bad_sizes_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "brainseg", "demo-data", str(tmp_path / "x"), "--n", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("brainseg: error:") and "Traceback" not in proc.stderr


def test_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(BrainsegError, match="not empty"):
        demo.make_demo_dataset(tmp_path, n=2, verbose=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


# ----------------------------------------------------------------------------- label convention


def _by_hand(t1: float, gm: float, wm: float) -> int:
    """The convention, voxel by voxel in plain Python."""
    inside = t1 > 0
    scores = [0.0 if inside else 1.0, min(1.0, max(0.0, 1.0 - gm - wm)) if inside else 0.0, gm, wm]
    return scores.index(max(scores))  # the first maximum, like argmax


def test_template_labels_follow_the_convention_on_the_template(template):
    labels = mni.template_labels(template.t1, template.gm, template.wm)
    assert labels.shape == template.t1.shape == (197, 233, 189)
    assert labels.dtype == np.uint8
    assert float(template.t1.max()) == 1.0 and float(template.t1.min()) == 0.0  # scaled by 1/255

    raw = {k: np.asarray(nib.load(str(mni.template_dir() / f)).dataobj) for k, f in mni.TEMPLATE_FILES.items()}
    rng = np.random.default_rng(1234)
    inside = np.argwhere(raw["t1"] > 0)
    picks = [tuple(v) for v in inside[rng.choice(len(inside), 300, replace=False)]]
    picks += [tuple(np.argwhere(raw["t1"] == 0)[0]), (98, 134, 72)]  # a background voxel, MNI origin
    # Voxels where each tissue map clearly dominates, chosen from the raw maps.
    for cond in (
        (raw["t1"] > 0) & (raw["gm"] < 20) & (raw["wm"] < 20),
        (raw["gm"] > 200),
        (raw["wm"] > 200),
        (raw["t1"] == 0) & (raw["gm"] > 0),
    ):
        found = np.argwhere(cond)
        assert len(found), "template lacks an expected kind of voxel"
        picks.append(tuple(found[len(found) // 2]))
    seen = set()
    for v in picks:
        t1, gm, wm = (int(raw[k][v]) / 255.0 for k in ("t1", "gm", "wm"))
        expected = _by_hand(t1, gm, wm)
        assert labels[v] == expected, (v, t1, gm, wm)
        seen.add(expected)
    assert seen == {0, 1, 2, 3}


def test_template_labels_ties_and_edge_cases():
    # Columns: T1, GM, WM -> label, worked out by hand from the convention.
    rows = [
        (0.0, 1.0, 0.0, 0),  # outside the brain, GM ties background: background wins
        (0.0, 0.0, 0.0, 0),
        (0.5, 0.5, 0.5, 2),  # CSF clipped to 0; GM ties WM: GM wins
        (0.5, 0.25, 0.25, 1),  # CSF 0.5
        (0.5, 0.0, 0.0, 1),  # CSF 1
        (0.5, 0.3, 0.6, 3),
        (0.2, 0.7, 0.2, 2),
        (1.0, 0.4, 0.4, 2),  # CSF 0.2 < GM 0.4 = WM 0.4: GM wins the tie
    ]
    t1, gm, wm, expected = (np.array(col, dtype=np.float32).reshape(-1, 1, 1) for col in zip(*rows))
    np.testing.assert_array_equal(mni.template_labels(t1, gm, wm).ravel(), expected.ravel().astype(np.uint8))


def test_template_labels_refuses_unscaled_maps(template):
    with pytest.raises(ValueError, match="255"):
        mni.template_labels(template.t1 * 255, template.gm * 255, template.wm * 255)
