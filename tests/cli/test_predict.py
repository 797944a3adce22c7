"""Hardening: bad inputs, crashes and untrusted files lose nothing and let nothing in.

``docs/robustness.md`` is the catalogue; each row names the test here (or elsewhere)
that covers it. The standard for every bad input: one line on stderr naming the file
and the problem, a non-zero exit, no traceback unless ``--debug``, no partial output,
and in ``predict`` / ``evaluate`` the other cases still finish.

``predict`` and ``evaluate`` run as real subprocesses (``python -m brainseg``), one
run per matrix of bad files, since a bad file costs only its own case there. A bad
training case stops ``train`` at the first one, so the training matrix goes through
the same entry point (:func:`brainseg.cli.main`) in this process, with one real
subprocess for the all-zero scan, to keep the file under a minute and a half on two
cores. Crashes are real ``SIGKILL``s of real subprocesses.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brainseg.cli import main
from brainseg.data.inputs import discover_inputs
from brainseg.errors import InputError
from brainseg.evaluate.per_label import evaluate_folders
from brainseg.model.checkpoint import CHECKPOINT_LAST, RUN_PREFERENCE, resolve_checkpoint

REPO = Path(__file__).resolve().parents[1]
SHAPE = (20, 24, 18)
AFFINE = np.diag([1.5, 1.5, 1.5, 1.0])  # the tiny checkpoint's spacing: no resampling
IS_ROOT = os.geteuid() == 0
# Bigger than config.yaml, split.json, the cache and TensorBoard's events; smaller than a checkpoint.
CHECKPOINT_WRITE_LIMIT = 40_000  # cache files here are <= 25 kB, a checkpoint ~70 kB

# A network and schedule that train in a fraction of a second per epoch on one thread.
TINY_TRAIN = [
    "--set",
    "model.levels=2",
    "--set",
    "model.base_features=4",
    "--set",
    "model.max_features=8",
    "--set",
    "train.patch_size=[16,16,16]",
    "--set",
    "train.batch_size=1",
    "--set",
    "train.iters_per_epoch=2",
    "--set",
    "train.num_workers=0",
    "--set",
    "train.val_every=1000",
    "--set",
    "train.optimizer=adamw",
    "--set",
    "train.checkpoint_every=1",
    "--set",
    "data.target_spacing=[1.5,1.5,1.5]",
    "--set",
    "infer.batch_windows=8",
]


# ----------------------------------------------------------------------------- helpers


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def brainseg_cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "brainseg", *map(str, args)]


def cli(*args: object, timeout: float = 120, preexec_fn=None) -> subprocess.CompletedProcess:
    """The real command line in a subprocess."""
    return subprocess.run(
        brainseg_cmd(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        cwd=REPO,
        preexec_fn=preexec_fn,
    )


def in_process(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str]:
    """The command line's entry point in this process: (exit code, stderr)."""
    capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def file_size_limit(nbytes: int):
    """``preexec_fn`` that makes any file the child writes past ``nbytes`` fail with EFBIG.

    CPython ignores SIGXFSZ, so the write raises ``OSError(EFBIG)``: a full disk, as
    far as the writer can tell.
    """

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return apply


