"""``predict`` puts each input channel where the model card says it belongs.

A real tiny checkpoint (conftest's ``tiny_checkpoint_factory``, real weights and card) whose
channels are those of the Decathlon's brain tumour dataset.json (``FLAIR, T1w, t1gd, T2w``)
segments one subject given as a BraTS 2021 folder, a BraTS 2023 folder, ``_000N`` files in
the card's order, files named by channel and an MSD folder whose dataset.json lists another
order: the masks are identical. Real NIfTI files in tmp folders, no mocks.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brainseg.config import PostprocessConfig, load_config
from brainseg.errors import BrainsegError
from brainseg.infer.batch import predict
from brainseg.infer.outputs import check_output_folder
from brainseg.infer.predictor import (
    Predictor,
    inference_attempts,
    run_with_oom_fallback,
)
from brainseg.model.checkpoint import load_model
from brainseg.postprocess.components import postprocess_labels
from tests.conftest import BRATS_2021_SEQUENCES, MSD_CHANNELS, REPO, save_sequence, sequences

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


# ---- test_predict.py: Batch prediction: real NIfTI files, a real tiny model, the real CLI in a subprocess.
LABELS = {0, 1, 2}
BASE_SHAPE = (20, 24, 18)
LPS_SPACING = (1.2, 1.0, 2.0)


# ----------------------------------------------------------------------------- helpers


def run_cli(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m brainseg predict ...`` in a subprocess (stdout/stderr captured)."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    full_env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **(env or {}))
    cmd = [sys.executable, "-m", "brainseg", "predict", *map(str, args), "--no-progress"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO)


def head_phantom(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """An off-centre textured ellipsoid (zero outside), so flips and swaps are visible."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float64)
    centre = [0.32 * shape[0], 0.36 * shape[1], 0.4 * shape[2]]
    radii = [0.22 * shape[0], 0.24 * shape[1], 0.26 * shape[2]]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0
    texture = 100 + 40 * np.sin(grid[0] / 2.0) * np.cos(grid[1] / 3.0) + 10 * rng.standard_normal(shape)
    return np.where(inside, np.maximum(texture, 1.0), 0.0).astype(np.float32)


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, qform_code: int = 1, sform_code: int = 1) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=qform_code)
    img.set_sform(affine, code=sform_code)
    nib.save(img, str(path))
    return path


def reoriented(data: np.ndarray, affine: np.ndarray, axcodes: str) -> tuple[np.ndarray, np.ndarray]:
    """The same head (same world positions) stored in the voxel order ``axcodes``."""
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(tuple(axcodes))
    )
    new = nib.orientations.apply_orientation(data, transform)
    new_affine = affine @ nib.orientations.inv_ornt_aff(transform, data.shape)
    return np.ascontiguousarray(new), new_affine


