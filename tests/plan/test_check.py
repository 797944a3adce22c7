"""``brainseg check`` finds every defect of a planted list.

The data set is written by hand (an ellipsoid "brain" with three nested tissue labels,
MSD layout); each defect is planted in its own case and named in its own test.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from tests.plan.conftest import SHAPE, brain, save, write_case, write_dataset


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
    root = write_dataset(tmp_path_factory.mktemp("check") / "ds")
    for i in range(4):
        write_case(root, f"good{i}")
    img, lab = brain()
    write_case(root, "geom", label_affine=np.diag([1.0, 1.0, 1.0, 1.0]) + np.eye(4, k=3) * 0 + _shift(5.0))
    write_case(root, "shape", label=lab[:-2])
    nan = img.copy()
    nan[10, 10, 10] = np.nan
    write_case(root, "nan", image=nan)
    inf = img.copy()
    inf[3, 3, 3] = np.inf
    inf[4, 4, 4] = -np.inf
    write_case(root, "inf", image=inf)
    bad = lab.copy()
    bad[lab == 3] = 7
    write_case(root, "value", label=bad)
    write_case(root, "fraction", label=lab.astype(np.float32) * 0.5)
    write_case(root, "zero", image=np.zeros(SHAPE, np.float32))
    write_case(root, "empty", label=np.zeros(SHAPE, np.int16))
    write_case(root, "lps", affine=np.diag([-1.0, -1.0, 1.0, 1.0]))
    write_case(root, "coarse", affine=np.diag([4.0, 4.0, 4.0, 1.0]))
    write_case(root, "corrupt")
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
    root = write_dataset(tmp_path / "two", n_channels=2)
    for i in range(2):
        write_case(root, f"ok{i}", n_channels=2)
    write_case(root, "grids", n_channels=2)
    save(brain((28, 30, 24))[0], root / "imagesTr" / "grids_0001.nii.gz")
    res = _cli("check", "--data", root, "--no-progress")
    errors, _ = _sections(res.stdout)
    assert res.returncode == 1
    assert _has(errors, "grids_0001.nii.gz", "channel grid", "differs from grids_0000.nii.gz")


def test_a_clean_data_set_passes_with_its_fingerprint_table(tmp_path):
    root = write_dataset(tmp_path / "clean")
    for i in range(3):
        write_case(root, f"case{i}")
    res = _cli("check", "--data", root, "--no-progress")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "errors (0):" in res.stdout and res.stdout.rstrip().endswith("check: passed")
    table = res.stdout.splitlines()
    assert any(line.startswith("case0") and "28x30x26" in line and "zero" in line for line in table)
