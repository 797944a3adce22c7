"""``brainseg plan``: the rules on hand-made fingerprints, the written config, and
``brainseg train`` without ``--config`` planning first."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from brainseg.config import load_config
from brainseg.model.unet import UNet3D
from brainseg.plan import plan_config, render_plan
from brainseg.plan.fingerprint import CaseFingerprint, Fingerprint
from brainseg.plan.network import gpu_memory_gb, topology
from brainseg.quality.scan_stats import ChannelStats
from tests.conftest import REPO


def _cli(*args, timeout=900) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "brainseg", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )


def _case(i, spacing, extent=(140.0, 170.0, 140.0), zero=True, outside=0.0, unlabelled=0.0, components=None):
    stats = ChannelStats([0, 1, 5, 25, 50, 75, 95, 99, 100], 50.0, 20.0, zero, 0.3)
    return CaseFingerprint(
        case_id=f"c{i}",
        shape=[100, 100, 100],
        spacing=list(spacing),
        ras_spacing=list(spacing),
        ras_shape=[100, 100, 100],
        axcodes="RAS",
        obliquity=0.0,
        channels=[stats],
        extent_mm=list(extent),
        label_volumes={1: 1000.0, 2: 2000.0},
        label_components=components or {1: 3, 2: 1},
        labels_outside_scan=outside,
        scan_unlabelled=unlabelled,
    )


def _fp(cases, labels=None, channels=("T1",)):
    labels = labels or {0: "background", 1: "CSF", 2: "grey matter"}
    return Fingerprint(channels=list(channels), labels=labels, cases=cases)


def test_isotropic_topology_pools_every_axis():
    topo = topology([48, 48, 48], [1.5, 1.5, 1.5], max_levels=4)
    assert topo.levels == 4 and topo.isotropic and topo.divisor == (8, 8, 8)


def test_anisotropic_topology_pools_the_coarse_axis_late_with_flat_kernels():
    topo = topology([80, 96, 20], [0.9, 0.9, 4.0], max_levels=5)
    assert topo.strides[0] == (2, 2, 1) and topo.kernels[0] == (3, 3, 1)
    # in-plane voxels reach 1.8 then 3.6 mm: from there the third axis is pooled too
    assert topo.strides[2] == (2, 2, 2) and topo.kernels[-1] == (3, 3, 3)
    net = UNet3D(1, 3, levels=topo.levels, base_features=4, strides=topo.strides, kernels=topo.kernels)
    patch = [d * 2 for d in topo.divisor]
    assert net(torch.zeros(1, 1, *patch)).shape[2:] == tuple(patch)


def test_target_spacing_is_the_median_or_keeps_an_anisotropic_axis():
    iso = plan_config(_fp([_case(i, [1.0 + 0.1 * i] * 3) for i in range(5)]), minutes=10, measure=False)
    assert iso.config.data.target_spacing == [1.2, 1.2, 1.2]
    aniso = plan_config(_fp([_case(i, [0.9, 0.9, 3.0 + i]) for i in range(5)]), minutes=10, measure=False)
    assert aniso.config.data.target_spacing == [0.9, 0.9, pytest.approx(3.4)]  # 10th percentile of 3..7
    assert "low-resolution axis kept" in aniso.reasons["data.target_spacing"]
    assert aniso.config.model.strides is not None and aniso.config.model.strides[0] == [2, 2, 1]


def test_the_plan_leaves_synthetic_contrasts_off_and_says_what_they_are_for(tmp_path):
    plan = plan_config(_fp([_case(i, [1.0] * 3) for i in range(3)]), minutes=10, measure=False)
    assert plan.config.train.synth == 0.0
    assert plan.reasons["train.synth"].startswith("off: a share (0.5) of patches redrawn from the labels")
    path = tmp_path / "plan.yaml"
    path.write_text(render_plan(plan, "t"))
    assert "  synth: 0.0  # off: " in path.read_text() and load_config(path).train.synth == 0.0


def test_a_null_target_spacing_trains_at_the_plans_spacing(tmp_path):
    """The trainer with ``data.target_spacing: null`` and the plan choose one voxel size: on an
    anisotropic data set the coarse axis takes its 10th percentile (3.4 mm), not the median (5)."""
    import nibabel as nib

    from brainseg.data.layouts import discover_dataset
    from brainseg.plan.fingerprint import fingerprint_dataset
    from brainseg.train.trainer import Trainer

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i, z in enumerate([3.0, 4.0, 5.0, 6.0, 7.0]):
        image = np.zeros((16, 16, 6), np.float32)
        image[4:12, 4:12, 1:5] = 100.0 + rng.normal(0.0, 5.0, (8, 8, 4))
        affine = np.diag([0.9, 0.9, z, 1.0])
        nib.save(nib.Nifti1Image(image, affine), data / "images" / f"c{i}_0000.nii.gz")
        nib.save(nib.Nifti1Image((image > 0).astype(np.uint8), affine), data / "labels" / f"c{i}.nii.gz")
    cfg = load_config(overrides=["data.target_spacing=null"])
    trainer = Trainer(data, tmp_path / "run", cfg, device="cpu", progress=False)
    trainer._prepare_cases()
    fp = fingerprint_dataset(discover_dataset(data), tmp_path / "fingerprint.json", cfg.data.max_voxels)
    planned = plan_config(fp, minutes=10, measure=False).config.data.target_spacing
    assert trainer.spacing == planned == [0.9, 0.9, pytest.approx(3.4)]


def test_input_mask_rule_follows_the_labels():
    fill = plan_config(_fp([_case(i, [1.5] * 3) for i in range(3)]), measure=False)
    assert fill.config.postprocess.input_mask == "fill"
    restrict = plan_config(_fp([_case(i, [1.5] * 3, unlabelled=0.2) for i in range(3)]), measure=False)
    assert restrict.config.postprocess.input_mask == "restrict"
    none = plan_config(_fp([_case(i, [1.5] * 3, zero=False) for i in range(3)]), measure=False)
    assert none.config.postprocess.input_mask == "none"
    partly = plan_config(_fp([_case(i, [1.5] * 3, outside=0.05) for i in range(3)]), measure=False)
    assert partly.config.postprocess.input_mask == "none"


def test_pairs_ct_and_single_component_labels():
    labels = {0: "background", 1: "Left-Hippocampus", 2: "Right-Hippocampus"}
    plan = plan_config(_fp([_case(i, [1.0] * 3, components={1: 1, 2: 1}) for i in range(3)], labels), measure=False)
    assert plan.config.labels.mirror_pairs == [[1, 2]]
    assert plan.config.postprocess.largest_component == [1, 2]
    unpaired = plan_config(_fp([_case(0, [1.0] * 3)], {0: "bg", 1: "left lesion", 2: "other"}), measure=False)
    assert (
        unpaired.config.labels.mirror_pairs is None and "no left-right flips" in unpaired.reasons["labels.mirror_pairs"]
    )
    ct = plan_config(_fp([_case(0, [1.0] * 3)], channels=("CT",)), measure=False)
    assert ct.config.data.normalization == "ct"


def test_region_labels_plan_the_removal_of_core_less_components():
    labels = {0: "background", 1: "necrosis", 2: "edema", 4: "enhancing"}
    fp = _fp([_case(i, [1.0] * 3) for i in range(3)], labels)
    assert not plan_config(fp, measure=False).config.postprocess.drop_coreless  # per-label: no core
    fp.regions = {"names": ["WT", "TC", "ET"], "labels": [[1, 2, 4], [1, 4], [4]], "class_order": [2, 1, 4]}
    plan = plan_config(fp, measure=False)
    assert plan.config.postprocess.drop_coreless and "core-less" in plan.reasons["postprocess.drop_coreless"]


def test_gpu_plan_fits_its_memory():
    fp = _fp([_case(i, [1.0] * 3, extent=(150.0, 180.0, 150.0)) for i in range(3)])
    small, large = (plan_config(fp, device="cuda", gpu_memory=gb, measure=False) for gb in (6.0, 40.0))
    for plan, gb in ((small, 6.0), (large, 40.0)):
        c = plan.config
        topo = topology(c.train.patch_size, c.data.target_spacing, 6)
        assert gpu_memory_gb(c.train.patch_size, topo, c.model.base_features, c.model.max_features, 2) <= gb
    assert np.prod(large.config.train.patch_size) > np.prod(small.config.train.patch_size)
    assert small.config.model.deep_supervision and small.config.train.optimizer == "sgd"


def test_the_written_plan_reads_back_exactly_and_says_why(tmp_path):
    plan = plan_config(_fp([_case(i, [0.9, 0.9, 4.0]) for i in range(3)]), minutes=10, measure=False)
    path = tmp_path / "plan.yaml"
    path.write_text(render_plan(plan, "test"))
    assert load_config(path) == plan.config
    text = path.read_text()
    assert "target_spacing: [0.9, 0.9, 4.0]  # median" in text
    assert yaml.safe_load(text)["model"]["strides"][0] == [2, 2, 1]


@pytest.mark.slow
def test_plan_command_on_demo_data(demo_data, tmp_path):
    out = tmp_path / "plan.yaml"
    res = _cli("plan", "--data", demo_data, "--out", out, "--minutes", 10, "--device", "cpu", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("plan: ") and out.is_file()
    config = load_config(out)
    assert config.train.epochs * config.train.iters_per_epoch >= 100  # steps measured to fill 10 minutes
    assert config.postprocess.input_mask in ("fill", "none")
    assert (tmp_path / "plan.fingerprint.json").is_file()


@pytest.mark.slow
def test_train_without_config_plans_first(demo_data, tmp_path):
    run = tmp_path / "run"
    res = _cli(
        "train",
        "--data",
        demo_data,
        "--out",
        run,
        "--device",
        "cpu",
        "--no-progress",
        "--max-minutes",
        10,
        "--set",
        "train.epochs=1",
        "--set",
        "train.iters_per_epoch=2",
        "--set",
        "train.num_workers=0",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("plan: ")
    assert (run / "plan.yaml").is_file() and (run / "fingerprint.json").is_file()
    planned, used = load_config(run / "plan.yaml"), load_config(run / "config.yaml")
    assert used.train.epochs == 1 and used.train.patch_size == planned.train.patch_size  # --set still overrides
    card = torch.load(run / "checkpoint_final.pt", weights_only=True)["card"]
    assert card["training_ranges"]["n_cases"] == 3
    again = _cli("train", "--data", demo_data, "--out", run, "--device", "cpu")
    assert again.returncode == 1 and "already holds a training run" in again.stderr


def test_the_learning_rate_follows_the_steps_while_the_run_keeps_to_its_budget():
    from brainseg.train.recipe import schedule_progress

    assert schedule_progress(500, 1000, 200.0, 600.0) == 0.5  # on pace for 400 s of 600: by steps
    assert schedule_progress(500, 1000, 400.0, 600.0) == pytest.approx(400 / 600)  # would overrun: by the clock
    assert schedule_progress(500, 1000, 400.0, None) == 0.5
    assert schedule_progress(0, 1000, 5.0, 600.0) == pytest.approx(5 / 600)