def to_ras(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return nib.orientations.apply_orientation(data, nib.orientations.io_orientation(affine))


def rotation(degrees_z: float, degrees_x: float) -> np.ndarray:
    a, b = np.deg2rad(degrees_z), np.deg2rad(degrees_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def make_scans(folder: Path) -> dict[str, Path]:
    """RAS, LAS, LPS, PIR copies of one head, plus an oblique and an anisotropic scan."""
    folder.mkdir(parents=True, exist_ok=True)
    base = head_phantom(BASE_SHAPE)
    ras_affine = np.diag([*LPS_SPACING, 1.0])
    ras_affine[:3, 3] = [-11.0, -12.5, -17.0]
    files = {"ras": save_nifti(folder / "ras.nii.gz", base, ras_affine)}
    for codes, (qc, sc) in {"LAS": (1, 1), "LPS": (2, 2), "PIR": (1, 0)}.items():
        data, affine = reoriented(base, ras_affine, codes)
        files[codes.lower()] = save_nifti(folder / f"{codes.lower()}.nii.gz", data, affine, qc, sc)

    oblique = np.eye(4)
    oblique[:3, :3] = rotation(20.0, 12.0) @ np.diag([1.1, 1.0, 1.3])
    oblique[:3, 3] = [5.0, -20.0, 3.0]
    files["oblique"] = save_nifti(
        folder / "oblique.nii.gz", head_phantom(BASE_SHAPE, seed=1).astype(np.int16), oblique, 0, 2
    )
    aniso = np.diag([0.8, 0.8, 3.0, 1.0])
    files["aniso"] = save_nifti(folder / "aniso.nii.gz", head_phantom((26, 28, 8), seed=2), aniso, 1, 4)
    return files


def box_margin_mask(data: np.ndarray, spacing: tuple[float, ...], margin_mm: float) -> np.ndarray:
    """True where a voxel lies more than ``margin_mm`` outside the non-zero bounding box."""
    nonzero = np.argwhere(data != 0)
    lo, hi = nonzero.min(axis=0), nonzero.max(axis=0)
    grid = np.indices(data.shape)
    far = np.zeros(data.shape, dtype=bool)
    for axis in range(3):
        m = int(np.ceil(margin_mm / spacing[axis]))
        far |= (grid[axis] < lo[axis] - m) | (grid[axis] > hi[axis] + m)
    return far


# ----------------------------------------------------------------------------- one CLI run, many checks


@pytest.fixture(scope="module")
def predicted(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path):
    root = tmp_path_factory.mktemp("predict_orient")
    scans = make_scans(root / "scans")
    out = root / "out"
    result = run_cli("--model", tiny_checkpoint, "--input", root / "scans", "--output", out, "--save-probabilities")
    assert result.returncode == 0, result.stderr
    return scans, out, result


@pytest.mark.parametrize("name", ["ras", "las", "lps", "pir", "oblique", "aniso"])
def test_mask_keeps_the_scan_geometry_exactly(predicted, name: str):
    scans, out, _ = predicted
    src = nib.load(str(scans[name]))
    mask = nib.load(str(out / f"{name}.nii.gz"))
    assert mask.shape == src.shape
    np.testing.assert_allclose(mask.affine, src.affine, atol=1e-6, rtol=0)
    for form in ("qform", "sform"):
        src_matrix, src_code = getattr(src.header, f"get_{form}")(coded=True)
        out_matrix, out_code = getattr(mask.header, f"get_{form}")(coded=True)
        assert int(out_code) == int(src_code), form
        if src_matrix is not None:
            np.testing.assert_allclose(out_matrix, src_matrix, atol=1e-6, rtol=0)
    np.testing.assert_allclose(mask.header.get_zooms()[:3], src.header.get_zooms()[:3], atol=1e-6)
    assert np.issubdtype(mask.get_data_dtype(), np.integer)
    values = np.asarray(mask.dataobj)
    assert np.issubdtype(values.dtype, np.integer)
    assert set(np.unique(values).tolist()) <= LABELS


def test_lps_scan_with_anisotropic_voxels_keeps_its_grid(predicted):
    """Acceptance: an LPS scan with 1.2 x 1.0 x 2.0 mm voxels gets a mask on its exact grid."""
    scans, out, _ = predicted
    src = nib.load(str(scans["lps"]))
    assert nib.aff2axcodes(src.affine) == ("L", "P", "S")
    np.testing.assert_allclose(src.header.get_zooms(), LPS_SPACING, atol=1e-6)
    mask = nib.load(str(out / "lps.nii.gz"))
    assert mask.shape == src.shape == BASE_SHAPE
    np.testing.assert_allclose(mask.affine, src.affine, atol=1e-6, rtol=0)
    assert nib.aff2axcodes(mask.affine) == ("L", "P", "S")
    assert (int(mask.header["qform_code"]), int(mask.header["sform_code"])) == (2, 2)


def test_same_head_in_any_voxel_order_gives_the_same_segmentation(predicted):
    scans, out, _ = predicted
    ras = np.asarray(nib.load(str(out / "ras.nii.gz")).dataobj)
    head = nib.load(str(scans["ras"])).get_fdata() != 0
    assert len(np.unique(ras[head])) >= 2, "the tiny model should give a non-trivial segmentation"
    assert np.unique(ras[head], return_counts=True)[1].min() > 10
    for name in ("las", "lps", "pir"):
        img = nib.load(str(out / f"{name}.nii.gz"))
        in_ras = to_ras(np.asarray(img.dataobj), img.affine)
        assert in_ras.shape == ras.shape
        assert np.array_equal(in_ras, ras), name


@pytest.mark.parametrize("name", ["ras", "lps", "pir", "oblique", "aniso"])
def test_segmentation_sits_on_the_head(predicted, name: str):
    """Far outside the head's box everything is background: a flipped or swapped axis would fail."""
    scans, out, _ = predicted
    src = nib.load(str(scans[name]))
    data = np.asarray(src.dataobj)
    mask = np.asarray(nib.load(str(out / f"{name}.nii.gz")).dataobj)
    far = box_margin_mask(data, src.header.get_zooms()[:3], margin_mm=3.5)
    assert far.sum() > 0.2 * far.size  # the phantom is off-centre: much of the volume is far
    assert not mask[far].any()
    assert (mask[data != 0] != 0).mean() > 0.3  # and the head itself is mostly labelled


@pytest.mark.parametrize("name", ["lps", "oblique", "aniso"])
def test_probabilities_sum_to_one_and_match_the_mask(predicted, name: str):
    scans, out, _ = predicted
    src = nib.load(str(scans[name]))
    img = nib.load(str(out / f"{name}_probabilities.nii.gz"))
    probs = np.asarray(img.dataobj)
    assert probs.dtype == np.float32
    assert probs.shape == (*src.shape, len(LABELS))
    np.testing.assert_allclose(img.affine, src.affine, atol=1e-6, rtol=0)
    assert probs.min() >= 0.0
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-5)
    # The card's postprocess section is empty, so the mask is the plain argmax.
    mask = np.asarray(nib.load(str(out / f"{name}.nii.gz")).dataobj)
    assert np.array_equal(np.argmax(probs, axis=-1), mask)


def test_volumes_csv_lists_each_case_in_mm3(predicted):
    scans, out, result = predicted
    with open(out / "volumes.csv", newline="") as fh:
        rows = {row["case"]: row for row in csv.DictReader(fh)}
    assert set(rows) == set(scans)
    for name in ("lps", "aniso"):
        img = nib.load(str(out / f"{name}.nii.gz"))
        mask = np.asarray(img.dataobj)
        voxel = float(np.prod(img.header.get_zooms()[:3]))
        assert float(rows[name]["a_mm3"]) == pytest.approx((mask == 1).sum() * voxel, abs=1e-3)
        assert float(rows[name]["b_mm3"]) == pytest.approx((mask == 2).sum() * voxel, abs=1e-3)
    assert "6 written, 0 skipped, 0 failed" in result.stdout
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_postprocessing_is_applied_to_the_argmax(tmp_path: Path, tiny_checkpoint: Path):
    scan = save_nifti(tmp_path / "s.nii.gz", head_phantom(BASE_SHAPE), np.diag([*LPS_SPACING, 1.0]))
    model, card = load_model(tiny_checkpoint)
    post = PostprocessConfig(largest_component=[1, 2], min_size_mm3={1: 30.0, 2: 30.0})
    predictor = Predictor(model, card, load_config().infer, post, "cpu")
    labels, probs, geometry = predictor.predict_case([scan], return_probabilities=True)
    raw = np.argmax(probs, axis=0)
    assert not np.array_equal(labels, raw), "the clean-up should change this prediction"
    assert np.array_equal(labels, postprocess_labels(raw.astype(np.uint8), LPS_SPACING, post))


def test_a_predictor_leaves_the_callers_model_as_it_was(tmp_path: Path, tiny_checkpoint: Path):
    """Eval mode, channels-last, the folded/fused norms and the device are the predictor's own copy's
    (``Predictor.network``); the caller's model keeps its mode, layout and values, before and after a case."""
    scan = save_nifti(tmp_path / "s.nii.gz", head_phantom(BASE_SHAPE), np.diag([*LPS_SPACING, 1.0]))
    model, card = load_model(tiny_checkpoint)
    model.train()
    values = {k: v.clone() for k, v in model.state_dict().items()}
    layouts = [(p.stride(), p.data_ptr()) for p in model.parameters()]
    infer = replace(load_config().infer, channels_last=True, mirror=True)
    predictor = Predictor(model, card, infer, PostprocessConfig(), "cpu")
    predictor.predict_case([scan], return_probabilities=True)
    assert model.training and [(p.stride(), p.data_ptr()) for p in model.parameters()] == layouts
    assert all(torch.equal(v, values[k]) for k, v in model.state_dict().items())
    network = predictor.network
    assert not network.training and network is not model
    conv = next(m for m in network.modules() if isinstance(m, torch.nn.Conv3d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert not conv.weight.is_contiguous()
    assert not {p.data_ptr() for p in network.parameters()} & {p.data_ptr() for p in model.parameters()}


# ----------------------------------------------------------------------------- skip / overwrite


def test_existing_outputs_are_skipped_unless_overwrite(tmp_path: Path, tiny_checkpoint: Path):
    scans = tmp_path / "scans"
    scans.mkdir()
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    save_nifti(scans / "subj_0000.nii.gz", head_phantom(BASE_SHAPE), affine)
    out = tmp_path / "out"
    args = ("--model", tiny_checkpoint.parent, "--input", scans, "--output", out)

    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    mask = out / "subj.nii.gz"  # ID_0000 -> ID
    before = mask.stat()

    second = run_cli(*args)
    assert second.returncode == 0, second.stderr
    assert "0 written, 1 skipped, 0 failed" in second.stdout
    after = mask.stat()
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)

    third = run_cli(*args, "--overwrite")
    assert third.returncode == 0, third.stderr
    assert "1 written, 0 skipped, 0 failed" in third.stdout
    redone = mask.stat()
    assert (redone.st_mtime_ns, redone.st_ino) != (before.st_mtime_ns, before.st_ino)


@pytest.mark.slow
def test_torchrun_ranks_share_the_cases(tmp_path: Path, tiny_checkpoint: Path):
    """Under torchrun each rank takes cases[r::world]; the run leaves one volumes.csv with every
    case (in input order) and one brainseg_run.json, and no rank's part; a rerun skips them all."""
    scans = tmp_path / "scans"
    scans.mkdir()
    for i, name in enumerate(("a", "b", "c")):
        save_nifti(scans / f"{name}.nii.gz", head_phantom(BASE_SHAPE, seed=i), np.diag([1.5, 1.5, 1.5, 1.0]))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "brainseg", "predict", "--model", str(tiny_checkpoint), "--input", str(scans)]
    cmd += ["--output", str(out), "--device", "cpu", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")

    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)

    assert first.returncode == 0, first.stderr
    assert "rank 0/2: 2 written" in first.stdout and "rank 1/2: 1 written" in first.stdout, first.stdout
    expected = ["a.nii.gz", "b.nii.gz", "brainseg_run.json", "c.nii.gz", "volumes.csv"]
    assert sorted(p.name for p in out.iterdir()) == expected  # no volumes_rank*.csv, no hidden parts
    with open(out / "volumes.csv", newline="") as fh:
        assert [row["case"] for row in csv.DictReader(fh)] == ["a", "b", "c"]
    record = json.loads((out / "brainseg_run.json").read_text())
    (run,) = record["runs"]
    assert run["world_size"] == 2 and run["devices"] == ["cpu", "cpu"]
    assert sorted(run["written"]) == ["a", "b", "c"] and run["skipped"] == []
    assert sorted(record["cases"]) == ["a", "b", "c"]
    assert {c["run"] for c in record["cases"].values()} == {run["id"]}
    volumes = (out / "volumes.csv").read_bytes()

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)

    assert second.returncode == 0, second.stderr
    assert "rank 0/2: 0 written, 2 skipped" in second.stdout and "rank 1/2: 0 written, 1 skipped" in second.stdout
    assert sorted(p.name for p in out.iterdir()) == expected
    assert (out / "volumes.csv").read_bytes() == volumes  # nothing predicted: the table stays
    again = json.loads((out / "brainseg_run.json").read_text())
    assert [r["id"] for r in again["runs"]][0] == run["id"] and len(again["runs"]) == 2
    assert sorted(again["runs"][1]["skipped"]) == ["a", "b", "c"]
    assert again["cases"] == record["cases"]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG file, read from its IHDR chunk (after checking the signature)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_preview_writes_one_png_per_case(tmp_path: Path, tiny_checkpoint: Path):
    scans = tmp_path / "scans"
    scans.mkdir()
    for i, name in enumerate(("a", "b")):
        save_nifti(scans / f"{name}.nii.gz", head_phantom(BASE_SHAPE, seed=i), np.diag([1.5, 1.5, 1.5, 1.0]))
    out = tmp_path / "out"

    result = run_cli("--model", tiny_checkpoint, "--input", scans, "--output", out, "--preview")

    assert result.returncode == 0, result.stderr
    for name in ("a", "b"):
        assert png_size(out / f"{name}_preview.png") == (1200, 460)  # 12 x 4.6 inches at 100 dpi
    record = json.loads((out / "brainseg_run.json").read_text())
    assert record["cases"]["a"]["outputs"] == {"mask": "a.nii.gz", "preview": "a_preview.png"}
    (out / "b_preview.png").unlink()  # a missing preview is a missing output: that case is redone
    again = run_cli("--model", tiny_checkpoint, "--input", scans, "--output", out, "--preview")
    assert "1 written, 1 skipped, 0 failed" in again.stdout, again.stdout
    assert png_size(out / "b_preview.png") == (1200, 460)


