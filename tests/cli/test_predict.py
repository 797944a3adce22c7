"""`brainseg predict` against bad inputs, crashes and untrusted files: nothing is lost, nothing let in.

``docs/robustness.md`` is the catalogue; each row names the test that covers it. The
standard for every bad input: one line on stderr naming the file and the problem, a
non-zero exit, no traceback unless ``--debug``, no partial output, and the other cases
still finish. ``predict`` runs as a real subprocess (``python -m brainseg``), one run per
matrix of bad files; crashes are real ``SIGKILL``s of real subprocesses.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from brainseg.config import load_config
from brainseg.data.inputs import discover_inputs
from brainseg.evaluate.per_label import evaluate_folders
from brainseg.infer.loading import INFER_PRESETS
from brainseg.model.checkpoint import CHECKPOINT_LAST
from tests.cli.conftest import (
    SCAN_KINDS,
    SHAPE,
    TINY_TRAIN,
    _env,
    assert_one_line_each,
    brainseg_cmd,
    cli,
    error_lines,
    file_size_limit,
    in_process,
    labels_of,
    make_bad,
    make_train_set,
    phantom,
    save,
    shifted,
    snapshot,
)
from tests.conftest import REPO, oblique_affine


def visible_masks(folder: Path) -> list[Path]:
    """``*.nii.gz`` files of ``folder`` that are not hidden (pathlib's glob matches dot files)."""
    return sorted(p for p in folder.glob("*.nii.gz") if not p.name.startswith(".")) if folder.is_dir() else []


def test_predict_bad_scans_fail_alone_with_one_line_each(tmp_path: Path, tiny_checkpoint: Path):
    scans = tmp_path / "scans"
    save(scans / "good.nii.gz", phantom())
    save(scans / "single4d.nii.gz", phantom(seed=2)[..., None])  # a 4th axis of size 1 is a 3D scan
    expected = {}
    for kind in SCAN_KINDS:
        path = scans / f"bad_{kind}.nii.gz"
        expected[path] = make_bad(kind, path, tmp_path)
    # Fine by default, but over the limit this run sets with --set data.max_voxels.
    over = save(scans / "bad_over_limit.nii.gz", phantom((40, 40, 40)))
    expected[over] = r"header claims 64,000 voxels .*above the limit of 30,000"
    # What a killed writer leaves behind: hidden, so never a case.
    (scans / ".good.nii.gz.k3j2x9.tmp.nii.gz").write_bytes(b"\x1f\x8b partial")
    before = snapshot(scans, tiny_checkpoint)
    out = tmp_path / "out"

    res = cli(
        "predict",
        "--model",
        tiny_checkpoint,
        "--input",
        scans,
        "--output",
        out,
        "--no-progress",
        "--set",
        "data.max_voxels=30000",
    )

    assert res.returncode == 1, res.stderr
    assert_one_line_each(res.stderr, expected, "brainseg: error: ")
    assert len(error_lines(res.stderr, "brainseg: error: ")) == len(expected), res.stderr
    assert f"2 written, 0 skipped, {len(expected)} failed" in res.stdout
    # The good cases finished; nothing else (no partial mask, no temp file) was written.
    assert sorted(p.name for p in out.iterdir()) == [
        "brainseg_run.json",
        "good.nii.gz",
        "single4d.nii.gz",
        "volumes.csv",
    ]
    for name in ("good", "single4d"):
        assert np.asarray(nib.load(str(out / f"{name}.nii.gz")).dataobj).shape == SHAPE
    assert snapshot(scans, tiny_checkpoint) == before


def test_predict_channel_files_of_different_geometry(tmp_path: Path, tiny_checkpoint_factory):
    checkpoint = tiny_checkpoint_factory(channels=("T1", "T2"))
    scans = tmp_path / "scans"
    save(scans / "ok_0000.nii.gz", phantom())
    save(scans / "ok_0001.nii.gz", phantom(seed=1))
    save(scans / "moved_0000.nii.gz", phantom())
    moved = save(scans / "moved_0001.nii.gz", phantom(seed=1), shifted())
    save(scans / "cropped_0000.nii.gz", phantom())
    cropped = save(scans / "cropped_0001.nii.gz", phantom()[:, :, :16])
    out = tmp_path / "out"

    res = cli("predict", "--model", checkpoint, "--input", scans, "--output", out, "--no-progress")

    assert res.returncode == 1
    pattern = r"geometry \(.*\) differs from the case's first channel \S+_0000.nii.gz"
    assert_one_line_each(res.stderr, {moved: pattern, cropped: pattern}, "brainseg: error: ")
    assert "1 written, 0 skipped, 2 failed" in res.stdout
    assert sorted(p.name for p in out.iterdir()) == ["brainseg_run.json", "ok.nii.gz", "volumes.csv"]


def test_file_names_cannot_make_ids_that_leave_the_output_folder(tmp_path: Path, tiny_checkpoint: Path, capsys):
    # '/' cannot occur in a file name; '\\', control characters and a leading '.' can.
    scans = tmp_path / "in" / "scans"
    save(scans / "a\\..\\..\\escaped.nii.gz", phantom())
    save(scans / "two\nlines.nii.gz", phantom())
    out = tmp_path / "in" / "out"

    rc, err = in_process(
        capsys, "predict", "--model", tiny_checkpoint, "--input", scans, "--output", out, "--no-progress"
    )

    assert rc == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("brainseg: error: 2 problems: "), err
    assert "contains a path separator" in lines[0] and "contains a control character" in lines[0]
    assert not out.exists()
    assert [p.name for p in tmp_path.rglob("*escaped*")] == ["a\\..\\..\\escaped.nii.gz"]  # the input only


def test_output_below_a_regular_file(tmp_path: Path, tiny_checkpoint: Path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder\n")
    scans = tmp_path / "scans"
    save(scans / "good.nii.gz", phantom())
    lab = labels_of(phantom())
    save(tmp_path / "ref" / "good.nii.gz", lab)
    save(tmp_path / "pred" / "good.nii.gz", lab)

    res = cli("predict", "--model", tiny_checkpoint, "--input", scans, "--output", blocker / "out", "--no-progress")
    assert res.returncode == 1
    assert res.stderr.strip() == f"brainseg: error: {blocker / 'out'}: Not a directory"

    res = cli("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref", "--out", blocker / "out")
    assert res.returncode == 1
    assert res.stderr.strip() == f"brainseg: error: {blocker / 'out'}: Not a directory"

    data = make_train_set(tmp_path / "data")
    rc, err = in_process(
        capsys, "train", "--data", data, "--out", blocker / "run", "--epochs", "1", "--no-progress", *TINY_TRAIN
    )
    assert rc == 1
    assert err.strip() == f"brainseg: error: {blocker / 'run'}: Not a directory"
    assert blocker.read_text() == "a file, not a folder\n"


def test_disk_full_during_writes_leaves_no_partial_file(tmp_path: Path, tiny_checkpoint: Path):
    """RLIMIT_FSIZE makes every write past the limit fail with EFBIG, as a full disk would."""
    scans = tmp_path / "scans"
    save(scans / "a.nii.gz", phantom())
    save(scans / "b.nii.gz", phantom(seed=1))
    out = tmp_path / "out"
    res = cli(
        "predict",
        "--model",
        tiny_checkpoint,
        "--input",
        scans,
        "--output",
        out,
        "--no-progress",
        preexec_fn=file_size_limit(64),
    )
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert error_lines(res.stderr, "brainseg: error: ") == [
        f"brainseg: error: {out / name}: cannot be written (File too large)" for name in ("a.nii.gz", "b.nii.gz")
    ]
    assert "0 written, 0 skipped, 2 failed" in res.stdout
    assert list(out.iterdir()) == []  # neither a partial mask nor a temp file

    lab = labels_of(phantom())
    save(tmp_path / "ref" / "c.nii.gz", lab)
    save(tmp_path / "pred" / "c.nii.gz", lab)
    res = cli(
        "evaluate",
        "--pred",
        tmp_path / "pred",
        "--ref",
        tmp_path / "ref",
        "--out",
        tmp_path / "eval",
        preexec_fn=file_size_limit(64),
    )
    assert res.returncode == 1
    assert (
        res.stderr.strip()
        == f"brainseg: error: {tmp_path / 'eval' / 'metrics.csv'}: cannot be written (File too large)"
    )
    assert list((tmp_path / "eval").iterdir()) == []


def test_sigkill_during_predict_then_rerun_writes_only_the_missing_cases(tmp_path: Path, tiny_checkpoint: Path):
    scans = tmp_path / "scans"
    ids = [f"c{i}" for i in range(6)]
    for i, cid in enumerate(ids):
        save(scans / f"{cid}.nii.gz", phantom(seed=i))
    out = tmp_path / "out"
    # mirror=true: 8 passes per case, so the run is still going when it is killed.
    args = [
        "predict",
        "--model",
        tiny_checkpoint,
        "--input",
        scans,
        "--output",
        out,
        "--no-progress",
        "--set",
        "infer.mirror=true",
    ]
    before = snapshot(scans, tiny_checkpoint)

    proc = subprocess.Popen(
        brainseg_cmd(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(), cwd=REPO
    )
    seen: dict[str, tuple[int, int]] = {}
    deadline = time.monotonic() + 90
    while proc.poll() is None and time.monotonic() < deadline and len(seen) < 2:
        for mask in visible_masks(out):
            if mask.name not in seen:  # every mask that ever appears is complete
                assert np.asarray(nib.load(str(mask)).dataobj).shape == SHAPE
                st = mask.stat()
                seen[mask.name] = (st.st_ino, st.st_mtime_ns)
        time.sleep(0.002)
    assert proc.poll() is None, "predict finished (or failed) before it could be killed: " + proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    done = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in visible_masks(out)}
    for mask in done:
        assert np.asarray(nib.load(str(out / mask)).dataobj).shape == SHAPE
    assert 2 <= len(done) < len(ids)
    # A writer killed mid-write leaves a hidden temp file (simulated here, in case this kill did not).
    (out / ".c5.nii.gz.q8w7e6.tmp.nii.gz").write_bytes(b"\x1f\x8b partial")

    res = cli(*args)

    assert res.returncode == 0, res.stderr
    assert f"{len(ids) - len(done)} written, {len(done)} skipped, 0 failed" in res.stdout
    for mask, stamp in done.items():  # earlier masks untouched
        st = (out / mask).stat()
        assert (st.st_ino, st.st_mtime_ns) == stamp, mask
    # the killed run's journal was folded into the record (an interrupted run), then removed
    record = json.loads((out / "brainseg_run.json").read_text())
    assert [run["interrupted"] for run in record["runs"]] == [True, False]
    assert sorted(record["runs"][0]["written"]) == sorted(m[: -len(".nii.gz")] for m in done)
    assert sorted(record["cases"]) == ids
    assert not list(out.glob(".brainseg_run.*"))
    for cid in ids:
        assert np.asarray(nib.load(str(out / f"{cid}.nii.gz")).dataobj).shape == SHAPE
    # Leftover temp files are ignored (documented; safe to delete): never a scan, never a prediction.
    assert [c.case_id for c in discover_inputs([out])] == ids
    summary = evaluate_folders(out, out, tmp_path / "eval", progress=False)
    assert summary["n_cases"] == len(ids) and summary["failed"] == []
    assert snapshot(scans, tiny_checkpoint) == before  # predict never touches its inputs


def test_predict_fast_takes_fewer_windows_records_its_preset_and_writes_masks_in_the_scan_geometry(
    tmp_path: Path, tiny_checkpoint: Path
):
    """``--fast`` is the "fast" preset of the infer section (:data:`~brainseg.infer.loading.INFER_PRESETS`): the run's
    record names it and holds the values used, the case took fewer windows than without it, an explicit
    ``--set`` still wins over the preset, and the mask lies in the scan's own (oblique, resampled) grid."""
    affine = oblique_affine()
    scan = save(tmp_path / "scans" / "head.nii.gz", phantom((40, 44, 36)), affine)
    source = nib.load(str(scan))
    # the preset's fields set back to the defaults' values by --set after --fast
    defaults = load_config().infer
    reset = [f for key in INFER_PRESETS["fast"] for f in ("--set", f"infer.{key}={getattr(defaults, key)}")]
    runs = {"default": [], "fast": ["--fast"], "fast, reset by --set": ["--fast", *reset]}
    records = {}
    for name, flags in runs.items():
        out = tmp_path / name.replace(", ", "_").replace(" ", "_")
        res = cli("predict", "--model", tiny_checkpoint, "--input", scan, "--output", out, "--no-progress", *flags)
        assert res.returncode == 0, res.stderr
        mask = nib.load(str(out / "head.nii.gz"))
        assert mask.shape == source.shape and np.array_equal(mask.affine, source.affine)
        labels = np.asarray(mask.dataobj)
        assert set(np.unique(labels)) <= {0, 1, 2} and (labels != 0).any()
        records[name] = json.loads((out / "brainseg_run.json").read_text())

    default, fast, reset_run = (records[name] for name in runs)
    assert default["runs"][0]["preset"] is None and fast["runs"][0]["preset"] == "fast"
    assert fast["runs"][0]["config"]["infer"] == {**default["runs"][0]["config"]["infer"], **INFER_PRESETS["fast"]}
    assert INFER_PRESETS["fast"]["mirror"] is False
    assert INFER_PRESETS["fast"]["overlap"] < default["runs"][0]["config"]["infer"]["overlap"]
    windows = {name: records[name]["cases"]["head"]["windows"] for name in runs}
    assert 0 < windows["fast"] < windows["default"], windows
    # --set after --fast wins over the preset: the default's settings, so the default's windows again
    assert reset_run["runs"][0]["config"]["infer"] == default["runs"][0]["config"]["infer"]
    assert windows["fast, reset by --set"] == windows["default"]


def test_predict_fast_and_tta_together_are_refused(tmp_path: Path, tiny_checkpoint: Path):
    scan = save(tmp_path / "scans" / "head.nii.gz", phantom())
    out = tmp_path / "out"
    res = cli("predict", "--model", tiny_checkpoint, "--input", scan, "--output", out, "--fast", "--tta")
    assert res.returncode == 2 and "not allowed with argument" in res.stderr
    assert not out.exists()


class _Payload:
    """Pickles to ``exec(code)``: loading it without ``weights_only`` runs the code."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(tmp_path: Path, tiny_checkpoint: Path, capsys):
    marker = tmp_path / "pwned"
    crafted = tmp_path / "crafted.pt"
    payload = _Payload(f"open({str(marker)!r}, 'w').write('code ran')")
    real = torch.load(tiny_checkpoint, weights_only=True)
    torch.save({"model": real["model"], "card": real["card"], "extra": payload}, crafted)
    scans = tmp_path / "scans"
    save(scans / "s.nii.gz", phantom())

    res = cli("predict", "--model", crafted, "--input", scans, "--output", tmp_path / "out", "--no-progress")

    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"brainseg: error: {crafted}: refused to load"), res.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()

    # The same refusal when resuming a training run whose last checkpoint was swapped.
    data = make_train_set(tmp_path / "data")
    run = tmp_path / "run"
    run.mkdir()
    (run / CHECKPOINT_LAST).write_bytes(crafted.read_bytes())
    rc, err = in_process(capsys, "train", "--data", data, "--out", run, "--resume", "--no-progress", *TINY_TRAIN)
    assert rc == 1
    assert err.strip().startswith(f"brainseg: error: {run / CHECKPOINT_LAST}: refused to load")
    assert not marker.exists()

    # The file really carries code: an unsafe load runs it.
    torch.load(crafted, weights_only=False)
    assert marker.read_text() == "code ran"
