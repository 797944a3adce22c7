"""The model card keeps and checks what prediction needs: class offsets, regions and their thresholds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import typing
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from brainseg.config import Config, load_config
from brainseg.demo.tissue import make_demo_dataset
from brainseg.errors import BrainsegError
from brainseg.evaluate.per_label import evaluate_folders
from brainseg.infer.batch import predict
from brainseg.infer.predictor import Predictor
from brainseg.labels.regions import Regions
from brainseg.model.card import CARD_FORMAT, InitialisedFrom, ModelCard
from brainseg.model.checkpoint import load_card, load_checkpoint, load_model, save_checkpoint
from brainseg.train.trainer import train
from tests.conftest import REPO


def test_the_card_keeps_and_checks_the_offsets(tiny_checkpoint: Path):
    _, card = load_model(tiny_checkpoint)
    assert card.class_offsets == ()
    kept = ModelCard.from_dict(replace(card, class_offsets=(0.0, 0.4, -0.2)).to_dict())
    assert kept.class_offsets == (0.0, 0.4, -0.2)
    for bad in ([0.0, 0.4], [0.0, float("nan"), 0.0]):
        raw = card.to_dict() | {"class_offsets": bad}
        with pytest.raises(BrainsegError, match="class_offsets"):
            ModelCard.from_dict(raw, source="x.pt")
    cfg = load_config()
    with pytest.raises(BrainsegError, match="class_offsets"):
        model, _ = load_model(tiny_checkpoint)
        Predictor(model, card, cfg.infer, replace(cfg.postprocess, class_offsets=[0.0, 1.0]))


def test_region_card_checks_its_outputs(tiny_checkpoint_factory):
    card = load_checkpoint(tiny_checkpoint_factory())["card"]  # 3 outputs, labels 0, 1, 2
    wrong = {**card, "regions": Regions(("A", "B"), ((1, 2), (2,)), (1, 2)).to_dict()}
    with pytest.raises(BrainsegError, match="2 region"):
        ModelCard.from_dict(wrong)
    right = {**card, "regions": Regions(("A", "B", "C"), ((1, 2), (2,), (1,)), (1, 2, 1)).to_dict()}
    assert ModelCard.from_dict(right).regions.names == ("A", "B", "C")
    with pytest.raises(BrainsegError, match="region_thresholds"):
        ModelCard.from_dict({**right, "region_thresholds": [0.5, 1.5, 0.5]})
    with pytest.raises(BrainsegError, match="format 3 .* no 'regions'"):
        ModelCard.from_dict({**card, "format": 3})
    assert ModelCard.from_dict(right).to_dict()["format"] == 3


# ---- test_card.py: The typed model card, config value checks, and validation Dice = predict + evaluate.


def _cli(*args: object) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "brainseg", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )


def _stored(tiny_checkpoint: Path) -> dict:
    return load_checkpoint(tiny_checkpoint)


def test_a_card_survives_its_stored_form(tiny_checkpoint):
    card = load_card(tiny_checkpoint)
    assert isinstance(card, ModelCard) and card.format == CARD_FORMAT
    assert card.label_values == [0, 1, 2] and card.channels == ("T1",) and card.num_classes == 3
    again = ModelCard.from_dict(card.to_dict())
    assert again == card and again.to_dict() == card.to_dict()
    model, loaded = load_model(tiny_checkpoint)
    assert loaded == card and model.hparams == card.network.kwargs()


def test_the_card_keeps_what_a_fine_tuned_model_started_from(tiny_checkpoint):
    card = load_card(tiny_checkpoint)
    assert card.initialised_from is None and card.to_dict()["initialised_from"] is None
    source = InitialisedFrom("/runs/base/checkpoint_final.pt", "ab" * 32)
    kept = ModelCard.from_dict(replace(card, initialised_from=source).to_dict())
    assert kept.initialised_from == source
    assert kept.to_dict()["initialised_from"] == {"path": "/runs/base/checkpoint_final.pt", "sha256": "ab" * 32}
    old = card.to_dict()
    del old["initialised_from"]  # a card from before fine-tuning: trained from scratch
    assert ModelCard.from_dict(old).initialised_from is None
    for bad in ({"path": "x.pt", "sha256": "not a digest"}, {"path": "x.pt"}, "x.pt"):
        with pytest.raises(BrainsegError, match="x.pt.*malformed field"):
            ModelCard.from_dict(card.to_dict() | {"initialised_from": bad}, source="x.pt")


@pytest.mark.parametrize("key", ["spacing", "labels", "network", "preprocess_version"])
def test_a_missing_key_is_one_line_naming_the_checkpoint(tiny_checkpoint, key):
    raw = dict(_stored(tiny_checkpoint)["card"])
    del raw[key]
    with pytest.raises(BrainsegError, match=rf"^ckpt.pt: model card has no '{key}'"):
        ModelCard.from_dict(raw, source="ckpt.pt")


def test_inconsistent_or_malformed_cards_are_refused(tiny_checkpoint):
    raw = _stored(tiny_checkpoint)["card"]
    with pytest.raises(BrainsegError, match="network has 3 classes"):
        ModelCard.from_dict(dict(raw, labels={"0": "bg", "1": "a"}))
    with pytest.raises(BrainsegError, match="network takes 1"):
        ModelCard.from_dict(dict(raw, channels=["T1", "T2"]))
    with pytest.raises(BrainsegError, match="'spacing' must be 3 positive numbers"):
        ModelCard.from_dict(dict(raw, spacing=[1.0, -1.0, 1.0]))
    with pytest.raises(BrainsegError, match="malformed field"):
        ModelCard.from_dict(dict(raw, network=dict(raw["network"], norm="layer")))
    with pytest.raises(BrainsegError, match="normalization scheme 'robust'"):
        ModelCard.from_dict(dict(raw, normalization=dict(raw["normalization"], scheme="robust")))


def test_a_quality_score_of_other_features_is_dropped_with_a_warning_naming_the_checkpoint(tiny_checkpoint, caplog):
    """A cross-validation run from before the score's features changed still predicts (its masks
    are unaffected); its stale score is left out, and a later problem still names the file."""
    raw = dict(_stored(tiny_checkpoint)["card"], decision_source={"on": "cross-validation"})
    stale = {"keys": ["1"], "calibrations": [], "n_cases": 3, "features": ["soft_dice", "ood"]}
    card = ModelCard.from_dict(dict(raw, quality=stale), source="fold_0/ckpt.pt")
    assert card.quality is None and card.decision_source == {"on": "cross-validation"}
    assert "fold_0/ckpt.pt: quality score fitted on features ['soft_dice', 'ood']" in caplog.text
    with pytest.raises(BrainsegError, match=r"^fold_0/ckpt.pt: model card 'spacing'"):
        ModelCard.from_dict(dict(raw, spacing=[1.0, -1.0, 1.0]), source="fold_0/ckpt.pt")


def test_a_format_1_card_still_reads(tiny_checkpoint):
    raw = dict(_stored(tiny_checkpoint)["card"])
    raw["format"], raw["model"] = 1, raw.pop("network")
    del raw["preprocess_version"]
    card = ModelCard.from_dict(raw)
    assert card.format == 1 and card.preprocess_version == 4 and card.num_classes == 3


def test_a_card_with_the_old_skip_connections_field_loads(tiny_checkpoint, tmp_path):
    """Cards written before ``skip_mode``: ``skip_connections`` false means "none", true "concat";
    the weights load into the same network."""
    state = load_checkpoint(tiny_checkpoint)
    network = {k: v for k, v in state["card"]["network"].items() if k != "skip_mode"}
    for skips, mode in ((True, "concat"), (False, "none")):
        card = ModelCard.from_dict(dict(state["card"], network=dict(network, skip_connections=skips)))
        assert card.network.architecture.skip_mode == mode
        assert "skip_connections" not in card.to_dict()["network"]
    old = dict(state, card=dict(state["card"], network=dict(network, skip_connections=True)))
    model, _ = load_model(save_checkpoint(tmp_path / "old.pt", old))
    new, _ = load_model(tiny_checkpoint)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), new(x))


def _broken_checkpoint(tiny_checkpoint: Path, folder: Path, change) -> Path:
    state = load_checkpoint(tiny_checkpoint)
    state["card"] = change(dict(state["card"]))
    return save_checkpoint(folder / "checkpoint_final.pt", state)


def _one_scan(folder: Path) -> Path:
    import nibabel as nib
    import numpy as np

    folder.mkdir()
    data = np.zeros((20, 20, 20), np.float32)
    data[5:15, 5:15, 5:15] = 100.0
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 1.5, 1.0])), folder / "s1_0000.nii.gz")
    return folder


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda c: {k: v for k, v in c.items() if k != "spacing"}, "model card has no 'spacing'"),
        (
            lambda c: dict(c, format=4, versions=dict(c["versions"], brainseg="9.1.0")),
            "model card has format 4, this brainseg reads formats 1, 2, 3; it was written by a newer brainseg (9.1.0): upgrade brainseg",
        ),
    ],
    ids=["missing-key", "future-format"],
)
def test_predict_reports_a_bad_card_in_one_line(tiny_checkpoint, tmp_path, change, expected):
    run = tmp_path / "run"
    run.mkdir()
    ckpt = _broken_checkpoint(tiny_checkpoint, run, change)
    scans = _one_scan(tmp_path / "scans")
    res = _cli("predict", "--model", run, "--input", scans, "--output", tmp_path / "out")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"brainseg: error: {ckpt}: {expected}"), res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "out" / "s1.nii.gz").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.norm=layer", "config model.norm: 'layer' is not one of instance, batch, group, none"),
        ("train.optimizer=adam", "config train.optimizer: 'adam' is not one of sgd, adamw"),
        ("data.normalization=robust", "config data.normalization: 'robust' is not one of zscore, quantile, none"),
        ("postprocess.input_mask=all", "config postprocess.input_mask: 'all' is not one of none, restrict, fill"),
        ("infer.amp=fp8", "config infer.amp: 'fp8' is not one of bf16, fp16, none"),
        ("train.lr_schedule=cosine", "config train.lr_schedule: 'cosine' is not one of poly, constant"),
        ("infer.overlap=1.0", "config infer.overlap: must be in [0, 1)"),
        ("train.patch_size=[32,32]", "config train.patch_size: expected 3 positive integers"),
    ],
)
def test_config_values_are_checked_when_loaded(override, message):
    with pytest.raises(BrainsegError) as info:
        load_config(overrides=[override])
    assert str(info.value).startswith(message)


def test_every_enum_like_field_is_checked_against_its_literal_type():
    """The allowed values are the ``Literal`` annotations: each loads, anything else is one line
    naming the field and the values."""
    checked = []
    for section, klass in typing.get_type_hints(Config).items():
        for name, kind in typing.get_type_hints(klass).items():
            if typing.get_origin(kind) is not typing.Literal:
                continue
            field = f"{section}.{name}"
            for value in typing.get_args(kind):
                assert getattr(getattr(load_config(overrides=[f"{field}={value}"]), section), name) == value
            with pytest.raises(BrainsegError) as info:
                load_config(overrides=[f"{field}=bogus"])
            assert str(info.value) == f"config {field}: 'bogus' is not one of {', '.join(typing.get_args(kind))}"
            checked.append(field)
    assert sorted(checked) == [
        "data.normalization",
        "infer.amp",
        "model.norm",
        "model.skip_mode",
        "postprocess.input_mask",
        "train.amp",
        "train.lr_schedule",
        "train.optimizer",
    ]


@pytest.mark.parametrize("command", ["train", "predict"])
def test_a_bad_device_is_one_line(command, tiny_checkpoint, tmp_path):
    args = (
        ["train", "--data", tmp_path, "--out", tmp_path / "run"]
        if command == "train"
        else [
            "predict",
            "--model",
            tiny_checkpoint,
            "--input",
            _one_scan(tmp_path / "scans"),
            "--output",
            tmp_path / "o",
        ]
    )
    res = _cli(*args, "--device", "gpu")
    assert res.returncode == 1
    assert res.stderr.strip() == "brainseg: error: device 'gpu': expected auto, cpu, cuda or cuda:N"


#: predict as validation during training does: the plain argmax, no test-time mirroring.
AS_VALIDATED = ["postprocess.class_offsets=[]", "infer.mirror=false"]


def test_validation_dice_is_what_predict_and_evaluate_report(tmp_path):
    """The trainer's last validation Dice (full precision, from the checkpoint's history)
    equals ``predict`` + ``evaluate`` of the final model on the validation cases, decided
    as validation decides (plain argmax, no test-time mirroring; the class offsets chosen
    after it are predict's addition)."""
    data = make_demo_dataset(tmp_path / "data", n=3, n_test=1, seed=4, verbose=False)
    cfg = load_config(
        REPO / "configs" / "demo.yaml",
        [
            "model.levels=3",
            "model.base_features=4",
            "model.max_features=16",
            "train.patch_size=[32,32,32]",
            "train.epochs=1",
            "train.iters_per_epoch=3",
            "train.num_workers=0",
            "data.target_spacing=[3.0,3.0,3.0]",
            "data.val_fraction=0.5",
        ],
    )
    torch.set_num_threads(1)
    train(data, tmp_path / "run", cfg, device="cpu", progress=False)
    state = load_checkpoint(tmp_path / "run" / "checkpoint_final.pt")
    last = state["history"][-1]
    import json

    val_ids = json.loads((tmp_path / "run" / "split.json").read_text())["val"]
    refs = tmp_path / "refs"
    refs.mkdir()
    for cid in val_ids:
        shutil.copy(data / "labelsTr" / f"{cid}.nii.gz", refs)
    images = [data / "imagesTr" / f"{cid}_0000.nii.gz" for cid in val_ids]
    result = predict(tmp_path / "run", images, tmp_path / "pred", device="cpu", overrides=AS_VALIDATED)
    assert not result.summary.failed
    summary = evaluate_folders(tmp_path / "pred", refs, tmp_path / "eval", labels=[1, 2, 3], progress=False)
    for v in (1, 2, 3):
        assert summary["labels"][str(v)]["dice"]["mean"] == pytest.approx(last[f"val_dice_{v}"], abs=1e-6)
    assert summary["overall"]["dice"]["mean"] == pytest.approx(last["val_dice_mean"], abs=1e-6)
