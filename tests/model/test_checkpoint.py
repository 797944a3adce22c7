"""Which checkpoint of a run ``predict`` loads: final, then best, then last, or the one asked for."""

from __future__ import annotations

import pytest

from brainseg.errors import BrainsegError
from brainseg.model.checkpoint import (
    resolve_checkpoint,
)
from tests.conftest import brainseg, error_lines


def test_predict_takes_final_then_best_then_last_or_the_one_asked_for(tiny_checkpoint, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    data = tiny_checkpoint.read_bytes()
    (run / "checkpoint_last.pt").write_bytes(data)
    assert resolve_checkpoint(run).name == "checkpoint_last.pt"
    (run / "checkpoint_best.pt").write_bytes(data)
    assert resolve_checkpoint(run).name == "checkpoint_best.pt"
    (run / "checkpoint_final.pt").write_bytes(data)
    assert resolve_checkpoint(run).name == "checkpoint_final.pt"
    for which in ("final", "best", "last"):
        assert resolve_checkpoint(run, which).name == f"checkpoint_{which}.pt"
    (run / "checkpoint_best.pt").unlink()
    with pytest.raises(BrainsegError, match=r"checkpoint_best\.pt: not found \(the run folder holds checkpoint_final"):
        resolve_checkpoint(run, "best")
    with pytest.raises(BrainsegError, match="not a folder"):
        resolve_checkpoint(run / "checkpoint_final.pt", "final")
    (tmp_path / "scans").mkdir()
    res = brainseg(
        "predict",
        "--model",
        str(run),
        "--checkpoint",
        "best",
        "--input",
        str(tmp_path / "scans"),
        "--output",
        str(tmp_path / "out"),
    )
    assert res.returncode == 1 and len(error_lines(res.stderr)) == 1 and "checkpoint_best.pt: not found" in res.stderr
