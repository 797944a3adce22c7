"""Training on real (demo) brains: the CLI end to end, checkpoints, resume, DDP, overfitting.

``demo_data`` is the session's shared demo data set (conftest.py); trainings only read it.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import brainseg
from brainseg.config import AugmentConfig
from brainseg.model.card import CARD_FORMAT, ModelCard
from brainseg.model.checkpoint import CHECKPOINT_LAST
from brainseg.preprocessing.preprocess import PREPROCESS_VERSION
from brainseg.runtime import effective_amp
from brainseg.train.sampling.loader import PatchDataset

# A network and schedule small enough for seconds per epoch on 2 CPU cores.
TINY = [
    "--set",
    "model.levels=3",
    "--set",
    "model.base_features=4",
    "--set",
    "model.max_features=16",
    "--set",
    "train.patch_size=[32,32,32]",
    "--set",
    "train.batch_size=2",
    "--set",
    "train.iters_per_epoch=3",
    "--set",
    "train.num_workers=0",
    "--set",
    "train.val_every=1",
    "--set",
    "train.optimizer=adamw",
    "--set",
    "train.lr=0.003",
    "--set",
    "data.target_spacing=[3.0,3.0,3.0]",
    "--set",
    "infer.batch_windows=8",
]


def brainseg_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "brainseg", *args]


def run(cmd: list[str], timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, **kw)


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_train_cli_writes_a_self_describing_run(demo_data, tmp_path):
    run_dir = tmp_path / "run"
    res = run(
        brainseg_cmd("train", "--data", str(demo_data), "--out", str(run_dir), "--epochs", "2", "--no-progress", *TINY)
    )
    assert res.returncode == 0, res.stderr
    precision = "bf16" if effective_amp(torch.device("cpu"), "bf16") == "bf16" else "float32"
    assert re.search(rf"trained 2 epochs \(\d+ steps, [\d.]+ min in {precision}\)", res.stdout), res.stdout
    for name in (
        "checkpoint_last.pt",
        "checkpoint_best.pt",
        "checkpoint_final.pt",
        "metrics.csv",
        "curves.png",
        "config.yaml",
        "split.json",
    ):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tensorboard").iterdir())
    rows = read_metrics(run_dir)
    assert [int(float(r["epoch"])) for r in rows] == [1, 2]
    for r in rows:  # the mean is the mean of the per-label validation Dice the row also holds
        per_label = [float(v) for k, v in r.items() if k.startswith("val_dice_") and k != "val_dice_mean" and v]
        assert len(per_label) == 3  # the demo data's CSF, grey and white matter
        assert float(r["val_dice_mean"]) == pytest.approx(sum(per_label) / 3, abs=1e-6)
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    state = torch.load(run_dir / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    card = state["card"]
    assert card["labels"] == {"0": "background", "1": "CSF", "2": "grey matter", "3": "white matter"}
    assert card["channels"] == ["T1"]
    assert card["spacing"] == [3.0, 3.0, 3.0]
    assert card["patch_size"] == [32, 32, 32]
    assert card["normalization"]["scheme"] == "zscore"
    assert card["config"]["model"]["levels"] == 3
    assert {"torch", "monai", "brainseg"} <= set(card["versions"])
    assert card["format"] == CARD_FORMAT and card["preprocess_version"] == PREPROCESS_VERSION
    assert card["network"]["levels"] == 3 and card["network"]["num_classes"] == 4
    assert state["epoch"] == 2 and state["step"] == 6

    model, card2 = brainseg.load_model(run_dir)
    assert isinstance(model, torch.nn.Module) and not model.training
    assert isinstance(card2, ModelCard) and card2 == ModelCard.from_dict(card)
    assert card2.labels == {0: "background", 1: "CSF", 2: "grey matter", 3: "white matter"}
    assert card2.to_dict() == card
    out = model(torch.zeros(1, 1, 32, 32, 32))
    assert out.shape == (1, 4, 32, 32, 32)


@pytest.mark.slow
def test_existing_run_is_not_overwritten_without_resume(demo_data, tmp_path):
    run_dir = tmp_path / "run"
    assert (
        run(
            brainseg_cmd(
                "train", "--data", str(demo_data), "--out", str(run_dir), "--epochs", "1", "--no-progress", *TINY
            )
        ).returncode
        == 0
    )
    before = (run_dir / CHECKPOINT_LAST).read_bytes()
    res = run(
        brainseg_cmd("train", "--data", str(demo_data), "--out", str(run_dir), "--epochs", "1", "--no-progress", *TINY)
    )
    assert res.returncode == 1
    assert "--resume" in res.stderr and "Traceback" not in res.stderr
    assert (run_dir / CHECKPOINT_LAST).read_bytes() == before


@pytest.mark.slow
def test_resume_after_a_kill_gives_the_same_losses_and_weights(demo_data, tmp_path):
    epochs = "5"
    # Uninterrupted reference run.
    ref = tmp_path / "ref"
    res = run(
        brainseg_cmd("train", "--data", str(demo_data), "--out", str(ref), "--epochs", epochs, "--no-progress", *TINY)
    )
    assert res.returncode == 0, res.stderr

    # Same run, killed (SIGKILL) as soon as its first checkpoint exists, then resumed.
    cut = tmp_path / "cut"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        brainseg_cmd("train", "--data", str(demo_data), "--out", str(cut), "--epochs", epochs, "--no-progress", *TINY),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.time() + 240
    while not (cut / CHECKPOINT_LAST).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(cut / CHECKPOINT_LAST, map_location="cpu", weights_only=True)["epoch"]
    assert 1 <= killed_at < int(epochs), "the run should have been interrupted mid-training"

    res = run(brainseg_cmd("train", "--data", str(demo_data), "--out", str(cut), "--resume", "--no-progress"))
    assert res.returncode == 0, res.stderr

    a, b = read_metrics(ref), read_metrics(cut)
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    # every epoch after the interruption has exactly the same training loss
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]
    wa = torch.load(ref / "checkpoint_final.pt", weights_only=True)["model"]
    wb = torch.load(cut / "checkpoint_final.pt", weights_only=True)["model"]
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_patches_are_a_function_of_seed_and_index_and_oversample_foreground(demo_data, tmp_path):
    from brainseg.data.layouts import discover_dataset
    from brainseg.preprocessing.cache import cache_cases

    ds = discover_dataset(demo_data)
    cached = cache_cases(ds.train, tmp_path / "cache", [3.0, 3.0, 3.0], [0, 1, 2, 3], progress=False)
    make = lambda seed: PatchDataset(cached, [24, 24, 24], 3, 0.33, AugmentConfig(), seed=seed)
    a, b, c = make(0), make(0), make(1)
    for i in (0, 5, 17):
        ia, la = a[i]
        ib, lb = b[i]
        assert torch.equal(ia, ib) and torch.equal(la, lb)
        assert ia.shape == (1, 24, 24, 24) and la.shape == (24, 24, 24)
    assert not torch.equal(a[4][0], c[4][0])
    # the last of every batch of 3 is centred on a foreground voxel
    assert [a.wants_foreground(i) for i in range(6)] == [False, False, True, False, False, True]
    noaug = PatchDataset(cached, [8, 8, 8], 3, 1.0, AugmentConfig(enabled=False), seed=0)
    centres = [noaug[i][1][4, 4, 4].item() for i in range(30)]
    assert all(v > 0 for v in centres), centres


def test_tiny_net_overfits_one_real_volume():
    """A small U-Net fits one small real brain volume to Dice > 0.9 per tissue on CPU.

    The volume is a 32^3 block (3 mm voxels) from the middle of the MNI template,
    with ventricles (CSF), deep and cortical grey matter and white matter in it.
    """
    from monai.losses import DiceCELoss

    from brainseg.demo.template import load_template, template_labels
    from brainseg.model import UNet3D
    from brainseg.preprocessing.normalisation import zscore_foreground
    from brainseg.preprocessing.resample import resample_image, resample_labels

    tpl = load_template()
    labels = template_labels(tpl.t1, tpl.gm, tpl.wm)
    shape = [int(round(s / 3)) for s in labels.shape]
    image, _, _ = zscore_foreground(resample_image(tpl.t1[None].astype(np.float32), shape, [3.0] * 3))
    seg = resample_labels(labels, shape, [3.0] * 3)
    box = tuple(slice(s // 2 - 16, s // 2 + 16) for s in shape)
    image, seg = image[(slice(None),) + box], seg[box]
    assert set(np.unique(seg)) == {0, 1, 2, 3}
    x = torch.from_numpy(np.ascontiguousarray(image))[None]
    y = torch.from_numpy(seg.astype(np.int64))[None, None]
    torch.manual_seed(0)
    net = UNet3D(1, 4, levels=3, base_features=8, max_features=32)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    loss_fn = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True)
    for _ in range(90):
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = net(x).argmax(1)[0].numpy()
    dice = []
    for c in (1, 2, 3):
        p, r = pred == c, seg == c
        dice.append(2 * (p & r).sum() / (p.sum() + r.sum()))
    assert min(dice) > 0.9, dice


@pytest.mark.slow
def test_torchrun_two_gloo_processes_train(demo_data, tmp_path):
    run_dir = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",  # a free port
        "-m",
        "brainseg",
        "train",
        "--data",
        str(demo_data),
        "--out",
        str(run_dir),
        "--epochs",
        "2",
        "--device",
        "cpu",
        "--no-progress",
        *TINY,
    ]
    res = run(cmd, timeout=400)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert res.stdout.count("trained 2 epochs") == 1  # only rank 0 reports and writes
    state = torch.load(run_dir / "checkpoint_final.pt", weights_only=True)
    assert state["step"] == 6
    assert len(read_metrics(run_dir)) == 2
