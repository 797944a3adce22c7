"""File-name rules shared by every module: the scan suffixes and the channel suffix.

A scan file ends in one of :data:`IMAGE_SUFFIXES` (matched case-insensitively). A
multi-channel case is one file per channel, named ``ID_0000``, ``ID_0001``, ... (the
nnU-Net channel suffix: an underscore and exactly four ASCII digits). This module
imports nothing from brainseg, so every layer can use it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: The checkpoints a run folder holds (written by training, read by ``load_model``).
CHECKPOINT_LAST = "checkpoint_last.pt"
CHECKPOINT_BEST = "checkpoint_best.pt"
CHECKPOINT_FINAL = "checkpoint_final.pt"
#: ``--checkpoint`` names: one file of a run folder, exactly.
CHECKPOINT_CHOICES = {"final": CHECKPOINT_FINAL, "best": CHECKPOINT_BEST, "last": CHECKPOINT_LAST}
#: Where a run folder keeps its training set's fingerprint (training writes it, ``brainseg info`` reads it).
FINGERPRINT_FILE = "fingerprint.json"
#: A run folder's cross-validation scores, when it holds them.
CV_SUMMARY_FILES = ("cv_summary.json", "cv_summary.csv")
#: A cross-validation run's folds (``RUN/splits.json``, nnU-Net's form), its fold folders
#: (``RUN/fold_0``, ...) and its out-of-fold masks (``RUN/cv_predictions``).
SPLITS_FILE = "splits.json"
FOLD_PREFIX = "fold_"
CV_PREDICTIONS = "cv_predictions"
#: What a cross-validation chose after its folds: the decision (and its pooled Dice) and the
#: quality score's calibration set (each out-of-fold case, clean and degraded).
CV_DECISION = "cv_decision.json"
CV_QUALITY = "cv_quality.json"

NIFTI_GZ = ".nii.gz"
NIFTI_SUFFIXES = (NIFTI_GZ, ".nii")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
IMAGE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES

#: The nnU-Net channel suffix at the end of a file stem or case id: ``_0000``, ``_0001``, ...
CHANNEL_SUFFIX = re.compile(r"_(?P<ch>[0-9]{4})$")
#: What ``brainseg predict --save-probabilities`` adds to a case id: ``ID_probabilities.nii.gz``.
PROBABILITIES_TAG = "_probabilities"
#: What ``--save-uncertainty`` adds to a case id: ``ID_uncertainty.nii.gz``.
UNCERTAINTY_TAG = "_uncertainty"
#: The tags of the maps written beside a mask ``ID`` (not masks themselves).
MAP_TAGS = (PROBABILITIES_TAG, UNCERTAINTY_TAG)


def image_suffix(path: str | os.PathLike) -> str | None:
    """The recognised image suffix of ``path`` (``.nii.gz``, ``.nii``, …) or None."""
    name = Path(path).name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return None


def strip_suffix(path: str | os.PathLike) -> str:
    """File name without its image suffix: ``sub-01_T1w.nii.gz`` -> ``sub-01_T1w``."""
    name = Path(path).name
    suffix = image_suffix(name)
    return name[: -len(suffix)] if suffix else Path(name).stem


def is_image_file(path: str | os.PathLike) -> bool:
    p = Path(path)
    return image_suffix(p) is not None and not p.name.startswith(".")


def channel_tag(index: int) -> str:
    """The digits of channel ``index`` in a file name: ``0`` -> ``"0000"``."""
    return f"{index:04d}"


def channel_stem(case_id: str, index: int) -> str:
    """The file stem of channel ``index`` of a case: ``("c7", 1)`` -> ``"c7_0001"``."""
    return f"{case_id}_{channel_tag(index)}"


def split_channel(stem: str) -> tuple[str, int] | None:
    """``(case id, channel index)`` of a stem with a channel suffix, else None."""
    m = CHANNEL_SUFFIX.search(stem)
    return (stem[: m.start()], int(m["ch"])) if m else None
