"""The skip-connection ablation (``python -m scripts.experiments.skip_ablation``): its boundary
metrics on masks with known answers, its findings on planted numbers, and (slow) a real run
whose report is checked against the masks it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainseg.evaluate.metrics import dice
from scripts.experiments.skip_ablation import metrics as am
from scripts.experiments.skip_ablation.report import direction, findings
from scripts.experiments.skip_ablation.run import ARMS, SCALARS, across_seeds, paired_differences

REPO = Path(__file__).resolve().parents[2]

# ----------------------------------------------------------------------------- surface Dice


def _boxes():
    """An 8-voxel cube and the same cube one voxel longer along axis 0 (in a 12³ grid)."""
    ref = np.zeros((12, 12, 12), dtype=bool)
    ref[2:10, 2:10, 2:10] = True
    pred = np.zeros_like(ref)
    pred[2:11, 2:10, 2:10] = True
    return pred, ref


# Shells: 8³ - 6³ = 296 surface voxels of ref, 9·8·8 - 7·6·6 = 324 of pred. Off the other
# surface: pred's new end face (8·8 = 64 voxels, one spacing along axis 0 from ref's end face)
# and the inside of ref's old end face (6·6 = 36 voxels, one spacing from pred's end face).
N_SURFACE = 296 + 324


def test_surface_dice_counts_both_surfaces_within_the_tolerance_in_mm():
    pred, ref = _boxes()
    assert am.surface_dice(ref, ref, (1.0, 1.0, 1.0), 1.0) == 1.0
    assert am.surface_dice(pred, ref, (1.1, 1.1, 1.1), 1.0) == pytest.approx((N_SURFACE - 64 - 36) / N_SURFACE)
    assert am.surface_dice(pred, ref, (0.9, 0.9, 0.9), 1.0) == 1.0  # one voxel is 0.9 mm: within 1 mm
    assert am.surface_dice(pred, ref, (1.1, 1.1, 1.1), 1.1) == 1.0
    # Anisotropic: 1.1 mm along the shift, 0.5 mm across. The 64 stay out; of the 36, those
    # within 2 voxels (1 mm) of pred's side faces are in: only the 2 x 2 in the middle stay out.
    assert am.surface_dice(pred, ref, (1.1, 0.5, 0.5), 1.0) == pytest.approx((N_SURFACE - 64 - 4) / N_SURFACE)
    assert am.surface_dices(pred, ref, (1.1, 0.5, 0.5), [1.0, 1.1]) == pytest.approx(
        [(N_SURFACE - 68) / N_SURFACE, 1.0]
    )


def test_surface_dice_empty_masks_follow_the_dice_conventions():
    empty = np.zeros((5, 5, 5), dtype=bool)
    full = empty.copy()
    full[1:4, 1:4, 1:4] = True
    assert am.surface_dice(empty, empty, (1, 1, 1)) == 1.0
    assert am.surface_dice(full, empty, (1, 1, 1)) == 0.0
    assert am.surface_dice(empty, full, (1, 1, 1)) == 0.0
    with pytest.raises(ValueError):
        am.surface_dice(full, full[:4], (1, 1, 1))


# ----------------------------------------------------------------------------- boundary distance


def _halves():
    """Label 1 for x < 5, label 2 for x >= 5, in a 10 x 4 x 4 grid."""
    ref = np.ones((10, 4, 4), dtype=np.int16)
    ref[5:] = 2
    return ref


def test_boundary_distance_is_mm_to_the_nearest_voxel_of_another_label():
    ref = _halves()
    d = am.boundary_distance(ref, (2.0, 1.0, 1.0))
    x = np.arange(10)
    expected = np.where(x < 5, 5 - x, x - 4) * 2.0
    assert np.allclose(d, expected[:, None, None])

    cube = np.zeros((9, 9, 9), dtype=np.int16)
    cube[2:7, 2:7, 2:7] = 3
    d = am.boundary_distance(cube, (1.0, 1.0, 1.0))
    assert d[4, 4, 4] == 3.0 and d[2, 4, 4] == 1.0 and d[1, 4, 4] == 1.0
    assert d[1, 1, 1] == pytest.approx(np.sqrt(3))  # background inside the box: to the nearest tissue voxel
    assert np.isinf(d[0, 0, 0])  # background outside the tissue's box grown by one voxel
    assert np.isinf(am.boundary_distance(np.zeros((3, 3, 3), np.int16), (1, 1, 1))).all()


def test_background_counts_only_at_the_brain_rim():
    ref = np.zeros((13, 13, 13), dtype=np.int16)
    ref[3:10, 3:10, 3:10] = 1
    bins = am.boundary_bins(ref, (1.0, 1.0, 1.0), (0.0, 2.25, 4.5))
    assert bins[6, 6, 6] == 1 and bins[3, 6, 6] == 0  # tissue: 4 mm deep, on the boundary
    assert bins[2, 6, 6] == 0 and bins[0, 6, 6] == -1 and bins[0, 0, 0] == -1  # background: rim only
    pred = np.ones_like(ref)  # tissue everywhere: the far false positives are not counted
    counts = am.boundary_counts(pred, ref, bins, [1], 3)
    rim = int(np.count_nonzero((ref == 0) & (bins == 0)))
    # 7³ cube: shells at 1 and 2 mm (7³ - 3³ = 316 voxels) in bin 0, at 3 and 4 mm (27) in bin 1
    assert counts[0, 0].tolist() == [316, 316 + rim, 316] and counts[0, 1].tolist() == [27, 27, 27]
    assert counts[0, 2].tolist() == [0, 0, 0]


def test_dice_by_distance_finds_an_error_confined_to_the_boundary_layer():
    ref = _halves()
    pred = ref.copy()
    pred[4] = 2  # the boundary moved by one voxel
    spacing = (2.0, 1.0, 1.0)
    bins = am.distance_bin(am.boundary_distance(ref, spacing), (0.0, 2.25, 4.5))
    assert list(bins[:, 0, 0]) == [2, 2, 2, 1, 0, 0, 1, 2, 2, 2]
    counts = am.boundary_counts(pred, ref, bins, [1, 2], 3)
    dice = am.dice_by_distance(counts)
    # bin 0 (x = 4, 5): label 1 lost its 16 voxels there; label 2 has 32 predicted, 16 right
    assert dice[0, 0] == 0.0 and dice[1, 0] == pytest.approx(2 * 16 / 48)
    assert np.allclose(dice[:, 1:], 1.0)
    assert np.isnan(am.dice_by_distance(np.zeros((1, 2, 3), dtype=np.int64))).all()
    assert am.bin_names((0.0, 2.25, 4.5)) == ["0-2.25 mm", "2.25-4.5 mm", ">= 4.5 mm"]

    scores = am.case_scores(pred, ref, spacing, [1, 2], (1.0, 2.0), (0.0, 2.25, 4.5))
    assert scores["dice"][1] == pytest.approx(2 * 64 / (64 + 80))
    assert set(scores["surface_dice"]) == {1.0, 2.0} and scores["surface_dice"][2.0][1] == 1.0
    assert scores["voxels_per_bin"].tolist() == [32, 32, 96]


def test_direction_needs_every_seed_past_the_margin():
    assert direction([0.02, 0.01]) == "up"
    assert direction([-0.02, -0.03]) == "down"
    assert direction([0.02, -0.01]) == "unclear"
    assert direction([0.002]) == "unclear"
    assert direction([]) == "unclear"


# ----------------------------------------------------------------------------- findings


def _planted_run(seed: int, heldout: float, train: float, steps: int, boundary: list[float]) -> dict:
    run = {k: 0.0 for k in SCALARS}
    run.update(seed=seed, dice=heldout, heldout_dice=heldout, train_dice=train, gap=train - heldout, steps=steps)
    run["boundary_dice"] = boundary
    return run


def test_findings_follow_planted_per_seed_differences():
    """Cutting the skips costs 0.10 held-out and training Dice in both seeds, most of it at the
    boundary; low-pass skips win back 0.02 of it (20 %): the text must say exactly that."""
    arms = {
        "concat": [_planted_run(s, 0.80 + d, 0.82 + d, 100, [0.70, 0.90]) for s, d in ((0, 0.0), (1, 0.01))],
        "none": [_planted_run(s, 0.70 + d, 0.72 + d, 140, [0.50, 0.88]) for s, d in ((0, 0.0), (1, 0.01))],
        "lowpass": [_planted_run(s, 0.72 + d, 0.74 + d, 120, [0.55, 0.89]) for s, d in ((0, 0.0), (1, 0.01))],
    }
    report = {
        "settings": {"seeds": [0, 1], "distance_bin_names": ["0-2.25 mm", ">= 2.25 mm"]},
        "arms": {name: {"per_seed": runs} for name, runs in arms.items()},
    }
    for arm in report["arms"].values():
        arm["mean"], arm["std"] = across_seeds(arm["per_seed"])
    paired_differences(report["arms"])
    none = report["arms"]["none"]
    assert none["mean"]["heldout_dice"] == pytest.approx(0.705) and none["std"]["steps"] == 0.0
    assert none["vs_concat"]["heldout_dice"] == pytest.approx([-0.1, -0.1])
    assert np.allclose(none["vs_concat"]["boundary_dice"], [[-0.2, -0.02], [-0.2, -0.02]])
    assert "vs_concat" not in report["arms"]["concat"]

    text = findings(report)
    assert text[0].startswith("With skips (concat) the network reached held-out Dice 0.805 and training-set Dice 0.825")
    none_line = next(t for t in text if t.startswith("**none − concat**"))
    assert "Lower on the training subjects as well as on the held-out ones" in none_line
    assert "The gap does not change by more than 0.005 consistently." in none_line
    assert "The loss is larger at the boundary than deep inside in every seed." in none_line
    assert any(t.startswith("**Regulariser hypothesis.** Cutting the skips did not widen") for t in text)
    assert any(t.startswith("**Detail hypothesis.**") for t in text)
    lowpass = next(t for t in text if t.startswith("**Low-pass skips**"))
    assert (
        "recovered 20 % of the held-out Dice" in lowpass
        and "Most of the skips' benefit needs the fine detail." in lowpass
    )
    assert (
        text[-1]
        == "The budget is wall time, not steps: mean steps per run concat 100, none 140, lowpass 120 (an arm with cheaper steps takes more of them)."
    )


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_script_runs_end_to_end_on_tiny_settings(tmp_path: Path, demo_data: Path):
    """Two arms trained for a few seconds: every Dice in the report is the one its masks give."""
    out = tmp_path / "ablation"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "scripts.experiments.skip_ablation", "--out", str(out), "--data", str(demo_data)]
    cmd += ["--minutes", "0.03", "--seeds", "1", "--arms", "concat,none"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    (heldout,) = [p.name.replace(".nii.gz", "") for p in sorted((demo_data / "labelsTs").glob("*.nii.gz"))]
    assert report["settings"]["arms"] == ["concat", "none"]
    assert report["settings"]["heldout_cases"] == [heldout] and report["settings"]["demo_subjects"] is None
    ref = np.asarray(nib.load(str(demo_data / "labelsTs" / f"{heldout}.nii.gz")).dataobj)
    n_bins = len(report["settings"]["distance_bins_mm"])
    for arm, res_arm in report["arms"].items():
        (run,) = res_arm["per_seed"]
        assert run["overrides"] == [*ARMS[arm][0], "train.seed=0"]
        assert run["steps"] > 0 and len(run["boundary_dice"]) == n_bins and run["n_train"] >= 1
        # The held-out Dice is the one of the mask the run wrote, label by label.
        mask = np.asarray(nib.load(str(Path(run["run_dir"]) / "heldout_masks" / f"{heldout}.nii.gz")).dataobj)
        assert mask.shape == ref.shape
        per_label = {str(v): dice(mask == v, ref == v) for v in (1, 2, 3)}
        assert run["cases"][heldout]["dice"] == pytest.approx(per_label, abs=1e-9)
        assert run["dice_per_label"] == pytest.approx(per_label, abs=1e-9)
        assert run["heldout_dice"] == run["dice"] == pytest.approx(np.mean(list(per_label.values())), abs=1e-9)
        assert run["gap"] == pytest.approx(run["train_dice"] - run["heldout_dice"])
        assert sum(run["boundary_voxel_share"]) == pytest.approx(1.0)
        assert run["surface_dice"] <= run["surface_dice_2mm"]  # a wider tolerance accepts more
        # One seed: the mean is that seed's figure, there is no spread.
        assert res_arm["mean"]["dice"] == pytest.approx(run["dice"]) and res_arm["std"]["dice"] is None
    assert report["runs_reused"] == 0
    none = report["arms"]["none"]["vs_concat"]
    assert none["heldout_dice"] == pytest.approx(
        [report["arms"]["none"]["per_seed"][0]["dice"] - report["arms"]["concat"]["per_seed"][0]["dice"]]
    )
    for name in ("dice_vs_distance.png", "train_vs_heldout.png", "slices.png", "report.md"):
        assert (out / name).stat().st_size > 1000, name
    assert "| none |" in (out / "report.md").read_text()
