"""The tissue demo data set: generated once through the real CLI (the session's shared
``demo_data``, see conftest.py), then inspected as files; the hemispheres kind and ``--spacing``.

The reference for geometry is the MNI template itself: a subject's label map, put
into world space through its own affine, must overlap the template's labels there
(the deformation is only a few mm), whatever the subject's voxel grid.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainseg.demo.tissue import HEMISPHERE_LABELS, make_demo_dataset
from brainseg.errors import BrainsegError
from tests.conftest import REPO

pytest.importorskip("nilearn")


demo = pytest.importorskip("brainseg.demo.tissue")


N = 4  # subjects in the shared demo data set (conftest.DEMO_N)


EXPECTED_LABELS = {"background": 0, "CSF": 1, "grey matter": 2, "white matter": 3}


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


@pytest.mark.parametrize(
    "n, n_test, seed", [(1, None, 0), (0, None, 0), (4, 4, 0), (4, 0, 0), (3, 5, 0), (4, None, -1)]
)
def test_bad_arguments_are_refused(tmp_path, n, n_test, seed):
    with pytest.raises(BrainsegError):
        demo.make_demo_dataset(tmp_path / "x", n=n, n_test=n_test, seed=seed, verbose=False)
    assert not (tmp_path / "x").exists()


def test_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(BrainsegError, match="not empty"):
        demo.make_demo_dataset(tmp_path, n=2, verbose=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("kinds")
    tissue = make_demo_dataset(root / "tissue", n=2, n_test=1, seed=11, verbose=False)
    hemi = make_demo_dataset(root / "hemi", n=2, n_test=1, seed=11, verbose=False, kind="hemispheres")
    return tissue, hemi


def test_hemispheres_split_grey_and_white_matter_of_the_same_subjects(pair):
    tissue, hemi = pair
    meta = json.loads((hemi / "dataset.json").read_text())
    assert meta["labels"] == HEMISPHERE_LABELS
    assert {"left grey matter", "right grey matter", "left white matter", "right white matter"} <= set(meta["labels"])
    for sub, case in (("Tr", "demo_000"), ("Ts", "demo_001")):
        t = nib.load(tissue / f"labels{sub}" / f"{case}.nii.gz")
        h = nib.load(hemi / f"labels{sub}" / f"{case}.nii.gz")
        assert t.shape == h.shape and np.allclose(t.affine, h.affine)
        tl, hl = np.asarray(t.dataobj), np.asarray(h.dataobj)
        assert set(np.unique(hl)) == set(range(6))
        # merged back, the hemispheres are exactly the tissue labels (same random draws)
        merged = np.select([hl == 0, hl == 1, np.isin(hl, (2, 3)), np.isin(hl, (4, 5))], [0, 1, 2, 3])
        np.testing.assert_array_equal(merged, tl)
        # images are the same files' content too
        ti = np.asarray(nib.load(tissue / f"images{sub}" / f"{case}_0000.nii.gz").dataobj)
        hi = np.asarray(nib.load(hemi / f"images{sub}" / f"{case}_0000.nii.gz").dataobj)
        np.testing.assert_array_equal(ti, hi)
        # left labels lie left of the midline in world (RAS) coordinates, right ones right of it
        ijk = np.argwhere(hl > 1)
        x = h.affine[0, :3] @ ijk.T + h.affine[0, 3]
        values = hl[tuple(ijk.T)]
        left = np.isin(values, (2, 4))
        assert np.mean(x[left] < 0) > 0.97 and np.mean(x[~left] > 0) > 0.97
        # and the two hemispheres are about the same size (the template is symmetric)
        n_left, n_right = int(left.sum()), int((~left).sum())
        assert abs(n_left - n_right) / (n_left + n_right) < 0.08


def test_spacing_gives_every_subject_that_voxel_size(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "brainseg",
            "demo-data",
            str(tmp_path / "aniso"),
            "--n",
            "4",
            "--spacing",
            "0.9",
            "0.9",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr
    files = sorted((tmp_path / "aniso").rglob("*.nii.gz"))
    assert len(files) == 8
    orders = set()
    for f in files:
        img = nib.load(f)
        codes = nib.aff2axcodes(img.affine)
        orders.add(codes)
        # per anatomical axis: 0.9 mm left-right and posterior-anterior, 4 mm inferior-superior
        by_axis = {c: z for c, z in zip(codes, img.header.get_zooms()[:3])}
        got = [next(z for c, z in by_axis.items() if c in pair) for pair in ("LR", "PA", "IS")]
        np.testing.assert_allclose(got, (0.9, 0.9, 4.0), rtol=1e-5)
    assert any(codes[0] not in "LR" for codes in orders)  # subject 3 is stored PIR: its slices are still axial
