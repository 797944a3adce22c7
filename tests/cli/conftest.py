from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainseg.cli import main
from tests.conftest import REPO

SHAPE = (20, 24, 18)


AFFINE = np.diag([1.5, 1.5, 1.5, 1.0])  # the tiny checkpoint's spacing: no resampling


IS_ROOT = os.geteuid() == 0


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
