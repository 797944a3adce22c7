"""The benchmark (``python -m scripts.benchmark``): its arithmetic on known answers, the MONAI
reference's window shift, and (slow) a real run whose JSON is checked against the masks it wrote.

Timings are only checked for being positive and consistent (timings in tests are flaky;
speed lives in the benchmark itself).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brainseg.config import load_config
from brainseg.evaluate.metrics import dice
from brainseg.infer.loading import INFER_PRESETS, preset_overrides
from brainseg.model.card import ModelCard, Network, Normalization, package_versions
from brainseg.model.checkpoint import save_checkpoint
from brainseg.model.unet import UNet3D
from brainseg.preprocessing.preprocess import PREPROCESS_VERSION
from scripts.benchmark.compare import (
    dice_difference,
    linearity,
    mask_agreement,
    mix_corrected,
    outside_range,
    placement_range,
)
from scripts.benchmark.reference import MonaiReference, ReferenceSpec
from scripts.benchmark.run import DEFAULT_SECTIONS, FULL, QUICK, SECTIONS
from scripts.benchmark.sections import network_info
from scripts.common import case_id

REPO = Path(__file__).resolve().parents[2]


def test_help_runs():
    res = subprocess.run(
        [sys.executable, "-m", "scripts.benchmark", "--help"], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert res.returncode == 0, res.stderr
    assert all(flag in res.stdout for flag in ("--quick", "--json", "--model", "--data", "--only"))


def test_agreement_and_dice_arithmetic():
    a = np.zeros((4, 4, 4), dtype=np.uint8)
    b = np.zeros((4, 4, 4), dtype=np.uint8)
    a[:2] = 1  # 32 voxels of label 1
    b[:1] = 1  # 16 of them
    b[3, 3, 3] = 2  # label 2 only in b
    r = mask_agreement(a, b, [0, 1, 2])
    assert r["agreement"] == pytest.approx((64 - 16 - 1) / 64)
    assert r["agreement_foreground"] == pytest.approx(16 / 33)
    assert r["dice"][1] == pytest.approx(2 * 16 / 48)
    assert r["dice"][2] == 0.0 and r["dice"][0] == pytest.approx(2 * 31 / (32 + 47))
    with pytest.raises(ValueError):
        mask_agreement(a, b[:3], [0, 1])

    d = dice_difference({1: [0.8, 0.9], 2: [0.5, 0.5]}, {1: [0.8, 0.8], 2: [0.6, 0.6]})
    assert d["diff"][1] == pytest.approx(0.05) and d["diff"][2] == pytest.approx(-0.1)
    assert d["max"] == pytest.approx(0.1) and d["max_per_case"] == pytest.approx(0.1)

    lin = linearity([1.0, 2.0, 4.0], [2.0, 4.0, 8.0])
    assert lin["ratio_max_min_per_mvox"] == pytest.approx(1.0) and lin["fit_slope_per_mvox"] == pytest.approx(2.0)

    mix = mix_corrected([1.0, 1.0, 3.0], [False, False, True], 0.5)
    assert mix["patches_per_s_at_config_mix"] == pytest.approx(1 / 2.0)


def test_placement_range_arithmetic():
    r = placement_range({1: [0.70, 0.72, 0.69], 2: [0.9, 0.9]})
    assert r["range"] == {1: [0.69, 0.72], 2: [0.9, 0.9]} and r["spread_max"] == pytest.approx(0.03)
    gap = outside_range({1: 0.73, 2: 0.9, 3: 0.5}, {1: [0.69, 0.72], 2: [0.9, 0.9], 3: [0.55, 0.6]})
    assert gap[1] == pytest.approx(0.01) and gap[2] == 0.0 and gap[3] == pytest.approx(0.05)


def test_case_ids_follow_the_library_naming():
    assert case_id("/data/imagesTs/demo_003_0000.nii.gz") == "demo_003"
    assert case_id("sub-01_T1w.nii.gz") == "sub-01_T1w"
    assert case_id("case_0001.mha") == "case"


def test_shifted_monai_reference_moves_only_the_windows(tmp_path: Path):
    """The reference rerun with its window lattice shifted (to measure placement noise) must
    be the same pipeline: with a voxel-wise network, where windows fall cannot matter, so
    the masks are identical, and both lie on the scan's own grid."""
    rng = np.random.default_rng(0)
    affine = np.array([[-1.2, 0, 0, 40.0], [0, -1.0, 0, 30.0], [0, 0, 1.6, -20.0], [0, 0, 0, 1]])
    image = tmp_path / "case_0000.nii.gz"
    nib.save(nib.Nifti1Image(rng.normal(size=(37, 29, 23)).astype(np.float32) + 3.0, affine), image)
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 3, 1).eval()
    spec = ReferenceSpec(labels=(0, 1, 2), spacing=(1.0, 1.1, 1.3), patch_size=(16, 16, 16))
    masks = []
    for shift in ([0, 0, 0], [4, 5, 6]):
        out = tmp_path / f"out_{shift[0]}"
        MonaiReference(net, spec, "none", out, "cpu", shift=shift)(str(image), "case")
        img = nib.load(out / "case.nii.gz")
        assert img.shape == (37, 29, 23) and np.allclose(img.affine, affine, atol=1e-4)
        masks.append(np.asarray(img.dataobj))
    assert len(np.unique(masks[0])) >= 2
    np.testing.assert_array_equal(masks[0], masks[1])


