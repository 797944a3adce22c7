"""``brainseg check`` finds every defect of a planted list, and the fingerprint it builds on.

The data set is written by hand (an ellipsoid "brain" with three nested tissue labels,
MSD layout); each defect is planted in its own case and named in its own test.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainseg.data.layouts import discover_dataset
from brainseg.plan.fingerprint import fingerprint_dataset

REPO = Path(__file__).resolve().parents[1]
SHAPE = (28, 30, 26)


def _brain(shape=SHAPE):
    grid = np.indices(shape).astype(np.float32)
    c = [(s - 1) / 2 for s in shape]
    r = sum(((g - ci) / (0.42 * s)) ** 2 for g, ci, s in zip(grid, c, shape))
    label = np.zeros(shape, np.int16)
    label[r < 1.0], label[r < 0.6], label[r < 0.3] = 1, 2, 3
    image = np.choose(label, [0.0, 30.0, 60.0, 90.0]).astype(np.float32)
    image[label > 0] += np.random.default_rng(0).normal(0, 2, int((label > 0).sum())).astype(np.float32)
    return image, label


def _save(data, path: Path, affine=None):
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)


def _dataset(root: Path, n_channels: int = 1) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    channels = {str(i): f"MR{i}" for i in range(n_channels)}
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": channels,
                "labels": {"background": 0, "CSF": 1, "grey": 2, "white": 3},
                "file_ending": ".nii.gz",
            }
        )
    )
    return root


def _case(root: Path, case: str, image=None, label=None, affine=None, label_affine=None, n_channels: int = 1):
    img, lab = _brain()
    image = img if image is None else image
    label = lab if label is None else label
    for c in range(n_channels):
        _save(image, root / "imagesTr" / f"{case}_{c:04d}.nii.gz", affine)
    _save(label, root / "labelsTr" / f"{case}.nii.gz", label_affine if label_affine is not None else affine)


def _cli(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "brainseg", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )


def _sections(stdout: str) -> tuple[list[str], list[str]]:
    lines = stdout.splitlines()
    e, w = (
        lines.index(next(x for x in lines if x.startswith("errors ("))),
        lines.index(next(x for x in lines if x.startswith("warnings ("))),
    )
    return [x.strip() for x in lines[e + 1 : w]], [x.strip() for x in lines[w + 1 :] if x.startswith("  ")]


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, list[str], list[str]]:
    root = _dataset(tmp_path_factory.mktemp("check") / "ds")
    for i in range(4):
        _case(root, f"good{i}")
    img, lab = _brain()
    _case(root, "geom", label_affine=np.diag([1.0, 1.0, 1.0, 1.0]) + np.eye(4, k=3) * 0 + _shift(5.0))
    _case(root, "shape", label=lab[:-2])
    nan = img.copy()
    nan[10, 10, 10] = np.nan
    _case(root, "nan", image=nan)
    inf = img.copy()
    inf[3, 3, 3] = np.inf
    inf[4, 4, 4] = -np.inf
    _case(root, "inf", image=inf)
    bad = lab.copy()
    bad[lab == 3] = 7
    _case(root, "value", label=bad)
    _case(root, "fraction", label=lab.astype(np.float32) * 0.5)
    _case(root, "zero", image=np.zeros(SHAPE, np.float32))
    _case(root, "empty", label=np.zeros(SHAPE, np.int16))
    _case(root, "lps", affine=np.diag([-1.0, -1.0, 1.0, 1.0]))
    _case(root, "coarse", affine=np.diag([4.0, 4.0, 4.0, 1.0]))
    _case(root, "corrupt")
    path = root / "imagesTr" / "corrupt_0000.nii.gz"
    path.write_bytes(gzip.compress(path.read_bytes()[:-0])[:200])  # a truncated gzip stream
    res = _cli("check", "--data", root, "--no-progress")
    errors, warnings = _sections(res.stdout)
    return root, res, errors, warnings


def _shift(mm: float) -> np.ndarray:
    m = np.zeros((4, 4))
    m[0, 3] = mm
    return m


def _has(lines: list[str], *parts: str) -> bool:
    return any(all(p in line for p in parts) for line in lines)


def test_a_defective_data_set_fails_the_check(planted):
    _, res, errors, _ = planted
    assert res.returncode == 1
    assert res.stdout.rstrip().endswith("check: FAILED")
    assert not _has(errors, "good0") and not _has(errors, "good3")


def test_label_on_another_grid(planted):
    assert _has(planted[2], "labelsTr/geom.nii.gz", "label geometry", "differs from its image")


def test_label_of_another_shape(planted):
    assert _has(planted[2], "labelsTr/shape.nii.gz", "label geometry", "(28, 30, 26)")


def test_nan_voxels(planted):
    assert _has(planted[2], "nan_0000.nii.gz", "1 NaN or Inf voxels in the scan")


def test_inf_voxels(planted):
    assert _has(planted[2], "inf_0000.nii.gz", "2 NaN or Inf voxels in the scan")


def test_label_values_outside_dataset_json(planted):
    assert _has(
        planted[2], "labelsTr/value.nii.gz", "label values [7] are not among the data set's labels [0, 1, 2, 3]"
    )


def test_non_integer_labels(planted):
    assert _has(planted[2], "labelsTr/fraction.nii.gz", "non-integer values")


def test_an_all_zero_scan(planted):
    assert _has(planted[2], "zero_0000.nii.gz", "all voxels are zero")


def test_an_unreadable_file(planted):
    assert _has(planted[2], "corrupt_0000.nii.gz")


def test_an_empty_label_is_a_warning(planted):
    assert _has(planted[3], "labelsTr/empty.nii.gz", "empty") and not _has(planted[2], "empty.nii.gz")


def test_inconsistent_orientations_are_a_warning(planted):
    assert _has(planted[3], "orientations differ", "LPS x1", "RAS x")


def test_a_spacing_outlier_is_a_warning(planted):
    assert _has(planted[3], "coarse:", "voxel size 4x4x4 mm is far from the data set's median 1x1x1 mm")


def test_channels_on_different_grids(tmp_path):
    root = _dataset(tmp_path / "two", n_channels=2)
    for i in range(2):
        _case(root, f"ok{i}", n_channels=2)
    _case(root, "grids", n_channels=2)
    _save(_brain((28, 30, 24))[0], root / "imagesTr" / "grids_0001.nii.gz")
    res = _cli("check", "--data", root, "--no-progress")
    errors, _ = _sections(res.stdout)
    assert res.returncode == 1
    assert _has(errors, "grids_0001.nii.gz", "channel grid", "differs from grids_0000.nii.gz")


def test_a_clean_data_set_passes_with_its_fingerprint_table(tmp_path):
    root = _dataset(tmp_path / "clean")
    for i in range(3):
        _case(root, f"case{i}")
    res = _cli("check", "--data", root, "--no-progress")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "errors (0):" in res.stdout and res.stdout.rstrip().endswith("check: passed")
    table = res.stdout.splitlines()
    assert any(line.startswith("case0") and "28x30x26" in line and "zero" in line for line in table)


def test_fingerprint_values_and_its_cache(tmp_path):
    root = _dataset(tmp_path / "fp")
    _case(root, "a", affine=np.diag([-2.0, 1.0, 1.5, 1.0]))  # LAS, 2 x 1 x 1.5 mm
    _case(root, "b")
    ds = discover_dataset(root)
    cache = tmp_path / "run" / "fingerprint.json"
    fp = fingerprint_dataset(ds, cache)
    a = next(c for c in fp.cases if c.case_id == "a")
    assert a.axcodes == "LAS" and a.ras_spacing == [2.0, 1.0, 1.5] and a.zero_background
    _, lab = _brain()
    assert a.label_volumes[3] == pytest.approx(float((lab == 3).sum()) * 3.0)
    assert a.label_components == {1: 1, 2: 1, 3: 1}
    assert a.labels_outside_scan == 0.0 and a.scan_unlabelled == 0.0
    assert a.channels[0].depth_correlation > 0.5  # brighter inside
    assert cache.is_file()
    assert fingerprint_dataset(ds, cache).to_dict() == fp.to_dict()
    # a changed file is fingerprinted again, not read from the stale cache
    img, lab = _brain()
    _save(img[::-1].copy() * 0 + (img.max() - img) * (lab > 0), root / "imagesTr" / "b_0000.nii.gz")
    os.utime(root / "imagesTr" / "b_0000.nii.gz", ns=(1, 1))
    again = fingerprint_dataset(ds, cache)
    b = next(c for c in again.cases if c.case_id == "b")
    assert b.channels[0].depth_correlation < 0