# ----------------------------------------------------------------------------- failures


def test_corrupt_files_fail_alone_with_one_line_each(tmp_path: Path, tiny_checkpoint: Path):
    scans = tmp_path / "scans"
    scans.mkdir()
    good = save_nifti(scans / "good.nii.gz", head_phantom(BASE_SHAPE), np.diag([1.5, 1.5, 1.5, 1.0]))
    truncated = scans / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = scans / "garbage.nii.gz"
    garbage.write_bytes(np.random.default_rng(0).bytes(3000))
    out = tmp_path / "out"

    result = run_cli("--model", tiny_checkpoint, "--input", scans, "--output", out)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    for bad in (truncated, garbage):
        naming = [line for line in lines if bad.name in line]
        assert len(naming) == 1, result.stderr
        assert naming[0].startswith(f"brainseg: error: {bad}")
    assert "1 written, 0 skipped, 2 failed" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["brainseg_run.json", "good.nii.gz", "volumes.csv"]
    with open(out / "volumes.csv", newline="") as fh:
        assert [row["case"] for row in csv.DictReader(fh)] == ["good"]
    assert sorted(p.name for p in scans.iterdir()) == ["garbage.nii.gz", "good.nii.gz", "truncated.nii.gz"]


def test_case_missing_a_channel_is_named(tmp_path: Path, tiny_checkpoint_factory: Callable[..., Path]):
    checkpoint = tiny_checkpoint_factory(channels=("T1", "T2"))
    scans = tmp_path / "scans"
    scans.mkdir()
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    for name in ("full_0000", "full_0001", "partial_0000"):
        save_nifti(scans / f"{name}.nii.gz", head_phantom(BASE_SHAPE), affine)
    out = tmp_path / "out"

    result = run_cli("--model", checkpoint, "--input", scans, "--output", out)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "partial" in result.stderr
    assert "brainseg: error:" in result.stderr
    assert not out.exists() or not any(out.glob("*.nii.gz"))