# ----------------------------------------------------------------------------- a real run

DEMO_LABELS = {0: "background", 1: "CSF", 2: "grey matter", 3: "white matter"}


#: Normalised-intensity thresholds of the planted network: background | CSF | grey | white matter
#: (on the demo scans, foreground z-scores: a raw 0 about -2.3 to -2.9, CSF -1.9, grey matter -0.3, white
#: matter 0.9).
THRESHOLDS = (-2.1, -1.0, 0.4)


def intensity_rule_checkpoint(path: Path, thresholds=THRESHOLDS, sharpness: float = 20.0) -> Path:
    """A batch-norm U-Net whose weights are set by hand to a voxel-wise rule, saved as training saves one.

    Only the centre taps of the full-resolution path are non-zero: the network passes each
    voxel's normalised intensity ``z`` (plus 10, the first batch norm's shift, which keeps it
    above the leaky ReLUs' knee) to its head, whose logits ``k * c * (z + 10) + b_c`` make class
    ``c`` win between ``thresholds[c - 1]`` and ``thresholds[c]``. The coarse level contributes
    zeros. So the output of a voxel does not depend on where the windows fall: brainseg and
    MONAI can differ only where their resampling or their handling of the field of view does.
    """
    model = UNet3D(in_channels=1, num_classes=4, levels=2, base_features=4, norm="batch")
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        for block in (model.encoder[0], model.decoder[0]):
            for conv, norm in ((block[0], block[1]), (block[3], block[4])):
                conv.weight[0, 0, 1, 1, 1] = 1.0
                norm.weight.fill_(1.0)
        model.encoder[0][1].bias[0] = 10.0
        head = model.heads[0]
        bias = 0.0
        for c in range(4):
            head.weight[c, 0, 0, 0, 0] = sharpness * c
            head.bias[c] = bias
            if c < 3:
                bias -= sharpness * (thresholds[c] + 10.0)
    card = ModelCard(
        network=Network.from_kwargs(model.hparams),
        labels=DEMO_LABELS,
        channels=("T1",),
        spacing=(2.0, 2.0, 2.0),
        patch_size=(16, 16, 16),
        normalization=Normalization(scheme="zscore", mask="foreground", crop_to_nonzero=True),
        preprocess_version=PREPROCESS_VERSION,
        config=load_config().to_dict(),  # infer.mirror off: one pass, as MONAI's
        versions=package_versions(),
    ).to_dict()
    return save_checkpoint(path, {"model": model.eval().state_dict(), "card": card})