def phantom(shape=SHAPE, seed: int = 0) -> np.ndarray:
    """A textured ellipsoid ("head"), zero outside."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float64)
    inside = sum(((g - 0.5 * s) / (0.38 * s)) ** 2 for g, s in zip(grid, shape)) <= 1.0
    return np.where(inside, np.maximum(100 + 20 * rng.standard_normal(shape), 1.0), 0).astype(np.float32)


def labels_of(image: np.ndarray) -> np.ndarray:
    """0 outside the head, 1 and 2 inside (by intensity)."""
    lab = np.zeros(image.shape, np.uint8)
    lab[image > 0] = 1
    lab[image > 100] = 2
    return lab


def save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def shifted(by_mm: float = 3.0) -> np.ndarray:
    affine = AFFINE.copy()
    affine[:3, 3] += (by_mm, 0.0, 0.0)
    return affine


def make_bad(kind: str, path: Path, tmp: Path) -> str:
    """Write a bad input of ``kind`` at ``path``; return a regex its error line must match."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "truncated":
        raw = save(path, phantom()).read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
        return r"truncated|not a readable"
    if kind == "not_an_image":
        path.write_text("subject,age\n01,34\n" * 50)
        return r"not a readable NIfTI"
    if kind == "empty":
        path.write_bytes(b"")
        return r"is an empty file"
    if kind == "2d":
        save(path, phantom()[:, :, 9])
        return r"is a 2D image"
    if kind == "4d":  # two volumes where the model wants one channel
        save(path, np.stack([phantom(), phantom(seed=1)], axis=-1))
        return r"is a 4D image .*give several channels as separate files"
    if kind == "nan":
        data = phantom()
        data[5, 5, 5], data[6, 6, 6] = np.nan, np.inf
        save(path, data)
        return r"contains 2 NaN or Inf voxels"
    if kind == "zeros":
        save(path, np.zeros(SHAPE, np.float32))
        return r"all voxels are zero"
    if kind == "singular":
        img = nib.Nifti1Image(phantom(), None)
        img.header.set_qform(None, code=0)
        img.header.set_sform(np.zeros((4, 4)), code=1)
        nib.save(img, str(path))
        return r"singular or zero"
    if kind == "huge":  # a 4 kB file whose header claims 3000^3 float32 voxels (108 GB)
        header = nib.Nifti1Header()
        header.set_data_shape((3000, 3000, 3000))
        header.set_data_dtype(np.float32)
        header.set_sform(AFFINE, code=1)
        buf = io.BytesIO()
        header.write_to(buf)
        raw = buf.getvalue() + b"\0" * 4096
        path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
        return r"header claims 27,000,000,000 voxels .*above the limit"
    if kind == "folder":
        path.mkdir()
        return r"is a folder, not a scan file"
    if kind == "dangling":
        path.symlink_to(tmp / "moved-away.nii.gz")
        return r"broken symbolic link"
    if kind == "unreadable":
        save(path, phantom()).chmod(0)
        return r"permission denied"
    raise AssertionError(kind)


SCAN_KINDS = [
    "truncated",
    "not_an_image",
    "empty",
    "2d",
    "4d",
    "nan",
    "zeros",
    "singular",
    "huge",
    "folder",
    "dangling",
] + ([] if IS_ROOT else ["unreadable"])  # root reads anything: the permission case needs another user


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every entry under ``roots``: content hash, size, mtime, mode (links and folders too)."""
    out: dict[str, tuple] = {}
    for root in roots:
        entries = [root] if not root.is_dir() or root.is_symlink() else [root, *sorted(root.rglob("*"))]
        for p in entries:
            st = p.lstat()
            if p.is_symlink():
                out[str(p)] = ("link", os.readlink(p))
            elif p.is_dir():
                out[str(p)] = ("dir", st.st_mode)
            else:
                try:
                    digest = hashlib.sha256(p.read_bytes()).hexdigest()
                except PermissionError:
                    digest = "unreadable"
                out[str(p)] = (digest, st.st_size, st.st_mtime_ns, st.st_mode)
    return out


def error_lines(stderr: str, prefix: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(prefix)]


def assert_one_line_each(stderr: str, expected: dict[Path, str], prefix: str) -> None:
    """Exactly one line ``<prefix><file>: <problem>`` per bad file, and no traceback."""
    assert "Traceback" not in stderr, stderr
    for path, pattern in expected.items():
        naming = [line for line in stderr.splitlines() if line.startswith(f"{prefix}{path}: ")]
        assert len(naming) == 1, f"{path}: expected one line, got {naming}\n{stderr}"
        assert re.search(pattern, naming[0]), f"{pattern!r} not in {naming[0]!r}"


def visible_masks(folder: Path) -> list[Path]:
    """``*.nii.gz`` files of ``folder`` that are not hidden (pathlib's glob matches dot files)."""
    return sorted(p for p in folder.glob("*.nii.gz") if not p.name.startswith(".")) if folder.is_dir() else []


def hidden_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


def make_train_set(root: Path, n: int = 3, channels: int = 1) -> Path:
    """An MSD / nnU-Net data set of ``n`` small labelled heads."""
    meta = {
        "channel_names": {str(c): f"ch{c}" for c in range(channels)},
        "labels": {"background": 0, "a": 1, "b": 2},
    }
    (root / "imagesTr").mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(meta))
    for i in range(1, n + 1):
        image = phantom(seed=i)
        for c in range(channels):
            save(root / "imagesTr" / f"c{i}_{c:04d}.nii.gz", image * (c + 1))
        save(root / "labelsTr" / f"c{i}.nii.gz", labels_of(image))
    return root