def test_two_channel_model_predicts_a_complete_case(tmp_path: Path, tiny_checkpoint_factory: Callable[..., Path]):
    checkpoint = tiny_checkpoint_factory(channels=("T1", "T2"))
    affine = np.diag([1.2, 1.0, 2.0, 1.0])
    t1 = save_nifti(tmp_path / "c_0000.nii.gz", head_phantom(BASE_SHAPE, seed=3), affine)
    t2 = save_nifti(tmp_path / "c_0001.nii.gz", head_phantom(BASE_SHAPE, seed=4), affine)
    model, card = load_model(checkpoint)
    config = load_config()
    predictor = Predictor(model, card, config.infer, config.postprocess, "cpu")
    labels, probs, geometry = predictor.predict_case([t1, t2], return_probabilities=True)
    assert labels.shape == geometry.shape == BASE_SHAPE
    assert probs.shape == (3, *BASE_SHAPE)
    with pytest.raises(BrainsegError, match="2 channel"):
        predictor.predict_case([t1])


def test_refuses_to_write_into_the_input_folder(tmp_path: Path, tiny_checkpoint: Path):
    scans = tmp_path / "scans"
    scans.mkdir()
    save_nifti(scans / "subj.nii.gz", head_phantom(BASE_SHAPE), np.diag([1.5, 1.5, 1.5, 1.0]))
    before = sorted(p.name for p in scans.iterdir())

    result = run_cli("--model", tiny_checkpoint, "--input", scans, "--output", scans)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "input folder" in result.stderr
    assert sorted(p.name for p in scans.iterdir()) == before


