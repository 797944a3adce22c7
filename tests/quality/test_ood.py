"""The out-of-distribution warning: the card keeps the training scans' ranges, predict
compares each scan with them and writes the reasons to volumes.csv's ``ood`` column.

The training set is demo data at one voxel size (1.5 mm); the scans checked are its
held-out subject as it is (in distribution), the same subject at twice the voxel size,
and with its intensity scale flipped inside the brain.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brainseg.data.layouts import discover_dataset
from brainseg.io.images import read_channels
from brainseg.model.card import ModelCard
from brainseg.model.checkpoint import load_checkpoint, save_checkpoint
from brainseg.plan.fingerprint import fingerprint_dataset, training_ranges
from brainseg.quality.ood import CORRELATION_MARGIN, SPACING_FACTOR, OodDistance, TrainingRanges, scan_reasons
from tests.conftest import REPO


def _cli(*args, cwd=REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "brainseg", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def iso_demo(tmp_path_factory) -> Path:
    pytest.importorskip("nilearn")
    out = tmp_path_factory.mktemp("ood") / "demo"
    res = _cli("demo-data", out, "--n", 5, "--n-test", 1, "--spacing", 1.5, 1.5, 1.5, "-q")
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def scans(iso_demo: Path, tmp_path_factory) -> dict[str, Path]:
    """The held-out scan as it is, at twice its voxel size, and with its contrast flipped."""
    folder = tmp_path_factory.mktemp("ood_scans")
    src = sorted((iso_demo / "imagesTs").glob("*_0000.nii.gz"))[0]
    img = nib.load(src)
    data = np.asarray(img.dataobj, dtype=np.float32)
    out = {
        "same": folder / "same_0000.nii.gz",
        "coarse": folder / "coarse_0000.nii.gz",
        "flipped": folder / "flipped_0000.nii.gz",
    }
    nib.save(nib.Nifti1Image(data, img.affine), out["same"])
    coarse_affine = img.affine.copy()
    coarse_affine[:3, :3] *= 2.0
    nib.save(nib.Nifti1Image(data[::2, ::2, ::2].copy(), coarse_affine), out["coarse"])
    brain = data > 0
    flipped = np.where(brain, data.max() - data + data[brain].min(), 0.0).astype(np.float32)
    nib.save(nib.Nifti1Image(flipped, img.affine), out["flipped"])
    return out


@pytest.fixture(scope="module")
def ranges(iso_demo: Path) -> TrainingRanges:
    return training_ranges(fingerprint_dataset(discover_dataset(iso_demo)))


def _reasons(path: Path, ranges: TrainingRanges) -> list[str]:
    data, geom = read_channels([path])
    return scan_reasons(data, geom, ranges, ("T1",))


def test_the_held_out_scan_is_in_distribution(scans, ranges):
    assert _reasons(scans["same"], ranges) == []


def test_twice_the_voxel_size_is_flagged(scans, ranges):
    reasons = _reasons(scans["coarse"], ranges)
    assert any(r.startswith("voxel size 3x3x3 mm outside training 1.5x1.5x1.5-1.5x1.5x1.5 mm") for r in reasons), (
        reasons
    )


def test_a_flipped_intensity_scale_is_flagged(scans, ranges):
    reasons = _reasons(scans["flipped"], ranges)
    assert any("inside-to-rim contrast" in r and "inverted contrast?" in r for r in reasons), reasons
    assert not any("voxel size" in r for r in reasons)


def test_the_card_keeps_the_training_ranges_and_they_still_flag_the_coarse_scan(
    ranges, scans, tiny_checkpoint, tmp_path
):
    # The ranges are those of the training set: 4 cases (5 subjects, 1 held out), one channel, all at 1.5 mm.
    assert (ranges.n_cases, ranges.channels) == (4, 1)
    np.testing.assert_allclose(ranges.spacing, [[1.5, 1.5]] * 3, atol=1e-3)
    state = load_checkpoint(tiny_checkpoint)
    state["card"] = dict(state["card"], training_ranges=ranges.to_dict())
    saved = save_checkpoint(tmp_path / "checkpoint_final.pt", state)
    kept = ModelCard.from_dict(load_checkpoint(saved)["card"]).training_ranges
    assert kept == ranges
    assert _reasons(scans["coarse"], kept) == _reasons(scans["coarse"], ranges) != []
    assert _reasons(scans["same"], kept) == []
    assert ModelCard.from_dict(load_checkpoint(tiny_checkpoint)["card"]).training_ranges is None  # older card: no check


def test_predict_writes_the_ood_column_and_one_warning_per_flagged_case(scans, ranges, tiny_checkpoint, tmp_path):
    state = load_checkpoint(tiny_checkpoint)
    state["card"] = dict(state["card"], training_ranges=ranges.to_dict())
    model = save_checkpoint(tmp_path / "model.pt", {"model": state["model"], "card": state["card"]})
    assert torch.load(model, weights_only=True)["card"]["training_ranges"]["n_cases"] == 4
    inputs = tmp_path / "in"
    inputs.mkdir()
    for path in scans.values():
        os.symlink(path, inputs / path.name)
    res = _cli(
        "predict", "--model", model, "--input", inputs, "--output", tmp_path / "out", "--device", "cpu", "--no-progress"
    )
    assert res.returncode == 0, res.stderr
    rows = {r["case"]: r for r in csv.DictReader(open(tmp_path / "out" / "volumes.csv"))}
    assert rows["same"]["ood"] == ""
    assert "voxel size" in rows["coarse"]["ood"]
    assert "inverted contrast?" in rows["flipped"]["ood"]
    warnings = [line for line in res.stderr.splitlines() if "unlike the training scans" in line]
    assert len(warnings) == 2 and all(line.startswith("brainseg: warning: ") for line in warnings)
    # the masks of flagged cases are still written, in their scan's geometry
    mask = nib.load(tmp_path / "out" / "coarse.nii.gz")
    assert mask.shape == nib.load(scans["coarse"]).shape
    assert np.allclose(mask.affine, nib.load(scans["coarse"]).affine)


def test_the_distance_is_zero_inside_the_ranges_and_reaches_one_where_a_reason_starts():
    ranges = TrainingRanges(
        n_cases=3,
        channels=1,
        spacing=((1.0, 1.2),) * 3,
        extent_mm=((100.0, 140.0),) * 3,
        obliquity_max=0.0,
        depth_correlation=((0.2, 0.4),),
        median_position=((0.4, 0.6),),
    )
    inside = ((1.1,) * 3, (120.0,) * 3, 0.0, [0.3], [0.5])
    assert ranges.distance(*inside) == 0.0 and ranges.reasons(*inside) == []
    edge = ((1.2 * SPACING_FACTOR,) + (1.1,) * 2, (120.0,) * 3, 0.0, [0.3], [0.5])
    assert ranges.distance(*edge) == pytest.approx(1.0) and ranges.reasons(*edge) == []
    thick = ((1.2 * SPACING_FACTOR**2,) + (1.1,) * 2, (120.0,) * 3, 0.0, [0.3], [0.5])
    assert ranges.distance(*thick) == pytest.approx(2.0) and len(ranges.reasons(*thick)) == 1
    inverted = ((1.1,) * 3, (120.0,) * 3, 0.0, [-0.3], [0.5])  # 0.5 below the range: 0.5 / 0.15 margins
    assert ranges.distance(*inverted) == pytest.approx(0.5 / CORRELATION_MARGIN)
    # the grid's and the contrast's parts apart: thick slices stray in the grid, an inversion in contrast
    assert ranges.distances(*thick) == OodDistance(pytest.approx(2.0), 0.0)
    assert ranges.distances(*inverted) == OodDistance(0.0, pytest.approx(0.5 / CORRELATION_MARGIN))
    both = ((1.2 * SPACING_FACTOR**2,) + (1.1,) * 2, (120.0,) * 3, 0.0, [-0.3], [0.5])
    assert ranges.distances(*both).overall == ranges.distance(*both) == pytest.approx(0.5 / CORRELATION_MARGIN)
    assert ranges.distance((1.1,) * 3, (120.0,) * 3, 0.0, [0.3, 0.3], [0.5, 0.5]) == 10.0  # another channel count
