"""``brainseg_run.json``: how each mask was made, and what a rerun may keep.

A real tiny checkpoint and real NIfTI scans in tmp folders; ``brainseg predict`` runs as a
subprocess. The record's hashes are checked against :mod:`hashlib`; a rerun skips, a changed
input redoes that case only (a touched file with the same bytes does not), another model
redoes every case. The merge of the ranks' parts is checked to give the same files twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import monai
import numpy as np
import pytest
import torch

from brainseg.infer.batch import finish_run, rank_part
from brainseg.infer.provenance import RUN_RECORD, merge_parts, sha256_input
from brainseg.infer.summary import PredictionSummary
from brainseg.runtime import effective_amp
from tests.infer.test_batch import BASE_SHAPE, head_phantom, run_cli, save_nifti

AFFINE = np.diag([1.5, 1.5, 1.5, 1.0])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record(out: Path) -> dict:
    return json.loads((out / RUN_RECORD).read_text())


def stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_ino


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    for i, name in enumerate(("a", "b")):
        save_nifti(folder / f"{name}.nii.gz", head_phantom(BASE_SHAPE, seed=i), AFFINE)
    return folder


def test_the_record_names_inputs_model_and_outputs_by_hash(scans: Path, tmp_path: Path, tiny_checkpoint: Path):
    out = tmp_path / "out"
    result = run_cli("--model", tiny_checkpoint.parent, "--input", scans, "--output", out)
    assert result.returncode == 0, result.stderr
    assert f"how each mask was made: {out / RUN_RECORD}" in result.stdout

    rec = record(out)
    (run,) = rec["runs"]
    assert run["command"][:2] == ["brainseg", "predict"] and str(scans) in run["command"]
    assert run["versions"]["torch"] == str(torch.__version__) and run["versions"]["monai"] == monai.__version__
    assert run["brainseg"] == run["versions"]["brainseg"]
    assert run["devices"] == ["cpu"] and run["world_size"] == 1
    assert run["precision"] == effective_amp(torch.device("cpu"), "bf16")  # the card's infer.amp, as this CPU runs it
    assert run["model"] == {"path": str(tiny_checkpoint.resolve()), "sha256": sha256(tiny_checkpoint)}
    assert run["written"] == ["a", "b"] and run["skipped"] == [] and run["failed"] == []
    assert sorted(rec["cases"]) == ["a", "b"]
    for name, case in rec["cases"].items():
        scan = scans / f"{name}.nii.gz"
        assert case["inputs"] == [{"path": str(scan.resolve()), "sha256": sha256(scan)}]
        assert case["outputs"] == {"mask": f"{name}.nii.gz"}
        assert (out / case["outputs"]["mask"]).is_file()
        assert case["model_sha256"] == sha256(tiny_checkpoint)
        assert case["run"] == run["id"]
        assert 0 < case["seconds"] <= run["seconds"]


def test_a_rerun_skips_and_redoes_exactly_what_changed(
    scans: Path, tmp_path: Path, tiny_checkpoint: Path, tiny_checkpoint_factory
):
    out = tmp_path / "out"
    args = ("--model", tiny_checkpoint, "--input", scans, "--output", out)
    assert run_cli(*args).returncode == 0
    first = record(out)
    masks = {name: out / f"{name}.nii.gz" for name in ("a", "b")}
    before = {name: stamp(path) for name, path in masks.items()}

    # the same inputs and model: everything is kept; a file touched without changing its bytes too
    os.utime(scans / "b.nii.gz")
    second = run_cli(*args)
    assert "0 written, 2 skipped, 0 failed" in second.stdout, second.stdout
    assert {name: stamp(path) for name, path in masks.items()} == before
    rec = record(out)
    assert len(rec["runs"]) == 2 and sorted(rec["runs"][1]["skipped"]) == ["a", "b"]
    assert rec["cases"] == first["cases"]  # the skipped cases keep their entries

    # a's content changes: a is redone, b is kept with its first run's entry
    save_nifti(scans / "a.nii.gz", head_phantom(BASE_SHAPE, seed=5), AFFINE)
    third = run_cli(*args)
    assert "1 written, 1 skipped, 0 failed" in third.stdout, third.stdout
    assert stamp(masks["a"]) != before["a"] and stamp(masks["b"]) == before["b"]
    rec = record(out)
    assert rec["cases"]["a"]["inputs"][0]["sha256"] == sha256(scans / "a.nii.gz") != sha256_input(scans / "b.nii.gz")
    assert rec["cases"]["a"]["run"] == rec["runs"][2]["id"] != first["runs"][0]["id"]
    assert rec["cases"]["b"] == first["cases"]["b"]

    # another model: every case is redone
    other = tiny_checkpoint_factory(seed=11)
    fourth = run_cli("--model", other, "--input", scans, "--output", out)
    assert "2 written, 0 skipped, 0 failed" in fourth.stdout, fourth.stdout
    rec = record(out)
    assert {c["model_sha256"] for c in rec["cases"].values()} == {sha256(other)}
    assert [r["model"]["sha256"] for r in rec["runs"]] == [sha256(tiny_checkpoint)] * 3 + [sha256(other)]


def test_outputs_without_a_record_are_redone(scans: Path, tmp_path: Path, tiny_checkpoint: Path):
    """Masks whose making nothing records (an older brainseg, a copied folder) are not trusted."""
    out = tmp_path / "out"
    args = ("--model", tiny_checkpoint, "--input", scans, "--output", out)
    assert run_cli(*args).returncode == 0
    (out / RUN_RECORD).unlink()
    again = run_cli(*args)
    assert "2 written, 0 skipped, 0 failed" in again.stdout, again.stdout
    assert sorted(record(out)["cases"]) == ["a", "b"]


def _part(rank: int, cases: list[str], run_id: str = "r1") -> dict:
    summary = PredictionSummary(written=list(cases))
    for i, case in enumerate(cases):
        summary.volumes[case] = {1: 10.0 * (i + 1), 2: 1.5}
        summary.backgrounds[case], summary.ood[case] = "zero", ""
        summary.records[case] = {"inputs": [{"path": f"/x/{case}", "sha256": case * 4}], "run": run_id}
    run = {"id": run_id, "device": "cpu", "started": 100.0 + rank, "finished": 110.0 + rank}
    return rank_part(summary, run, rank, world_size=2)


def test_merging_the_ranks_parts_twice_gives_the_same_files(tmp_path: Path):
    parts = [_part(0, ["a", "c"]), _part(1, ["b"])]
    volumes, rec = finish_run(tmp_path, parts, {1: "x", 2: "y"})
    assert volumes is not None and rec is not None
    first = (volumes.read_bytes(), rec.read_bytes())
    assert [line.split(",")[0] for line in volumes.read_text().splitlines()] == ["case", "a", "b", "c"]
    merged = json.loads(rec.read_text())
    assert merged["runs"][0]["devices"] == ["cpu", "cpu"] and merged["runs"][0]["seconds"] == 11.0
    assert finish_run(tmp_path, parts, {1: "x", 2: "y"}) == (volumes, rec)  # a second merger
    assert (volumes.read_bytes(), rec.read_bytes()) == first
    # a later run that failed b drops b's entry and keeps a's and c's
    later = _part(0, [], run_id="r2")
    later["failed"] = [{"case": "b", "error": "b.nii.gz: unreadable"}]
    after = merge_parts(merged, [later])
    assert sorted(after["cases"]) == ["a", "c"] and [r["id"] for r in after["runs"]] == ["r1", "r2"]
