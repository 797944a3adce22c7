"""scripts/skip_ablation.py: its boundary metrics on masks with known answers, the skip modes
of the U-Net, and (slow) the whole script end to end on a tiny demo data set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from brainseg.config import load_config
from brainseg.errors import BrainsegError
from brainseg.model import UNet3D
from brainseg.model.checkpoint import load_model, save_checkpoint
from brainseg.model.unet import _low_pass

JOIN_CLASSES = {"concat": "ConcatJoin", "none": "SkipJoin", "add": "AddJoin", "lowpass": "LowPassJoin"}

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import ablation_metrics as am  # noqa: E402
from ablation_report import direction  # noqa: E402

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


# ----------------------------------------------------------------------------- skip modes


@pytest.mark.parametrize("mode", ["concat", "none", "add", "lowpass"])
def test_every_skip_mode_keeps_shapes_and_gradients(mode):
    torch.manual_seed(0)
    net = UNet3D(1, 3, levels=4, base_features=4, max_features=16, skip_mode=mode)
    x = torch.randn(2, 1, 19, 24, 17, requires_grad=True)  # odd sizes: pooling and matching still fit
    y = net(x)
    assert y.shape == (2, 3, 19, 24, 17)
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    doubled = mode in ("concat", "lowpass")
    assert [b[0].in_channels for b in net.decoder] == [f * (2 if doubled else 1) for f in net.features[:-1]]
    assert net.hparams["skip_mode"] == mode and "skip_connections" not in net.hparams
    assert [type(j).__name__ for j in net.joins] == [JOIN_CLASSES[mode]] * 3  # chosen once, at construction


def test_low_pass_skips_reach_the_decoder_at_the_bottleneck_resolution_only():
    checker = torch.from_numpy(np.indices((8, 8, 8)).sum(0) % 2 * 2.0 - 1.0).float()[None, None]
    assert torch.allclose(_low_pass(checker, 2), torch.zeros_like(checker), atol=1e-6)  # voxel detail: gone
    ramp = torch.linspace(0, 1, 8).expand(8, 8, 8).contiguous()[None, None]
    assert _low_pass(ramp, 4).std() > 0.2  # coarse structure: kept

    torch.manual_seed(0)
    net = UNet3D(1, 2, levels=3, base_features=4, skip_mode="lowpass").eval()
    enc, dec = {}, {}
    for i, stage in enumerate(net.encoder):
        stage.register_forward_hook(lambda m, a, out, i=i: enc.__setitem__(i, out))
    for i, block in enumerate(net.decoder):
        block.register_forward_pre_hook(lambda m, a, i=i: dec.__setitem__(i, a[0]))
    with torch.no_grad():
        net(torch.randn(1, 1, 16, 16, 16))
    for i in range(2):
        f = net.features[i]
        assert torch.allclose(dec[i][:, :f], _low_pass(enc[i], 2 ** (2 - i)))


def _fit_voxel_rule(mode: str, steps: int = 100) -> float:
    """Dice on a fresh volume after learning label = (input > 0) from random volumes."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    net = UNet3D(1, 2, levels=3, base_features=4, max_features=16, skip_mode=mode)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    volumes = [torch.randn(2, 1, 16, 16, 16, generator=gen) for _ in range(steps + 1)]
    for x in volumes[:-1]:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), (x[:, 0] > 0).long()).backward()
        opt.step()
    x = volumes[-1]
    with torch.no_grad():
        hit = net.eval()(x).argmax(1) == 1
    truth = x[:, 0] > 0
    return 2 * float((hit & truth).sum()) / float(hit.sum() + truth.sum())


def test_low_pass_skips_cannot_apply_a_voxel_scale_rule_that_concat_skips_learn():
    concat, lowpass = _fit_voxel_rule("concat"), _fit_voxel_rule("lowpass")
    assert concat > 0.9, concat
    assert lowpass < 0.8, lowpass


