"""``predict`` puts each input channel where the model card says it belongs.

A real tiny checkpoint (conftest's ``tiny_checkpoint_factory``, real weights and card) whose
channels are those of the Decathlon's brain tumour dataset.json (``FLAIR, T1w, t1gd, T2w``)
segments one subject given as a BraTS 2021 folder, a BraTS 2023 folder, ``_000N`` files in
the card's order, files named by channel and an MSD folder whose dataset.json lists another
order: the masks are identical. Real NIfTI files in tmp folders, no mocks.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainseg.errors import BrainsegError
from brainseg.infer.batch import predict
from tests.conftest import BRATS_2021_SEQUENCES, MSD_CHANNELS, save_sequence, sequences

BRATS_2023 = {"t1n": "T1w", "t1c": "t1gd", "t2w": "T2w", "t2f": "FLAIR"}


@pytest.fixture(scope="module")
def model(tiny_checkpoint_factory) -> Path:
    return tiny_checkpoint_factory(channels=MSD_CHANNELS, seed=7)


def _mask(model: Path, inputs: list[Path], out: Path) -> np.ndarray:
    result = predict(model, inputs, out, device="cpu")
    assert result.summary.failed == [] and result.summary.written == ["S1"], result.summary
    return np.asarray(nib.load(str(out / "S1.nii.gz")).dataobj)


def test_the_same_masks_from_brats_folders_and_channel_files(model, tmp_path):
    seq = sequences()
    b21 = tmp_path / "brats21" / "S1"
    for name, s in BRATS_2021_SEQUENCES.items():
        save_sequence(b21 / f"S1_{name}.nii.gz", seq[s])
    b23 = tmp_path / "brats23" / "S1"
    for name, s in BRATS_2023.items():
        save_sequence(b23 / f"S1-{name}.nii.gz", seq[s])
    files = [save_sequence(tmp_path / "msd" / f"S1_{i:04d}.nii.gz", seq[s]) for i, s in enumerate(MSD_CHANNELS)]
    named = [  # files named by channel, synonyms and any case, in no particular order
        save_sequence(tmp_path / "named" / f"S1_{n}.nii.gz", seq[s])
        for n, s in (("T2", "T2w"), ("T1-Gd", "t1gd"), ("flair", "FLAIR"), ("MPRAGE", "T1w"))
    ]
    other = ("T2w", "t1gd", "FLAIR", "T1w")  # an MSD folder whose dataset.json has another order
    root = tmp_path / "other_msd"
    (root / "imagesTs").mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"channel_names": dict(enumerate(other)), "labels": {"0": "bg"}}))
    for i, s in enumerate(other):
        save_sequence(root / "imagesTs" / f"S1_{i:04d}.nii.gz", seq[s])

    reference = _mask(model, [tmp_path / "msd"], tmp_path / "out_msd")
    assert len(np.unique(reference)) > 1  # the model does tell places apart
    for name, inputs in {
        "brats21_root": [tmp_path / "brats21"],
        "brats21_case": [b21],
        "brats23_root": [tmp_path / "brats23"],
        "files": files[::-1],
        "named": named,
        "other_msd": [root],
    }.items():
        assert np.array_equal(_mask(model, inputs, tmp_path / f"out_{name}"), reference), name

    # the order matters: the same files fed in BraTS order give another mask
    wrong = tmp_path / "wrong"
    for i, s in enumerate(("T1w", "t1gd", "T2w", "FLAIR")):
        save_sequence(wrong / f"S1_{i:04d}.nii.gz", seq[s])
    assert not np.array_equal(_mask(model, [wrong], tmp_path / "out_wrong"), reference)


def _one_line_error(*args, **kwargs) -> str:
    with pytest.raises(BrainsegError) as info:
        predict(*args, device="cpu", **kwargs)
    text = str(info.value)
    assert "\n" not in text
    return text


def test_a_missing_channel_is_one_line_naming_it_and_the_case(model, tmp_path):
    seq = sequences()
    for name, s in BRATS_2021_SEQUENCES.items():
        if name != "flair":
            save_sequence(tmp_path / "in" / "S1" / f"S1_{name}.nii.gz", seq[s])
    msg = _one_line_error(model, [tmp_path / "in"], tmp_path / "out")
    assert "'S1'" in msg and "missing flair" in msg and "'FLAIR'" in msg, msg
    for n in ("T1w", "T1gd", "T2w"):
        save_sequence(tmp_path / "named" / f"S2_{n}.nii.gz", seq[n if n != "T1gd" else "t1gd"])
    msg = _one_line_error(model, sorted((tmp_path / "named").iterdir()), tmp_path / "out2")
    assert "'S2'" in msg and "'FLAIR'" in msg, msg
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_an_unknown_model_channel_is_one_line_naming_it_and_the_case(tiny_checkpoint_factory, tmp_path):
    model = tiny_checkpoint_factory(channels=("FLAIR", "T1w", "t1gd", "DWI"))
    seq = sequences()
    for name, s in BRATS_2023.items():
        save_sequence(tmp_path / "in" / "S1" / f"S1-{name}.nii.gz", seq[s])
    msg = _one_line_error(model, [tmp_path / "in"], tmp_path / "out")
    assert "'DWI'" in msg and "'S1'" in msg and "not an MR sequence" in msg, msg
