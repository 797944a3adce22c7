from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (28, 30, 26)


def brain(shape=SHAPE):
    grid = np.indices(shape).astype(np.float32)
    c = [(s - 1) / 2 for s in shape]
    r = sum(((g - ci) / (0.42 * s)) ** 2 for g, ci, s in zip(grid, c, shape))
    label = np.zeros(shape, np.int16)
    label[r < 1.0], label[r < 0.6], label[r < 0.3] = 1, 2, 3
    image = np.choose(label, [0.0, 30.0, 60.0, 90.0]).astype(np.float32)
    image[label > 0] += np.random.default_rng(0).normal(0, 2, int((label > 0).sum())).astype(np.float32)
    return image, label


def save(data, path: Path, affine=None):
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)


def write_dataset(root: Path, n_channels: int = 1) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    channels = {str(i): f"MR{i}" for i in range(n_channels)}
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": channels,
                "labels": {"background": 0, "CSF": 1, "grey": 2, "white": 3},
                "file_ending": ".nii.gz",
            }
        )
    )
    return root


def write_case(root: Path, case: str, image=None, label=None, affine=None, label_affine=None, n_channels: int = 1):
    img, lab = brain()
    image = img if image is None else image
    label = lab if label is None else label
    for c in range(n_channels):
        save(image, root / "imagesTr" / f"{case}_{c:04d}.nii.gz", affine)
    save(label, root / "labelsTr" / f"{case}.nii.gz", label_affine if label_affine is not None else affine)