def test_refuses_an_output_folder_inside_the_data(tmp_path: Path):
    scans = tmp_path / "scans"
    scans.mkdir()
    scan = scans / "subj.nii.gz"
    scan.write_bytes(b"")
    with pytest.raises(BrainsegError, match="inside the input folder"):
        check_output_folder(scans / "predictions", [scans])
    with pytest.raises(BrainsegError, match="into the input folder"):
        check_output_folder(scans, [scan])  # a scan given as a file: its folder is an input folder
    check_output_folder(tmp_path / "predictions", [scans, scan])  # beside the data is fine


# ----------------------------------------------------------------------------- CUDA OOM fallback logic


def test_oom_fallback_tries_one_window_then_cpu_output():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    attempts = inference_attempts(cuda, 4, cuda)
    assert attempts == [(4, cuda), (1, cuda), (1, cpu)]
    assert inference_attempts(cpu, 4, cpu) == [(4, cpu)]

    tried: list[tuple[int, torch.device]] = []

    def step(batch_windows: int, device: torch.device) -> str:
        tried.append((batch_windows, device))
        if device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return "ok"

    logged: list[str] = []
    assert run_with_oom_fallback(step, attempts, logged.append) == "ok"
    assert tried == attempts
    assert len(logged) == 2

    def always_oom(batch_windows: int, device: torch.device) -> str:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_with_oom_fallback(always_oom, attempts)


