"""`brainseg evaluate` as users run it: bad masks fail alone with one line each, the others are scored.

Real subprocesses (``python -m brainseg``) on real files; ``docs/robustness.md`` names these tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from brainseg.evaluate.per_label import METRICS_NAME, SUMMARY_NAME
from tests.cli.conftest import (
    AFFINE,
    IS_ROOT,
    SCAN_KINDS,
    SHAPE,
    assert_one_line_each,
    cli,
    error_lines,
    labels_of,
    make_bad,
    phantom,
    save,
    shifted,
    snapshot,
)
from tests.conftest import REPO, cube_labels, read_metrics_csv, write_labels


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "brainseg", "evaluate", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_corrupt_prediction_among_good_ones(tmp_path: Path):
    good = cube_labels()
    worse = good.copy()
    worse[2:4] = 0  # label 1 loses a third of its extent
    for name in ("case1", "case2", "case3", "case4"):
        write_labels(tmp_path / "ref" / f"{name}.nii.gz", good)
    write_labels(tmp_path / "pred" / "case1.nii.gz", good)
    (tmp_path / "pred" / "case2.nii.gz").write_bytes(b"\x1f\x8b this is not a NIfTI file")
    write_labels(tmp_path / "pred" / "case3.nii.gz", worse)
    # case4: no prediction at all

    result = _cli("--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--out", str(tmp_path / "out"))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    err_lines = result.stderr.splitlines()
    bad = [line for line in err_lines if "case2.nii.gz" in line]
    assert len(bad) == 1 and bad[0].startswith(f"brainseg: error: {tmp_path / 'pred' / 'case2.nii.gz'}: ")
    assert any("case4.nii.gz" in line and "no prediction" in line for line in err_lines)

    rows = read_metrics_csv(tmp_path / "out")
    assert sorted({r["case"] for r in rows}) == ["case1", "case3"]
    by_key = {(r["case"], r["label"]): float(r["dice"]) for r in rows}
    assert by_key[("case1", "1")] == 1.0
    # case3 label 1: |P| = 4*6*6 = 144, |R| = 216, overlap 144 -> 288 / 360.
    assert by_key[("case3", "1")] == pytest.approx(0.8)
    summary = json.loads((tmp_path / "out" / SUMMARY_NAME).read_text())
    assert summary["n_cases"] == 2
    assert sorted(f["case"] for f in summary["failed"]) == ["case2", "case4"]
    assert "mean Dice" in result.stdout and str(tmp_path / "out" / METRICS_NAME) in result.stdout


def test_cli_success_and_bad_labels(tmp_path: Path):
    labels = cube_labels()
    write_labels(tmp_path / "ref" / "a.nii.gz", labels)
    write_labels(tmp_path / "pred" / "a.nii.gz", labels)
    ok = _cli(
        "--pred",
        str(tmp_path / "pred"),
        "--ref",
        str(tmp_path / "ref"),
        "--out",
        str(tmp_path / "out"),
        "--labels",
        "2",
    )
    assert ok.returncode == 0, ok.stderr
    assert [r["label"] for r in read_metrics_csv(tmp_path / "out")] == ["2"]

    bad = _cli(
        "--pred",
        str(tmp_path / "pred"),
        "--ref",
        str(tmp_path / "ref"),
        "--out",
        str(tmp_path / "out2"),
        "--labels",
        "1,x",
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("brainseg: error: --labels '1,x'")
    assert not (tmp_path / "out2").exists()


def test_evaluate_bad_masks_fail_alone_with_one_line_each(tmp_path: Path):
    ref, pred, out = tmp_path / "ref", tmp_path / "pred", tmp_path / "out"
    lab = labels_of(phantom())
    save(ref / "good.nii.gz", lab)
    save(pred / "good.nii.gz", lab)
    save(ref / "nothing_found.nii.gz", lab)
    save(pred / "nothing_found.nii.gz", np.zeros(SHAPE, np.uint8))  # an empty prediction is a result
    expected: dict[Path, str] = {}
    for kind in SCAN_KINDS:
        if kind == "zeros":
            continue  # all-zero is a valid label map (scored above)
        name = f"bad_{kind}.nii" if kind == "huge" else f"bad_{kind}.nii.gz"  # pairs with bad_huge.nii.gz
        save(ref / f"bad_{kind}.nii.gz", lab)
        expected[pred / name] = make_bad(kind, pred / name, tmp_path)
    label_cases = {
        "shape": (lab[:, :, :16], AFFINE, r"does not match the reference"),
        "affine": (lab, shifted(), r"does not match the reference"),
        "fraction": (lab * 0.5, AFFINE, r"non-integer values"),
        "negative": (lab.astype(np.int16) - 1, AFFINE, r"label values out of range \[-1, 1\]"),
    }
    for kind, (data, affine, pattern) in label_cases.items():
        save(ref / f"bad_{kind}.nii.gz", lab)
        expected[save(pred / f"bad_{kind}.nii.gz", data, affine)] = pattern
    # Two predictions for one case: which is meant cannot be known, so the case is not scored.
    save(ref / "dup.nii.gz", lab)
    save(pred / "dup.nii", lab)
    save(pred / "dup.nii.gz", lab)
    expected[pred / "dup.nii"] = r"same case id as dup.nii.gz; the case is not scored"
    # A bad reference is named too.
    save(pred / "badref.nii.gz", lab)
    expected[ref / "badref.nii.gz"] = make_bad("truncated", ref / "badref.nii.gz", tmp_path)
    (pred / ".good.nii.gz.x1y2z3.tmp.nii.gz").write_bytes(b"\x1f\x8b partial")  # a killed writer's leftover
    before = snapshot(ref, pred)

    res = cli("evaluate", "--pred", pred, "--ref", ref, "--out", out)

    assert res.returncode == 1
    assert_one_line_each(res.stderr, expected, "brainseg: error: ")  # the format predict uses too
    assert len(error_lines(res.stderr, f"brainseg: error: {tmp_path}")) == len(expected), res.stderr
    assert "2 case(s) scored" in res.stdout
    with open(out / "metrics.csv") as fh:
        assert sorted({line.split(",")[0] for line in fh.readlines()[1:]}) == ["good", "nothing_found"]
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["failed"]) == len(expected)
    assert sorted(p.name for p in out.iterdir()) == [
        "cases_worst_first.csv",
        "dice_boxplot.png",
        "metrics.csv",
        "summary.json",
    ]
    assert snapshot(ref, pred) == before  # inputs untouched, nothing new beside them


@pytest.mark.skipif(IS_ROOT, reason="root writes anywhere; the read-only folder needs another user")
def test_output_folder_without_write_permission(tmp_path: Path):
    lab = labels_of(phantom())
    save(tmp_path / "ref" / "good.nii.gz", lab)
    save(tmp_path / "pred" / "good.nii.gz", lab)
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o500)
    try:
        res = cli("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref", "--out", out)
    finally:
        out.chmod(0o700)
    assert res.returncode == 1
    assert res.stderr.strip() == f"brainseg: error: {out / 'metrics.csv'}: cannot be written (Permission denied)"
    assert list(out.iterdir()) == []
