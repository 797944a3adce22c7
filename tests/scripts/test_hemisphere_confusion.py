"""Left/right confusion (``python -m scripts.experiments.hemisphere_confusion``) on planted masks:
real NIfTI files whose swapped voxels are counted by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def _save(data: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.uint8), np.diag([1.5, 1.5, 1.5, 1.0])), str(path))


def test_planted_side_swaps_are_counted(tmp_path: Path):
    ref = np.zeros((10, 8, 6), dtype=np.uint8)
    ref[:5, :4] = 2  # left grey matter: 5 * 4 * 6 = 120 voxels
    ref[5:, :4] = 3  # right grey matter: 120
    ref[:5, 4:] = 4  # left white matter: 120
    ref[5:, 4:] = 5  # right white matter: 120
    good = ref.copy()
    swapped = ref.copy()
    swapped[:2, :4] = 3  # 48 left grey matter voxels called right
    swapped[5:, 4:] = 1  # right white matter called something else entirely: no side swap
    for name, mask in (("good", good), ("swapped", swapped)):
        _save(ref, tmp_path / "ref" / f"{name}.nii.gz")
        _save(mask, tmp_path / "pred" / f"{name}.nii.gz")
    _save(ref, tmp_path / "ref" / "unpredicted.nii.gz")  # no prediction: left out

    out = tmp_path / "confusion.json"
    cmd = [sys.executable, "-m", "scripts.experiments.hemisphere_confusion", "--pred", str(tmp_path / "pred")]
    cmd += ["--ref", str(tmp_path / "ref"), "--json", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stderr
    result = json.loads(out.read_text())
    assert set(result["cases"]) == {"good", "swapped"}
    assert result["cases"]["good"] == {"confusion": 0.0, "dice_2": 1.0, "dice_3": 1.0, "dice_4": 1.0, "dice_5": 1.0}
    case = result["cases"]["swapped"]
    assert case["confusion"] == pytest.approx(48 / 480)
    assert case["dice_2"] == pytest.approx(2 * 72 / (72 + 120))
    assert case["dice_3"] == pytest.approx(2 * 120 / (168 + 120))
    assert case["dice_4"] == 1.0 and case["dice_5"] == 0.0
    assert result["mean"]["confusion"] == pytest.approx(0.05)
    assert result["gaps"]["2-3"] == pytest.approx(abs((1 + 2 * 72 / 192) - (1 + 240 / 288)) / 2)
    assert result["gaps"]["4-5"] == pytest.approx(0.5)
    assert "left/right Dice gaps: 2-3" in res.stdout