def test_old_cards_without_skip_mode_still_load(tmp_path):
    """A card written before skip_mode existed: skip_connections alone decides."""
    for skips, mode in ((True, "concat"), (False, "none")):
        net = UNet3D(1, 2, levels=2, base_features=4, skip_mode=mode)
        hparams = dict(net.hparams)
        del hparams["skip_mode"]
        hparams["skip_connections"] = skips
        card = {  # format 1: the network under "model", no preprocess_version
            "format": 1,
            "model": hparams,
            "labels": {"0": "background", "1": "a"},
            "channels": ["T1"],
            "spacing": [1.0, 1.0, 1.0],
            "patch_size": [8, 8, 8],
            "normalization": {"scheme": "zscore", "mask": "nonzero", "crop_to_nonzero": True},
        }
        path = save_checkpoint(tmp_path / f"old_{skips}.pt", {"model": net.state_dict(), "card": card})
        model, _ = load_model(path)
        assert model.skip_mode == mode
        x = torch.randn(2, 1, 8, 8, 8)
        with torch.no_grad():
            assert torch.equal(model(x), net.eval()(x))


def test_skip_mode_config_and_its_errors():
    assert load_config().model.skip_mode == "concat"
    assert load_config(overrides=["model.skip_mode=lowpass"]).model.skip_mode == "lowpass"
    with pytest.raises(BrainsegError, match="skip_mode must be one of"):
        UNet3D(1, 2, levels=2, skip_mode="sum")  # type: ignore[arg-type]


def test_old_configs_with_skip_connections_still_load():
    """``model.skip_connections`` (before ``skip_mode``): false means "none", true keeps the mode;
    false beside another mode than concat or none is a contradiction, named in one line."""
    assert load_config(overrides=["model.skip_connections=false"]).model.skip_mode == "none"
    assert load_config(overrides=["model.skip_connections=true"]).model.skip_mode == "concat"
    both = ["model.skip_connections=true", "model.skip_mode=add"]
    assert load_config(overrides=both).model.skip_mode == "add"
    assert "skip_connections" not in load_config().to_dict()["model"]
    with pytest.raises(
        BrainsegError, match="^config model.skip_connections: false contradicts model.skip_mode: lowpass$"
    ):
        load_config(overrides=["model.skip_connections=false", "model.skip_mode=lowpass"])


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_script_runs_end_to_end_on_tiny_settings(tmp_path):
    out = tmp_path / "ablation"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        str(SCRIPTS / "skip_ablation.py"),
        "--out",
        str(out),
        "--minutes",
        "0.03",
        "--seeds",
        "1",
        "--n",
        "3",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["arms"] == ["concat", "none", "lowpass"]
    assert report["settings"]["heldout_cases"] == ["demo_002"]
    n_bins = len(report["settings"]["distance_bins_mm"])
    for arm, res_arm in report["arms"].items():
        (run,) = res_arm["per_seed"]
        for key in ("dice", "hd95", "surface_dice", "train_dice", "heldout_dice"):
            assert key in run and key in res_arm["mean"] and key in res_arm["std"], (arm, key)
        assert 0.0 <= run["dice"] <= 1.0 and 0.0 <= run["surface_dice"] <= run["surface_dice_2mm"] <= 1.0
        assert run["steps"] > 0 and len(run["boundary_dice"]) == n_bins
        assert res_arm["mean"]["dice"] == pytest.approx(run["dice"]) and res_arm["std"]["dice"] is None
        assert (Path(run["run_dir"]) / "heldout_masks" / "demo_002.nii.gz").is_file()
        assert set(run["cases"]) == {"demo_002"} and set(run["cases"]["demo_002"]["dice"]) == {"1", "2", "3"}
    assert report["runs_reused"] == 0
    assert "vs_concat" in report["arms"]["none"] and "vs_concat" not in report["arms"]["concat"]
    for name in ("dice_vs_distance.png", "train_vs_heldout.png", "slices.png", "report.md"):
        assert (out / name).stat().st_size > 1000, name
    assert "| lowpass |" in (out / "report.md").read_text()
