"""`brainseg demo-data --kind hemispheres` and `--spacing`: real files, checked against the tissue kind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainseg.demo.tissue import HEMISPHERE_LABELS, make_demo_dataset

REPO = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize(
    "args, message",
    [
        (["--kind", "lesions"], "invalid choice: 'lesions'"),
        (["--spacing", "1", "0", "1"], "--spacing (1.0, 0.0, 1.0): expected three voxel sizes in mm"),
    ],
)
def test_bad_kind_or_spacing_is_one_line(tmp_path, args, message):
    res = subprocess.run(
        [sys.executable, "-m", "brainseg", "demo-data", str(tmp_path / "x"), "--n", "2", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert res.returncode != 0 and message in res.stderr and "Traceback" not in res.stderr