# ----------------------------------------------------------------------------- predict: bad scans


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
    assert sorted(p.name for p in out.iterdir()) == ["good.nii.gz", "single4d.nii.gz", "volumes.csv"]
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
    assert sorted(p.name for p in out.iterdir()) == ["ok.nii.gz", "volumes.csv"]


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


# ----------------------------------------------------------------------------- evaluate: bad masks


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
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "summary.json"]
    assert snapshot(ref, pred) == before  # inputs untouched, nothing new beside them


# ----------------------------------------------------------------------------- train: bad data sets

TRAIN_LABEL_KINDS = {
    "label_shape": (lambda lab: (lab[:, :, :16], AFFINE), r"label geometry \(.*\) differs from its image"),
    "label_affine": (lambda lab: (lab, shifted()), r"label geometry \(.*\) differs from its image"),
    "label_values": (
        lambda lab: (np.where(lab == 2, 7, lab).astype(np.uint8), AFFINE),
        r"label values \[7\] are not among the data set's labels \[0, 1, 2\]",
    ),
    "label_fraction": (lambda lab: (lab * 0.5, AFFINE), r"non-integer values"),
}


@pytest.mark.parametrize(
    "kind", SCAN_KINDS + list(TRAIN_LABEL_KINDS) + ["channel_geometry", "missing_channel", "duplicate_id"]
)
def test_train_refuses_a_bad_case_with_one_line(kind: str, tmp_path: Path, capsys):
    two_channels = kind in ("channel_geometry", "missing_channel")
    data = make_train_set(tmp_path / "data", channels=2 if two_channels else 1)
    run = tmp_path / "run"
    image, label = data / "imagesTr" / "c2_0000.nii.gz", data / "labelsTr" / "c2.nii.gz"
    if kind in SCAN_KINDS:
        image.unlink()
        bad, pattern = image, make_bad(kind, image, tmp_path)
    elif kind in TRAIN_LABEL_KINDS:
        make, pattern = TRAIN_LABEL_KINDS[kind]
        bad = save(label, *make(labels_of(phantom(seed=2))))
    elif kind == "channel_geometry":
        bad = save(data / "imagesTr" / "c2_0001.nii.gz", phantom(seed=2), shifted())
        pattern = r"differs from the case's first channel c2_0000.nii.gz"
    elif kind == "missing_channel":
        (data / "imagesTr" / "c2_0001.nii.gz").unlink()
        bad, pattern = data, r"case 'c2' is missing channel file\(s\) c2_0001"
    else:  # the same case id twice
        save(data / "imagesTr" / "c2_0000.nii", phantom(seed=2))
        bad, pattern = data, r"duplicate case id 'c2' .*c2_0000.nii and imagesTr/c2_0000.nii.gz"
    args = ["train", "--data", data, "--out", run, "--epochs", "1", "--no-progress", *TINY_TRAIN]
    before = snapshot(data)

    rc, err = in_process(capsys, *args)

    assert rc == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"brainseg: error: {bad}: "), err
    assert re.search(pattern, lines[0]), lines[0]
    # No checkpoint (nothing to mistake for a trained model) and no half-written file.
    assert not run.exists() or not list(run.rglob("*.pt")) and not hidden_files(run)
    assert snapshot(data) == before
    if kind == "zeros":  # --debug shows the traceback instead (the exception propagates)
        with pytest.raises(InputError, match="all voxels are zero"):
            main(["--debug", *map(str, args)])


def test_train_cli_refuses_an_all_zero_scan(tmp_path: Path):
    data = make_train_set(tmp_path / "data")
    zero = save(data / "imagesTr" / "c3_0000.nii.gz", np.zeros(SHAPE, np.float32))

    res = cli("train", "--data", data, "--out", tmp_path / "run", "--epochs", "1", "--no-progress", *TINY_TRAIN)

    assert res.returncode == 1
    assert res.stderr.strip() == f"brainseg: error: {zero}: all voxels are zero (an empty scan)"
    assert not list((tmp_path / "run").rglob("*.pt"))


# ----------------------------------------------------------------------------- outputs that cannot be written


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
    # Training on a full disk: the end of test_sigkill_during_training_never_leaves_a_corrupt_checkpoint.