def test_the_planted_network_applies_its_intensity_rule(tmp_path: Path):
    from brainseg.model.checkpoint import load_model

    model, _ = load_model(intensity_rule_checkpoint(tmp_path / "checkpoint_final.pt"))
    z = torch.tensor([-3.0, -2.0, -1.2, -0.8, 0.0, 0.3, 0.6, 2.0])
    x = z.reshape(1, 1, 2, 2, 2).repeat(1, 1, 4, 4, 4)  # 8 x 8 x 8, every value in many places
    with torch.no_grad():
        classes = model.eval()(x).argmax(1)[0]
    expected = torch.bucketize(x[0, 0], torch.tensor(THRESHOLDS))
    assert torch.equal(classes, expected)


@pytest.mark.slow
def test_quick_inference_run_reports_what_its_masks_show(tmp_path: Path, demo_data: Path):
    model = intensity_rule_checkpoint(tmp_path / "model" / "checkpoint_final.pt")
    work, out_json = tmp_path / "work", tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "scripts.benchmark", "--quick", "--only", "inference"]
    cmd += ["--model", str(model), "--data", str(demo_data), "--workdir", str(work), "--json", str(out_json)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out_json.read_text())
    assert "| inference, file to written mask" in res.stdout
    assert {"machine", "settings", "network", "inference", "targets", "total_seconds"} <= set(report)
    assert report["sections"] == ["inference"] and "training" not in report and "loader" not in report
    assert report["network"]["norm"] == "batch" and report["network"]["patch_size"] == [16, 16, 16]
    assert report["network"]["source"] == str(model) and report["network"]["shipped"] is False

    inf = report["inference"]
    (image,) = sorted((demo_data / "imagesTs").glob("*_0000.nii.gz"))
    assert inf["cases"] == [case_id(image)]
    for side in ("brainseg", "monai"):
        r = inf[side]
        assert r["cases"] == 1 and r["voxels"] == int(np.prod(nib.load(image).shape))
        assert r["seconds"] > 0 and r["mvox_per_s"] == pytest.approx(r["voxels"] / 1e6 / r["seconds"])
        assert r["maxrss_mb"] >= r["maxrss_after_warmup_mb"] > 0
    assert inf["ratio_vs_monai"] == pytest.approx(inf["brainseg"]["mvox_per_s"] / inf["monai"]["mvox_per_s"])
    assert inf["geometry_identical"] is True
    # Equal work: the planted card leaves mirroring off, as the MONAI reference runs (and --fast too).
    assert inf["mirroring"] == {"brainseg": False, "brainseg_fast": False, "monai": False, "equal_work": True}

    # --fast: the preset's settings, fewer windows; the floor: the fewest windows, the network alone.
    fast = inf["brainseg_fast"]
    assert fast["overrides"] == preset_overrides("fast")
    assert fast["config"]["infer"]["overlap"] == INFER_PRESETS["fast"]["overlap"]
    assert inf["fast_ratio_vs_monai"] == pytest.approx(fast["mvox_per_s"] / inf["monai"]["mvox_per_s"])
    windows = inf["windows"]
    assert windows == {
        "default": inf["brainseg"]["windows"],
        "fast": fast["windows"],
        "floor": inf["brainseg"]["floor_windows"],
    }
    assert 0 < windows["floor"] <= windows["fast"] < windows["default"], windows
    for mode, run in (("default", inf["brainseg"]), ("fast", fast)):
        assert 0 < run["floor_seconds"] and inf["floor_ratio"][mode] == pytest.approx(
            run["seconds"] / run["floor_seconds"]
        )
    assert report["summary"]["peak_rss_mb"] == {
        "brainseg": inf["brainseg"]["maxrss_mb"],
        "brainseg_fast": fast["maxrss_mb"],
        "monai": inf["monai"]["maxrss_mb"],
    }
    assert report["summary"]["fast_ratio_vs_monai"] == inf["fast_ratio_vs_monai"]
    assert report["summary"]["floor_ratio"] == inf["floor_ratio"]

    # The figures are those of the masks the two pipelines wrote.
    a = np.asarray(nib.load(work / "pred_brainseg_cpu" / f"{inf['cases'][0]}.nii.gz").dataobj)
    b = np.asarray(nib.load(work / "pred_monai_cpu" / f"{inf['cases'][0]}.nii.gz").dataobj)
    f = np.asarray(nib.load(work / "pred_brainseg_fast_cpu" / f"{inf['cases'][0]}.nii.gz").dataobj)
    ref = np.asarray(nib.load(demo_data / "labelsTs" / f"{inf['cases'][0]}.nii.gz").dataobj)
    assert inf["agreement"] == pytest.approx(float(np.mean(a == b)), abs=1e-12)
    for label in ("1", "2", "3"):
        value = int(label)
        assert inf["dice_vs_reference_brainseg"][label] == pytest.approx(dice(a == value, ref == value))
        assert inf["dice_vs_reference_monai"][label] == pytest.approx(dice(b == value, ref == value))
        diff = inf["dice_vs_reference_brainseg"][label] - inf["dice_vs_reference_monai"][label]
        assert inf["dice_diff"][label] == pytest.approx(diff)
        fast_dice = dice(f == value, ref == value)
        assert inf["fast_dice_vs_reference"][label] == pytest.approx(fast_dice)
        assert inf["fast_dice_diff_vs_default"][label] == pytest.approx(fast_dice - dice(a == value, ref == value))
    # The planted rule, one pass each: the two pipelines differ only by their resampling and
    # field of view, so they nearly agree, and score alike against the reference labels.
    assert len(np.unique(a)) == 4, "the planted rule gives every label somewhere"
    assert inf["agreement"] >= 0.95 and inf["dice_between_masks"]["3"] >= 0.85, inf["dice_between_masks"]
    assert inf["dice_diff_max"] <= 0.06, inf["dice_diff"]
    assert all(v >= 0.4 for v in inf["dice_vs_reference_brainseg"].values()), inf["dice_vs_reference_brainseg"]
    # MONAI against itself with its windows moved: a voxel-wise rule cannot notice where the windows fall.
    placement = inf["reference_placement"]
    assert placement["agreement_with_default_min"] >= 0.9999 and placement["dice_spread_max"] <= 1e-4
    # A voxel-wise rule cannot notice where, or how many, windows fall either: --fast changes nothing but the time.
    assert inf["fast_agreement_with_default"] >= 0.9999 and inf["fast_dice_diff_vs_default_max"] <= 1e-3
    assert set(report["targets"]) >= {
        "inference_ratio_at_least_5",
        "inference_fast_ratio_at_least_10",
        "inference_fast_dice_within_0.01_of_default",
        "inference_equal_work",
        "inference_agreement_at_least_98pct",
    }
    assert report["targets"]["inference_agreement_at_least_98pct"] == (inf["agreement"] >= 0.98)
    assert report["targets"]["inference_ratio_at_least_5"] == (inf["ratio_vs_monai"] >= 5)
    assert report["targets"]["inference_equal_work"] is True
    assert "brainseg predict --fast" in res.stdout and "floor: end to end" in res.stdout


def test_the_benchmark_names_the_shipped_network(tmp_path: Path):
    """Trained here from configs/demo.yaml as it is: the shipped network; with another norm, or given: not."""
    model = intensity_rule_checkpoint(tmp_path / "checkpoint_final.pt")
    shipped = network_info(model, {"config": "configs/demo.yaml", "overrides": []})
    variant = network_info(model, {"config": "configs/demo.yaml", "overrides": ["model.norm=batch"]})
    assert shipped["shipped"] is True and shipped["source"] == "configs/demo.yaml"
    assert variant["shipped"] is False and variant["source"] == "configs/demo.yaml --set model.norm=batch"
    assert network_info(model)["shipped"] is False
    assert QUICK["norm"] is None and FULL["norm"] is None  # the benchmark trains configs/demo.yaml's own norm
    assert "ensemble" in SECTIONS and "ensemble" not in DEFAULT_SECTIONS
