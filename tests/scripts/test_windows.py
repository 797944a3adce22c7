"""The window experiment (``python -m scripts.experiments.windows``) on real files: a tiny model at 4 mm,
two demo subjects (one skull-stripped, one with a noisy background) with their labels. Every case is
segmented under every setting it is asked for; the arm that matches ``brainseg predict``'s own rule
on a noisy scan (half-patch overlap, no margin) gives the Dice of the predictor's own mask; fewer
windows where the settings say so; the baseline's differences are 0 and the report reads the rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from brainseg.config import load_config
from brainseg.evaluate.metrics import dice_per_class
from brainseg.infer.loading import load_predictor
from brainseg.io.images import read_label, write_image
from scripts.experiments import windows

SETTINGS = ["patch, overlap 1/2, margin 6", "patch, overlap 1/2, margin 0", "patch, overlap 1/4, margin 0"]
SETTINGS += ["2 patch, overlap 1/2, margin 6", "patch, overlap 1/2, margin 0, bf16"]


@pytest.fixture
def cases(subjects, tmp_path: Path) -> tuple[Path, Path]:
    images, labels = tmp_path / "images", tmp_path / "labels"
    for name, (image, label, geometry, _) in zip(("stripped", "noisy"), subjects[:2]):
        write_image(images / f"{name}_0000.nii.gz", image, geometry)
        write_image(labels / f"{name}.nii.gz", label.astype(np.uint8), geometry)
    return images, labels


def test_every_case_under_every_setting_and_the_predict_rule_arm_is_predicts_mask(
    cases, tiny_checkpoint_factory, tmp_path: Path
):
    images, labels = cases
    model = tiny_checkpoint_factory(spacing=(4.0, 4.0, 4.0))
    out = tmp_path / "out"
    assert (
        windows.main(["--cases", str(model), str(images), str(labels), "--out", str(out), "--settings", *SETTINGS]) == 0
    )
    report = json.loads((out / "report.json").read_text())
    rows = {(r["case"], r["setting"]): r for r in report["rows"]}
    assert len(report["rows"]) == 2 * len(SETTINGS) == len(rows)
    assert {r["background"] for r in report["rows"]} == {"zero", "noise"}
    for case in ("stripped", "noisy"):
        r = {s: rows[case, s] for s in SETTINGS}
        assert r[SETTINGS[0]]["window"] == [16, 16, 16] and r[SETTINGS[3]]["window"] == [32, 32, 32]
        assert r[SETTINGS[1]]["windows"] < r[SETTINGS[0]]["windows"]  # no margin: fewer windows
        assert r[SETTINGS[2]]["windows"] < r[SETTINGS[1]]["windows"]  # a longer step: fewer still
        assert r[SETTINGS[3]]["windows"] < r[SETTINGS[0]]["windows"]

    # predict's own rule on the noisy scan is the arm "half-patch overlap, no margin": the same Dice
    predictor = load_predictor(model, torch.device("cpu"))
    assert load_config().infer.overlap == 0.5
    case = predictor.prepare([images / "noisy_0000.nii.gz"])
    assert not case.record.zero_background and predictor.window(case.record).margin == 0.0
    mask = predictor.segment(case)[0]
    ref, _ = read_label(labels / "noisy.nii.gz")
    dice = dice_per_class(mask, ref, [1, 2])
    # the predictor's own precision is the card's infer.amp (bf16; float32 on a CPU without native bf16)
    assert rows["noisy", SETTINGS[4]]["dice"] == {str(k): round(float(v), 4) for k, v in dice.items()}
    fp32 = load_predictor(model, torch.device("cpu"), overrides=["infer.amp=none"])
    dice32 = dice_per_class(fp32.segment(case)[0], ref, [1, 2])
    assert rows["noisy", SETTINGS[1]]["dice"] == {str(k): round(float(v), 4) for k, v in dice32.items()}

    summary = report["summary"]
    base = summary[SETTINGS[0]]
    assert base["windows_ratio"] == base["seconds_ratio"] == 1.0 and base["all"]["mean"] == 0.0
    for name in SETTINGS[1:]:
        got = summary[name]
        want = np.mean(
            [
                [rows[c, name]["dice"][k] - rows[c, SETTINGS[0]]["dice"][k] for k in ("1", "2")]
                for c in ("stripped", "noisy")
            ]
        )
        assert got["all"]["mean"] == pytest.approx(want, abs=1e-4)
        assert got["by_background"]["zero"]["n"] == got["by_background"]["noise"]["n"] == 1
        assert got["windows_ratio"] < 1.0
    assert "| patch, overlap 1/4, margin 0 |" in (out / "report.md").read_text()


def test_unknown_settings_are_refused(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exc:
        windows.main(["--cases", "a", "b", "c", "--out", str(tmp_path), "--settings", "patch, overlap 0"])
    assert exc.value.code == 2 and "unknown settings" in capsys.readouterr().err
