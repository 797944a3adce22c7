"""Channels by name: ``predict`` puts each input channel where the model card says it belongs.

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

from brainseg.data.brats import sequence_of
from brainseg.data.cases import DiscoveryError
from brainseg.data.inputs import discover_inputs
from brainseg.errors import BrainsegError
from brainseg.infer.batch import predict
from brainseg.io.images import Geometry, write_image

MSD_CHANNELS = ("FLAIR", "T1w", "t1gd", "T2w")  # Task01_BrainTumour's dataset.json order
SHAPE = (24, 24, 24)
AFFINE = np.diag([1.5, 1.5, 1.5, 1.0])  # the tiny model's spacing: no resampling


def _sequences() -> dict[str, np.ndarray]:
    """One subject's four sequences: a head whose inner structures differ per sequence."""
    rng = np.random.default_rng(3)
    grid = np.indices(SHAPE, dtype=np.float64)
    r = np.sqrt(sum((g - 11.5) ** 2 for g in grid))
    head = r < 10.0
    blob = np.sqrt((grid[0] - 8) ** 2 + (grid[1] - 14) ** 2 + (grid[2] - 12) ** 2) < 4.0
    base = 100.0 + 10.0 * rng.standard_normal(SHAPE)
    out = {
        "FLAIR": base + 80.0 * blob,
        "T1w": base + 40.0 * (r < 6.0),
        "t1gd": base + 120.0 * (blob & (grid[2] > 12)),
        "T2w": 300.0 - base - 60.0 * (r < 6.0),
    }
    return {k: np.where(head, v, 0.0).astype(np.float32) for k, v in out.items()}


def _save(path: Path, data: np.ndarray) -> Path:
    return write_image(path, data, Geometry(shape=data.shape, affine=AFFINE))


# which sequence each BraTS name holds
BRATS_2021 = {"t1": "T1w", "t1ce": "t1gd", "t2": "T2w", "flair": "FLAIR"}
BRATS_2023 = {"t1n": "T1w", "t1c": "t1gd", "t2w": "T2w", "t2f": "FLAIR"}


@pytest.fixture(scope="module")
def model(tiny_checkpoint_factory) -> Path:
    return tiny_checkpoint_factory(channels=MSD_CHANNELS, seed=7)


def _mask(model: Path, inputs: list[Path], out: Path) -> np.ndarray:
    result = predict(model, inputs, out, device="cpu")
    assert result.summary.failed == [] and result.summary.written == ["S1"], result.summary
    return np.asarray(nib.load(str(out / "S1.nii.gz")).dataobj)


def test_the_same_masks_from_brats_folders_and_channel_files(model, tmp_path):
    seq = _sequences()
    b21 = tmp_path / "brats21" / "S1"
    for name, s in BRATS_2021.items():
        _save(b21 / f"S1_{name}.nii.gz", seq[s])
    b23 = tmp_path / "brats23" / "S1"
    for name, s in BRATS_2023.items():
        _save(b23 / f"S1-{name}.nii.gz", seq[s])
    files = [_save(tmp_path / "msd" / f"S1_{i:04d}.nii.gz", seq[s]) for i, s in enumerate(MSD_CHANNELS)]
    named = [  # files named by channel, synonyms and any case, in no particular order
        _save(tmp_path / "named" / f"S1_{n}.nii.gz", seq[s])
        for n, s in (("T2", "T2w"), ("T1-Gd", "t1gd"), ("flair", "FLAIR"), ("MPRAGE", "T1w"))
    ]
    other = ("T2w", "t1gd", "FLAIR", "T1w")  # an MSD folder whose dataset.json has another order
    root = tmp_path / "other_msd"
    (root / "imagesTs").mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"channel_names": dict(enumerate(other)), "labels": {"0": "bg"}}))
    for i, s in enumerate(other):
        _save(root / "imagesTs" / f"S1_{i:04d}.nii.gz", seq[s])

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
        _save(wrong / f"S1_{i:04d}.nii.gz", seq[s])
    assert not np.array_equal(_mask(model, [wrong], tmp_path / "out_wrong"), reference)


def _one_line_error(*args, **kwargs) -> str:
    with pytest.raises(BrainsegError) as info:
        predict(*args, device="cpu", **kwargs)
    text = str(info.value)
    assert "\n" not in text
    return text


def test_a_missing_channel_is_one_line_naming_it_and_the_case(model, tmp_path):
    seq = _sequences()
    for name, s in BRATS_2021.items():
        if name != "flair":
            _save(tmp_path / "in" / "S1" / f"S1_{name}.nii.gz", seq[s])
    msg = _one_line_error(model, [tmp_path / "in"], tmp_path / "out")
    assert "'S1'" in msg and "missing flair" in msg and "'FLAIR'" in msg, msg
    for n in ("T1w", "T1gd", "T2w"):
        _save(tmp_path / "named" / f"S2_{n}.nii.gz", seq[n if n != "T1gd" else "t1gd"])
    msg = _one_line_error(model, sorted((tmp_path / "named").iterdir()), tmp_path / "out2")
    assert "'S2'" in msg and "'FLAIR'" in msg, msg
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_an_unknown_model_channel_is_one_line_naming_it_and_the_case(tiny_checkpoint_factory, tmp_path):
    model = tiny_checkpoint_factory(channels=("FLAIR", "T1w", "t1gd", "DWI"))
    seq = _sequences()
    for name, s in BRATS_2023.items():
        _save(tmp_path / "in" / "S1" / f"S1-{name}.nii.gz", seq[s])
    msg = _one_line_error(model, [tmp_path / "in"], tmp_path / "out")
    assert "'DWI'" in msg and "'S1'" in msg and "not an MR sequence" in msg, msg


def test_sequence_names_and_synonyms():
    groups = {
        "t1c": ["t1gd", "T1ce", "t1c", "T1-Gd", "t1post", "T1_CE", "t1+c"],
        "flair": ["flair", "FLAIR", "t2f", "T2-FLAIR", "t2_flair"],
        "t1": ["t1w", "T1n", "t1", "MPRAGE", "T1W"],
        "t2": ["t2w", "T2", "T2W"],
    }
    for seq, names in groups.items():
        assert {sequence_of(n) for n in names} == {seq}, seq
    assert sequence_of("DWI") is None and sequence_of("CT") is None and sequence_of("t1t2") is None


def test_discovery_orders_by_name_and_keeps_index_order_without_names(tmp_path):
    seq = _sequences()
    d = tmp_path / "in"
    for i, s in enumerate(MSD_CHANNELS):
        _save(d / f"a_{i:04d}.nii.gz", seq[s])
    # _000N files: index order whatever the names (nnU-Net's rule)
    (case,) = discover_inputs([d], channel_names=("T2w", "t1gd", "T1w", "FLAIR"))
    assert [p.name for p in case.images] == [f"a_{i:04d}.nii.gz" for i in range(4)]
    (case,) = discover_inputs([d], n_channels=4)
    assert [p.name for p in case.images] == [f"a_{i:04d}.nii.gz" for i in range(4)]
    # a one-channel model takes its sequence out of a BraTS folder
    for name, s in BRATS_2021.items():
        _save(tmp_path / "b" / "B1" / f"B1_{name}.nii.gz", seq[s])
    (case,) = discover_inputs([tmp_path / "b"], channel_names=("T1w",))
    assert [p.name for p in case.images] == ["B1_t1.nii.gz"]
    with pytest.raises(DiscoveryError, match="the model's channel 'ADC'"):
        discover_inputs([tmp_path / "b"], channel_names=("ADC",))
