"""scripts/benchmark.py: the command line answers and its comparison arithmetic is right.

Nothing is timed here (timings in tests are flaky; speed lives in the benchmark itself).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


def _load():
    spec = importlib.util.spec_from_file_location("brainseg_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_runs():
    res = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "--quick" in res.stdout and "--json" in res.stdout and "--model" in res.stdout


def test_agreement_and_dice_arithmetic():
    bench = _load()
    a = np.zeros((4, 4, 4), dtype=np.uint8)
    b = np.zeros((4, 4, 4), dtype=np.uint8)
    a[:2] = 1  # 32 voxels of label 1
    b[:1] = 1  # 16 of them
    b[3, 3, 3] = 2  # label 2 only in b
    r = bench.mask_agreement(a, b, [0, 1, 2])
    assert r["agreement"] == pytest.approx((64 - 16 - 1) / 64)
    assert r["agreement_foreground"] == pytest.approx(16 / 33)
    assert r["dice"][1] == pytest.approx(2 * 16 / 48)
    assert r["dice"][2] == 0.0 and r["dice"][0] == pytest.approx(2 * 31 / (32 + 47))
    with pytest.raises(ValueError):
        bench.mask_agreement(a, b[:3], [0, 1])

    d = bench.dice_difference({1: [0.8, 0.9], 2: [0.5, 0.5]}, {1: [0.8, 0.8], 2: [0.6, 0.6]})
    assert d["diff"][1] == pytest.approx(0.05) and d["diff"][2] == pytest.approx(-0.1)
    assert d["max"] == pytest.approx(0.1) and d["max_per_case"] == pytest.approx(0.1)

    lin = bench.linearity([1.0, 2.0, 4.0], [2.0, 4.0, 8.0])
    assert lin["ratio_max_min_per_mvox"] == pytest.approx(1.0) and lin["fit_slope_per_mvox"] == pytest.approx(2.0)

    mix = bench.mix_corrected([1.0, 1.0, 3.0], [False, False, True], 0.5)
    assert mix["patches_per_s_at_config_mix"] == pytest.approx(1 / 2.0)


def test_placement_range_arithmetic():
    bench = _load()
    r = bench.placement_range({1: [0.70, 0.72, 0.69], 2: [0.9, 0.9]})
    assert r["range"] == {1: [0.69, 0.72], 2: [0.9, 0.9]} and r["spread_max"] == pytest.approx(0.03)
    gap = bench.outside_range({1: 0.73, 2: 0.9, 3: 0.5}, {1: [0.69, 0.72], 2: [0.9, 0.9], 3: [0.55, 0.6]})
    assert gap[1] == pytest.approx(0.01) and gap[2] == 0.0 and gap[3] == pytest.approx(0.05)


def test_shifted_monai_reference_moves_only_the_windows(tmp_path: Path):
    """The reference rerun with its window lattice shifted (to measure placement noise) must
    be the same pipeline: with a voxel-wise network, where windows fall cannot matter, so
    the masks are identical, and both lie on the scan's own grid."""
    import nibabel as nib
    import torch

    bench = _load()
    rng = np.random.default_rng(0)
    affine = np.array([[-1.2, 0, 0, 40.0], [0, -1.0, 0, 30.0], [0, 0, 1.6, -20.0], [0, 0, 0, 1]])
    image = tmp_path / "case_0000.nii.gz"
    nib.save(nib.Nifti1Image(rng.normal(size=(37, 29, 23)).astype(np.float32) + 3.0, affine), image)
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 3, 1).eval()
    spec = bench.ReferenceSpec(labels=(0, 1, 2), spacing=(1.0, 1.1, 1.3), patch_size=(16, 16, 16))
    masks = []
    for shift in ([0, 0, 0], [4, 5, 6]):
        out = tmp_path / f"out_{shift[0]}"
        bench.MonaiReference(net, spec, "none", out, "cpu", shift=shift)(str(image), "case")
        img = nib.load(out / "case.nii.gz")
        assert img.shape == (37, 29, 23) and np.allclose(img.affine, affine, atol=1e-4)
        masks.append(np.asarray(img.dataobj))
    assert len(np.unique(masks[0])) >= 2
    np.testing.assert_array_equal(masks[0], masks[1])
