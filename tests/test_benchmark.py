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
