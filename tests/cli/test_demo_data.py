"""`brainseg demo-data` on the command line: what it writes and says, and its one-line refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from brainseg.cli import main
from tests.conftest import REPO

pytest.importorskip("nilearn")


def test_cli_writes_the_data_set_and_names_it(demo_data_run):
    out, proc = demo_data_run
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout


def test_cli_reports_bad_sizes_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "brainseg", "demo-data", str(tmp_path / "x"), "--n", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("brainseg: error:") and "Traceback" not in proc.stderr


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


def test_cli_writes_the_tumour_kind_and_refuses_layouts_of_other_kinds(tmp_path, capsys):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "brainseg", "demo-data", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=300,
        )

    out = tmp_path / "msd"
    res = cli(str(out), "--kind", "tumour", "--layout", "msd", "--n", "2", "--n-test", "1", "--spacing", "3", "3", "3")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [f"BRATS_000_000{i}.nii.gz" for i in range(4)]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    assert meta["regions_class_order"] == [1, 2, 3] and meta["training"][0]["image"] == "./imagesTr/BRATS_000.nii.gz"
    # another kind with a layout: one error line, nothing written (in-process: the CLI's start-up is the slow part)
    capsys.readouterr()
    assert main(["demo-data", str(tmp_path / "x"), "--kind", "tissue", "--layout", "msd"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("brainseg: error: --layout msd: only --kind tumour") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