# ----------------------------------------------------------------------------- crashes


@pytest.mark.slow
def test_sigkill_during_training_never_leaves_a_corrupt_checkpoint(tmp_path: Path):
    """Kill (SIGKILL) training again and again, twice while a checkpoint is being written.

    After each kill ``checkpoint_last.pt`` is absent or loads with ``weights_only=True``,
    and ``--resume`` carries on from it. Then a resume on a full disk (RLIMIT_FSIZE)
    fails on one line and leaves the last checkpoint as it was, and a last resume runs
    to the end. (Kill + resume reaching the very same weights as an uninterrupted run:
    ``test_train.py::test_resume_after_a_kill_gives_the_same_losses_and_weights``.)
    """
    data = make_train_set(tmp_path / "data")
    before = snapshot(data)
    run = tmp_path / "run"
    last = run / CHECKPOINT_LAST
    args = ["train", "--data", data, "--out", run, "--no-progress", "--epochs", "1000", *TINY_TRAIN]
    rng = random.Random(0)
    epochs, mid_write = [], 0
    for attempt in range(3):
        stamp = (last.stat().st_ino, last.stat().st_mtime_ns) if last.exists() else None
        log = (tmp_path / f"stderr{attempt}.txt").open("w")
        proc = subprocess.Popen(
            brainseg_cmd(*args, *(["--resume"] if stamp else [])),
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=_env(),
            cwd=REPO,
        )
        deadline = time.monotonic() + 60
        # Wait until this run has saved a checkpoint of its own ...
        while proc.poll() is None and time.monotonic() < deadline:
            if last.exists() and (last.stat().st_ino, last.stat().st_mtime_ns) != stamp:
                break
            time.sleep(0.002)
        # ... then kill it the moment its next checkpoint write is under way, or at a random moment.
        if attempt % 2 == 0:
            old = set(os.listdir(run))  # temp files an earlier kill left behind do not count
            while proc.poll() is None and time.monotonic() < deadline:
                if any(e.name.startswith(f".{CHECKPOINT_LAST}.") and e.name not in old for e in os.scandir(run)):
                    mid_write += 1
                    break
        else:
            time.sleep(rng.uniform(0.0, 0.4))
        assert proc.poll() is None, (tmp_path / f"stderr{attempt}.txt").read_text()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()
        if last.exists():
            state = torch.load(last, map_location="cpu", weights_only=True)
            epochs.append(int(state["epoch"]))
    assert epochs == sorted(epochs) and epochs[0] >= 1, epochs  # each run resumed where the last stopped
    assert mid_write == 2

    # Disk full: config, split and cache are small, a checkpoint is not. The write fails on
    # one line, and the last good checkpoint is still there, unchanged.
    kept = last.read_bytes()
    res = cli("train", *args[1:], "--resume", preexec_fn=file_size_limit(CHECKPOINT_WRITE_LIMIT))
    assert res.returncode == 1
    assert re.fullmatch(
        rf"brainseg: error: {re.escape(str(run))}/checkpoint_(last|best)\.pt: cannot be written \(File too large\)",
        res.stderr.strip(),
    ), res.stderr
    assert last.read_bytes() == kept

    # A last resume runs to the end; temp files a kill left behind are never taken for checkpoints.
    res = cli("train", *args[1:], "--resume", "--epochs", epochs[-1] + 1)
    assert res.returncode == 0, res.stderr
    assert torch.load(run / "checkpoint_final.pt", weights_only=True)["epoch"] == epochs[-1] + 1
    assert resolve_checkpoint(run).name in RUN_PREFERENCE
    assert snapshot(data) == before  # training never touches its data


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
    for cid in ids:
        assert np.asarray(nib.load(str(out / f"{cid}.nii.gz")).dataobj).shape == SHAPE
    # Leftover temp files are ignored (documented; safe to delete): never a scan, never a prediction.
    assert [c.case_id for c in discover_inputs([out])] == ids
    summary = evaluate_folders(out, out, tmp_path / "eval", progress=False)
    assert summary["n_cases"] == len(ids) and summary["failed"] == []
    assert snapshot(scans, tiny_checkpoint) == before  # predict never touches its inputs


# ----------------------------------------------------------------------------- untrusted checkpoints


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
