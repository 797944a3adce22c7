"""Fine-tuning (``brainseg train --init RUN``) on real demo brains and a real tiny trained run.

``base_run`` trains a tiny deep-supervision model on the session's demo data set once per
module (4 short epochs); the fine-tunings start from it on the same scans, on a copy with
another label set, or on a copy whose channel is named differently.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brainseg.config import config_from_dict, load_config
from brainseg.evaluate.metrics import dice
from brainseg.infer.predictor import Predictor
from brainseg.io.images import read_label
from brainseg.model.checkpoint import load_model
from brainseg.train.finetune import EPOCH_FACTOR, FINETUNE_FILE, LR_FACTOR, file_sha256, finetune_config, load_init
from brainseg.train.trainer import Trainer, train
from tests.conftest import brainseg, error_lines

TINY = [
    "model.levels=3",
    "model.base_features=4",
    "model.max_features=16",
    "model.deep_supervision=true",
    "train.patch_size=[32,32,32]",
    "train.batch_size=2",
    "train.epochs=4",
    "train.iters_per_epoch=3",
    "train.num_workers=0",
    "train.val_every=4",
    "train.threads=1",
    "train.optimizer=adamw",
    "train.lr=0.003",
    "data.target_spacing=[3.0,3.0,3.0]",
    "infer.batch_windows=8",
]
SHORT = ["train.iters_per_epoch=2"]  # the fine-tunings' steps per epoch (one epoch: a quarter of four)


@pytest.fixture(scope="module")
def base_run(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("base") / "run"
    train(demo_data, run, load_config(overrides=TINY), device="cpu", progress=False)
    return run


def _relabelled(demo_data: Path, out: Path) -> Path:
    """A copy of the demo data with grey and white matter merged into one label 2 ("tissue")."""
    meta = json.loads((demo_data / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "CSF": 1, "tissue": 2}
    for sub in ("imagesTr", "imagesTs", "labelsTr", "labelsTs"):
        (out / sub).mkdir(parents=True)
        for f in (demo_data / sub).iterdir():
            if sub.startswith("labels"):
                img = nib.load(str(f))
                lab = np.asarray(img.dataobj).copy()
                lab[lab == 3] = 2
                nib.save(nib.Nifti1Image(lab.astype(np.uint8), img.affine), str(out / sub / f.name))
            else:
                (out / sub / f.name).write_bytes(f.read_bytes())
    (out / "dataset.json").write_text(json.dumps(meta))
    return out


def test_the_config_keeps_the_runs_plan_with_a_short_schedule(base_run: Path, demo_data: Path):
    init = load_init(base_run)
    base = config_from_dict(init.card.config)
    cfg = finetune_config(init, demo_data)
    assert init.checkpoint == base_run / "checkpoint_final.pt"
    assert cfg.data.target_spacing == [3.0, 3.0, 3.0] == list(init.card.spacing)
    assert cfg.model == base.model and cfg.model.levels == 3 and cfg.model.deep_supervision
    assert cfg.train.patch_size == [32, 32, 32]
    assert cfg.data.normalization == base.data.normalization and cfg.labels == base.labels
    assert cfg.train.lr == pytest.approx(0.003 * LR_FACTOR) and cfg.train.lr < base.train.lr
    assert cfg.train.epochs == math.ceil(4 * EPOCH_FACTOR) == 1
    assert init.source.sha256 == file_sha256(init.checkpoint) and init.source.path == str(init.checkpoint.resolve())
    # --set still overrides, after the fine-tuning defaults
    assert finetune_config(init, demo_data, ["train.lr=0.02", "train.epochs=7"]).train.lr == 0.02


def test_step_zero_is_the_loaded_model_and_its_dice(base_run: Path, demo_data: Path, tmp_path: Path):
    init = load_init(base_run)
    cfg = finetune_config(init, demo_data, SHORT)
    trainer = Trainer(demo_data, tmp_path / "run2", cfg, device="cpu", progress=False, init=init)
    trainer.setup()
    weights = trainer.model.state_dict()
    assert weights.keys() == init.weights.keys()
    assert all(torch.equal(weights[k].cpu(), v) for k, v in init.weights.items())
    row = trainer.state.history[0]
    assert row["step"] == 0 and row["epoch"] == 0

    # RUN's own prediction (predict + evaluate, no mirroring) on the new data's validation cases
    model, card = load_model(base_run)
    base_cfg = config_from_dict(card.config)
    predictor = Predictor(model, card, replace(base_cfg.infer, mirror=False), base_cfg.postprocess)
    val = json.loads((tmp_path / "run2" / "split.json").read_text())["val"]
    assert val
    sums = dict.fromkeys((1, 2, 3), 0.0)
    for case_id in val:
        pred, _, _ = predictor.predict_case([demo_data / "imagesTr" / f"{case_id}_0000.nii.gz"])
        ref, _ = read_label(demo_data / "labelsTr" / f"{case_id}.nii.gz")
        for v in sums:
            sums[v] += dice(pred == v, ref == v)
    for v, total in sums.items():
        assert row[f"val_dice_{v}"] == pytest.approx(total / len(val), abs=1e-9)
    with open(tmp_path / "run2" / "metrics.csv") as fh:
        assert next(csv.DictReader(fh))["step"] == "0"


def test_a_channel_mismatch_is_one_error_line(base_run: Path, demo_data_copy: Path, tmp_path: Path):
    meta = json.loads((demo_data_copy / "dataset.json").read_text())
    meta["channel_names"] = meta["modality"] = {"0": "FLAIR"}
    (demo_data_copy / "dataset.json").write_text(json.dumps(meta))
    res = brainseg("train", "--data", str(demo_data_copy), "--init", str(base_run), "--out", str(tmp_path / "r2"))
    assert res.returncode != 0
    lines = error_lines(res.stderr)
    assert len(lines) == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "['FLAIR']" in lines[0] and "['T1']" in lines[0] and str(demo_data_copy) in lines[0]
    assert not (tmp_path / "r2" / "checkpoint_last.pt").exists()


@pytest.mark.slow
def test_a_new_label_set_starts_the_heads_anew_and_trains(
    base_run: Path, demo_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    data = _relabelled(demo_data, tmp_path / "data")
    init = load_init(base_run)
    cfg = finetune_config(init, data, SHORT)
    trainer = Trainer(data, tmp_path / "run2", cfg, device="cpu", progress=False, init=init)
    with caplog.at_level(logging.WARNING, logger="brainseg.train.finetune"):
        trainer.setup()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "output layers (2) start anew" in warnings[0], warnings
    weights = trainer.model.state_dict()
    heads = [k for k in weights if k.startswith("heads.")]
    assert {k.split(".")[1] for k in heads} == {"0", "1"}  # both deep-supervision heads
    assert all(weights[k].shape[0] == 3 and init.weights[k].shape[0] == 4 for k in heads if k.endswith("weight"))
    assert all(torch.equal(weights[k].cpu(), v) for k, v in init.weights.items() if not k.startswith("heads."))
    summary = trainer.fit()
    assert summary["steps"] == 2 and set(summary["val_dice_after"]) == {"1", "2"}
    assert summary["val_dice_before"].keys() == summary["val_dice_after"].keys()
    _, card = load_model(tmp_path / "run2")
    assert card.labels == {0: "background", 1: "CSF", 2: "tissue"} and card.num_classes == 3
    assert card.initialised_from == init.source


@pytest.mark.slow
def test_the_cli_fine_tunes_and_reports_before_and_after(base_run: Path, demo_data: Path, tmp_path: Path):
    run2 = tmp_path / "run2"
    res = brainseg(
        "train", "--data", str(demo_data), "--init", str(base_run), "--out", str(run2), "--no-progress",
        *[a for s in SHORT for a in ("--set", s)],
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    report = json.loads((run2 / FINETUNE_FILE).read_text())
    digest = file_sha256(base_run / "checkpoint_final.pt")
    assert report["initialised_from"] == {"path": str((base_run / "checkpoint_final.pt").resolve()), "sha256": digest}
    line = next(x for x in res.stdout.splitlines() if x.startswith("fine-tuned from"))
    assert f"{report['val_dice_before_mean']:.3f} before any step -> {report['val_dice_after_mean']:.3f} after" in line
    assert "trained 1 epochs (2 steps" in res.stdout
    _, card = load_model(run2)
    assert card.initialised_from is not None and card.initialised_from.sha256 == digest
    assert list(card.spacing) == [3.0, 3.0, 3.0] and card.network == load_model(base_run)[1].network
    cfg = load_config(run2 / "config.yaml")
    assert cfg.train.lr == pytest.approx(0.0003) and cfg.train.epochs == 1
    with open(run2 / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["step"] for r in rows] == ["0", "2"]
    assert float(rows[0]["val_dice_mean"]) == pytest.approx(report["val_dice_before_mean"], abs=1e-5)
