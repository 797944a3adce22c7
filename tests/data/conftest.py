from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainseg.data.brats import BRATS_2023, BRATS_CLASSIC
from brainseg.data.cases import DiscoveryError
from brainseg.errors import BrainsegError

_TEMPLATE: dict[str, bytes] = {}


def scan(path: Path) -> Path:
    """Write a valid 4x4x4 scan at ``path`` (.nii or .nii.gz), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    if ext not in _TEMPLATE:
        tmp = path.parent / f"template{ext}"
        nib.save(nib.Nifti1Image(np.arange(64, dtype=np.uint8).reshape(4, 4, 4) % 3, np.eye(4)), str(tmp))
        _TEMPLATE[ext] = tmp.read_bytes()
        tmp.unlink()
    path.write_bytes(_TEMPLATE[ext])
    return path


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def msd(
    root: Path,
    train: dict[str, int],
    test: dict[str, int] | None = None,
    meta: object | None = None,
    labels_ts: bool = False,
) -> Path:
    """An MSD / nnU-Net folder: case id -> number of channels."""
    if meta is not None:
        write_json(root / "dataset.json", meta)
    for cid, n in train.items():
        for c in range(n):
            scan(root / "imagesTr" / f"{cid}_{c:04d}.nii.gz")
        scan(root / "labelsTr" / f"{cid}.nii.gz")
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    for cid, n in (test or {}).items():
        for c in range(n):
            scan(root / "imagesTs" / f"{cid}_{c:04d}.nii.gz")
        if labels_ts:
            scan(root / "labelsTs" / f"{cid}.nii.gz")
    return root


V2 = {"channel_names": {"0": "T1"}, "labels": {"background": 0, "CSF": 1, "GM": 2}, "file_ending": ".nii.gz"}


def brats(root: Path, cid: str, style: str = "classic", seg: bool = True, skip: tuple[str, ...] = ()) -> Path:
    names, sep = (BRATS_CLASSIC, "_") if style == "classic" else (BRATS_2023, "-")
    for name in names + (("seg",) if seg else ()):
        if name not in skip:
            scan(root / cid / f"{cid}{sep}{name}.nii.gz")
    return root / cid


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(DiscoveryError) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, BrainsegError)
    return str(info.value)
