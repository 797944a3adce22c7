"""A brainseg training data set in nnU-Net v2's raw layout, and the folders nnU-Net reads from its environment.

``brainseg demo-data`` already writes nnU-Net-like folders (``imagesTr/ID_0000.nii.gz``,
``labelsTr/ID.nii.gz``, a dataset.json with ``channel_names``, ``labels`` name -> value,
``numTraining`` and ``file_ending``), but nnU-Net wants them under
``nnUNet_raw/DatasetXXX_Name/`` and reads only the training cases. :func:`to_nnunet_raw`
copies every training case byte for byte (so each scan keeps its exact header, affine and
qform/sform codes), named ``ID_0000.nii.gz`` ... per channel in the data set's channel order,
and writes a dataset.json holding only what nnU-Net v2 reads. The held-out cases
(``imagesTs``) are not copied: they are predicted from where they are.

The data set is read with brainseg's own discovery (any layout ``brainseg train`` reads,
as long as every file is ``.nii.gz``), so nnU-Net trains on exactly the cases brainseg
trains on.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from brainseg.data.layouts import discover_dataset

FILE_ENDING = ".nii.gz"
DEFAULT_ID = 961
DEFAULT_NAME = "BrainsegDemo"


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``Dataset961_BrainsegDemo``: nnU-Net's folder name (a three-digit id, a name without spaces)."""
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"nnU-Net data set ids are 1-999, not {dataset_id}")
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"nnU-Net data set name {name!r}: letters, digits, '-' and '_' only")
    return f"Dataset{dataset_id:03d}_{name}"


def nnunet_env(root: Path) -> dict[str, str]:
    """The three folders nnU-Net reads from its environment, all under ``root``."""
    root = Path(root)
    return {
        "nnUNet_raw": str(root / "nnUNet_raw"),
        "nnUNet_preprocessed": str(root / "nnUNet_preprocessed"),
        "nnUNet_results": str(root / "nnUNet_results"),
    }


def to_nnunet_raw(data: Path, raw_root: Path, dataset_id: int = DEFAULT_ID, name: str = DEFAULT_NAME) -> dict[str, Any]:
    """Copy ``data``'s training cases to ``raw_root/DatasetXXX_Name`` (made anew); return its dataset.json.

    Raises ValueError for what nnU-Net cannot read: a file that is not ``.nii.gz``, a DICOM
    series, a case without a label, label values that are not 0, 1, ..., n-1.
    """
    ds = discover_dataset(Path(data))
    values = sorted(ds.labels)
    if values != list(range(len(values))):
        raise ValueError(f"{data}: nnU-Net needs consecutive label values 0..n-1, this data set has {values}")
    folder = Path(raw_root) / dataset_folder_name(dataset_id, name)
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for case in ds.train:
        files = [*case.images, case.label]
        if case.label is None or not all(isinstance(f, os.PathLike) and str(f).endswith(FILE_ENDING) for f in files):
            raise ValueError(
                f"{data}: case {case.case_id}: nnU-Net's raw layout here takes labelled {FILE_ENDING} files"
            )
        for k, image in enumerate(case.images):
            shutil.copy2(image, folder / "imagesTr" / f"{case.case_id}_{k:04d}{FILE_ENDING}")
        shutil.copy2(case.label, folder / "labelsTr" / f"{case.case_id}{FILE_ENDING}")  # type: ignore[arg-type]
    meta = {
        "name": folder.name,
        "description": f"brainseg training data {Path(data).resolve()} (training cases only), copied unchanged",
        "channel_names": {str(k): channel for k, channel in enumerate(ds.channels)},
        "labels": {ds.labels[v]: v for v in values},
        "numTraining": len(ds.train),
        "file_ending": FILE_ENDING,
    }
    (folder / "dataset.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta
