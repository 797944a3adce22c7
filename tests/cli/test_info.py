"""``brainseg info`` as users run it: the card of a run folder or checkpoint, as text or JSON, with the
file's SHA-256, the training set's fingerprint and cross-validation scores when the folder holds them."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from brainseg.cli import main
from brainseg.data.layouts import discover_dataset
from brainseg.io.naming import FINGERPRINT_FILE
from brainseg.labels.regions import Regions
from brainseg.model.card import ModelCard
from brainseg.plan.fingerprint import fingerprint_dataset
from tests.cli.conftest import cli, error_lines, make_train_set

BRATS = Regions(("WT", "TC", "ET"), ((1, 2, 4), (1, 4), (4,)), (2, 1, 4))
BRATS_LABELS = {"0": "background", "1": "necrosis", "2": "oedema", "4": "enhancing"}
CV_CSV = "fold,dice_a,dice_b\n0,0.81,0.72\n1,0.79,0.70\n"


@pytest.fixture(scope="module")
def run_folder(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder: the tiny checkpoint, the real fingerprint of a 3-case data set, CV scores."""
    root = tmp_path_factory.mktemp("info")
    run = root / "run"
    run.mkdir()
    shutil.copy(tiny_checkpoint, run / tiny_checkpoint.name)
    fingerprint_dataset(discover_dataset(make_train_set(root / "data", n=3)), run / FINGERPRINT_FILE)
    (run / "cv_summary.csv").write_text(CV_CSV)
    return run


def test_text_names_labels_checksum_training_data_and_cv_scores(run_folder: Path):
    proc = cli("info", run_folder)
    assert proc.returncode == 0, proc.stderr
    sha = hashlib.sha256((run_folder / "checkpoint_final.pt").read_bytes()).hexdigest()
    lines = {line.split("  ")[0]: line for line in proc.stdout.splitlines() if not line.startswith(" ")}
    assert lines["labels"].endswith("0 background, 1 a, 2 b")
    assert lines["sha256"].endswith(sha)
    assert lines["checkpoint"].endswith(str((run_folder / "checkpoint_final.pt").resolve()))
    assert lines["channels"].endswith("T1") and "1.5 x 1.5 x 1.5 mm" in lines["spacing"]
    assert "16 x 16 x 16 voxels" in lines["patch"] and "features [4, 8]" in lines["network"]
    assert lines["normalisation"].split("  ")[-1].startswith("zscore")
    assert lines["decision"].endswith("argmax of the softmax")
    assert "3 case(s) (msd layout), channels ch0" in lines["training data"]
    assert "median spacing 1.5 x 1.5 x 1.5 mm, median shape 20 x 24 x 18 (RAS)" in proc.stdout
    assert "fold  dice_a  dice_b" in proc.stdout and "1     0.79    0.70" in proc.stdout
    assert proc.stderr == ""


def test_json_is_the_card_with_checksum_and_extras(run_folder: Path):
    (run_folder / "cv_summary.json").write_text(json.dumps({"mean_dice": {"a": 0.8, "b": 0.71}}))
    try:
        proc = cli("info", run_folder / "checkpoint_final.pt", "--json")
    finally:
        (run_folder / "cv_summary.json").unlink()
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    for key in ("labels", "channels", "spacing", "patch_size", "network", "normalization", "config", "versions"):
        assert key in info
    assert info["labels"] == {"0": "background", "1": "a", "2": "b"}
    assert info["sha256"] == hashlib.sha256((run_folder / "checkpoint_final.pt").read_bytes()).hexdigest()
    assert info["training_data"] == {
        "cases": 3,
        "channels": ["ch0"],
        "median_spacing": [1.5, 1.5, 1.5],
        "median_shape": [20.0, 24.0, 18.0],
        "layout": "msd",
    }
    assert info["cv"]["scores"] == {"mean_dice": {"a": 0.8, "b": 0.71}}  # the JSON file comes first
    assert info["cv"]["source"].endswith("cv_summary.json")
    assert info["installed_versions"]["torch"] and info["parameters"] > 1000
    card = ModelCard.from_dict(info)
    assert card.channels == ("T1",) and card.patch_size == (16, 16, 16)


def test_decision_of_region_and_offset_models(tiny_checkpoint_factory, capsys):
    regions = tiny_checkpoint_factory(
        channels=("FLAIR", "T1CE"),
        labels=BRATS_LABELS,
        regions=BRATS,
        region_thresholds=(0.4, 0.5, 0.6),
        innermost_min_mm3=50.0,
    )
    offsets = tiny_checkpoint_factory(class_offsets=(0.0, -0.5, 0.25))
    capsys.readouterr()
    assert main(["info", str(regions)]) == 0
    text = capsys.readouterr().out
    assert "one sigmoid per region, in class order; innermost-region minimum volume 50 mm^3" in text
    assert "WT = labels [1, 2, 4]: probability >= 0.4, writes 2" in text
    assert "ET = labels [4]: probability >= 0.6, writes 4" in text
    assert "2 channel(s) in, 3 region output(s)" in text
    assert main(["info", str(offsets), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["class_offsets"] == [0.0, -0.5, 0.25] and info["training_data"] is None and info["cv"] is None
    assert main(["info", str(offsets)]) == 0
    assert "per-class log-probability offsets (0 +0, 1 -0.5, 2 +0.25)" in capsys.readouterr().out


def test_missing_model_is_one_line(tmp_path: Path):
    proc = cli("info", tmp_path / "nowhere.pt")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert error_lines(proc.stderr, "brainseg: error:") == [
        f"brainseg: error: {tmp_path / 'nowhere.pt'}: checkpoint not found"
    ]