# ----------------------------------------------------------------------------- labels-only inversion


@pytest.mark.parametrize("mode", ["none", "restrict", "fill"])
def test_labels_only_inversion_matches_the_full_probability_path(mode: str):
    """The fast path (only the crop box's region interpolated, argmax there) gives the labels
    the full path (every class map un-cropped, resampled and reoriented) gives."""
    from brainseg.infer.predictor import classes_in_original_grid
    from brainseg.postprocess.decision import labels_within_input
    from brainseg.preprocessing.preprocess import PreprocessRecord, invert_to_original

    rng = np.random.default_rng(1)
    ornts = ([[0, 1], [1, 1], [2, 1]], [[1, -1], [2, 1], [0, -1]], [[2, 1], [0, -1], [1, 1]])
    for trial in range(12):
        ras = [int(v) for v in rng.integers(6, 30, 3)]
        res = (
            list(ras) if trial % 4 == 0 else [max(2, int(round(r * f))) for r, f in zip(ras, rng.uniform(0.4, 2.2, 3))]
        )
        bbox = [sorted(int(v) for v in rng.choice(np.arange(n + 1), 2, replace=False)) for n in res]
        ornt = np.asarray(ornts[trial % 3], dtype=float)
        original = [0, 0, 0]
        for file_axis, (ras_axis, _) in enumerate(ornt):
            original[file_axis] = ras[int(ras_axis)]
        record = PreprocessRecord(
            original_shape=original,
            ornt=ornt.tolist(),
            ras_shape=ras,
            ras_spacing=[n / r for n, r in zip(res, ras)],
            target_spacing=[1.0] * 3,
            resampled_shape=res,
            bbox=bbox,
            norm_mean=[0.0],
            norm_std=[1.0],
        )
        probs = torch.softmax(3 * torch.randn(4, *[b - a for a, b in bbox]), dim=0)
        nonzero = rng.random(original) < 0.7
        full = invert_to_original(probs, record).numpy()
        expected = labels_within_input(full, nonzero, mode)
        got = classes_in_original_grid(probs, record, nonzero, mode)
        assert got.shape == tuple(original) and got.dtype == expected.dtype
        top2 = np.sort(full[1:] if mode == "fill" else full, axis=0)[-2:]
        clear = (top2[1] - top2[0]) > 1e-4  # float rounding may only flip near-ties
        assert np.array_equal(got[clear], expected[clear]), trial
