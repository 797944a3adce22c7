"""`brainseg train` refuses a bad case with one line and never leaves a corrupt checkpoint.

A bad training case stops ``train`` at the first one, so the training matrix goes through
the same entry point (:func:`brainseg.cli.main`) in this process, with one real subprocess
for the all-zero scan; the crash is a real ``SIGKILL`` of a real training subprocess.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from brainseg.cli import main
from brainseg.errors import InputError
from brainseg.model.checkpoint import CHECKPOINT_LAST, RUN_PREFERENCE, resolve_checkpoint
from tests.cli.conftest import (
    AFFINE,
    SCAN_KINDS,
    SHAPE,
    TINY_TRAIN,
    _env,
    brainseg_cmd,
    cli,
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
from tests.conftest import REPO

# Bigger than config.yaml, split.json, the cache and TensorBoard's events; smaller than a checkpoint.
CHECKPOINT_WRITE_LIMIT = 40_000  # cache files here are <= 25 kB, a checkpoint ~70 kB


def hidden_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


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


@pytest.mark.slow
def test_sigkill_during_training_never_leaves_a_corrupt_checkpoint(tmp_path: Path):
    """Kill (SIGKILL) training again and again, twice while a checkpoint is being written.

    After each kill ``checkpoint_last.pt`` is absent or loads with ``weights_only=True``,
    and ``--resume`` carries on from it. Then a resume on a full disk (RLIMIT_FSIZE)
    fails on one line and leaves the last checkpoint as it was, and a last resume runs
    to the end. (Kill + resume reaching the very same weights as an uninterrupted run:
    ``train/test_trainer.py::test_resume_after_a_kill_gives_the_same_losses_and_weights``.)
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
