"""What users run under torchrun, run as they run it: the shipped configs (shrunk in size only)
train under ``torchrun --standalone --nproc_per_node 2`` (gloo, CPU) and then predict; the
validation scores are the same on every rank; non-finite steps are skipped, counted and,
many in a row, end training with one line; ``--resume`` with ``--max-minutes`` continues the
run's time budget and learning-rate schedule; a rank that fails ends both ranks at once.

Non-finite data is injected the way it reaches a real run that the file checks cannot see:
through the preprocessing cache. A run's cache is made in-process by the trainer itself
(``Trainer.setup``, so every cache-key setting is the run's own), then the test writes NaN
into the cached array of one (or every) training case, as a preprocessing bug or a corrupt
shared ``data.cache_dir`` would, and trains with that ``data.cache_dir`` under torchrun.
"""

from __future__ import annotations

import ast
import csv
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brainseg.config import load_config
from brainseg.data.layouts import discover_dataset
from brainseg.errors import BrainsegError
from brainseg.model.checkpoint import (
    CHECKPOINT_LAST,
    load_model,
    nonfinite_tensors,
    save_checkpoint,
)
from brainseg.train.trainer import Trainer
from tests.conftest import REPO, brainseg, env, error_lines

CONFIGS = REPO / "configs"


#: Shrinks a shipped config in size only (features, patch, iterations, voxel size, loader
#: processes); deep supervision, norm, optimizer, schedule and inference stay the config's.
SMALL = [
    "model.base_features=4",
    "model.max_features=16",
    "train.iters_per_epoch=3",
    "train.epochs=1",
    "train.val_every=1",
    "train.num_workers=0",
    "data.target_spacing=[4.0,4.0,4.0]",
    "infer.batch_windows=8",
]


#: Patch per config: brain_1mm_gpu has 6 levels (5 downsamplings, sides a multiple of 32;
#: 32 would leave a 1-voxel bottleneck, which instance norm refuses in training), so 64.
PATCH = {"brain_1mm_gpu.yaml": "[64,64,64]", "brats.yaml": "[32,32,32]", "demo.yaml": "[32,32,32]"}


def sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def torchrun(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "brainseg",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env())


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def rank_validation(stderr: str) -> dict[int, list[str]]:
    """Each rank's logged validation scores (``-v``), in order."""
    out: dict[int, list[str]] = {}
    for rank, scores in re.findall(r"rank (\d)/2: validation Dice (\{[^}]*\})", stderr):
        out.setdefault(int(rank), []).append(scores)
    return out


def finite_checkpoint(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert not nonfinite_tensors(state["model"]), path
    return state


@pytest.mark.slow
@pytest.mark.parametrize("config", ["brain_1mm_gpu.yaml", "brats.yaml", "demo.yaml"])
def test_shipped_config_trains_under_torchrun_then_predicts(config, demo_data, tmp_path):
    run_dir = tmp_path / "run"
    t0 = time.time()
    res = torchrun(
        "-v",
        "train",
        "--data",
        str(demo_data),
        "--out",
        str(run_dir),
        "--device",
        "cpu",
        "--no-progress",
        "--config",
        str(CONFIGS / config),
        *sets(SMALL + [f"train.patch_size={PATCH[config]}"]),
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert res.stdout.count("trained 1 epochs") == 1  # rank 0 reports
    state = finite_checkpoint(run_dir / "checkpoint_final.pt")
    cfg = load_config(CONFIGS / config)
    assert state["step"] == 3 and state["card"]["network"]["deep_supervision"] == cfg.model.deep_supervision
    assert state["card"]["network"]["norm"] == cfg.model.norm
    assert state["card"]["config"]["train"]["optimizer"] == cfg.train.optimizer

    # validation: both ranks have the same scores, the ones metrics.csv holds
    logged = rank_validation(res.stderr)
    assert set(logged) == {0, 1} and logged[0] == logged[1] and len(logged[0]) == 1, res.stderr[-3000:]
    rows = read_metrics(run_dir)
    assert [float(r["skipped_steps"]) for r in rows] == [0]
    last = ast.literal_eval(logged[0][-1])  # the logged repr of {label: dice}
    for v, d in last.items():
        assert float(rows[-1][f"val_dice_{v}"]) == pytest.approx(d, rel=1e-5)

    scan = sorted((demo_data / "imagesTs").iterdir())[0]
    pred = tmp_path / "pred"
    res = brainseg(
        "predict",
        "--model",
        str(run_dir),
        "--input",
        str(scan),
        "--output",
        str(pred),
        "--device",
        "cpu",
        "--no-progress",
    )
    assert res.returncode == 0, res.stderr
    mask = nib.load(pred / scan.name.replace("_0000", ""))
    assert mask.shape == nib.load(scan).shape
    assert time.time() - t0 < 120


@pytest.mark.slow
def test_validation_shared_across_ranks_is_what_predict_and_evaluate_report(demo_data, tmp_path):
    """Two validation cases, one per rank: the all-reduced Dice equals predict + evaluate of the final model."""
    from brainseg.evaluate.per_label import evaluate_folders
    from brainseg.infer.batch import predict

    run_dir = tmp_path / "run"
    res = torchrun(
        "-v",
        "train",
        "--data",
        str(demo_data),
        "--out",
        str(run_dir),
        "--device",
        "cpu",
        "--no-progress",
        "--config",
        str(CONFIGS / "demo.yaml"),
        *sets(SMALL + ["train.patch_size=[32,32,32]", "data.val_fraction=0.5"]),
    )
    assert res.returncode == 0, res.stderr[-4000:]
    assert "over 2 case(s)" in res.stderr
    last = finite_checkpoint(run_dir / "checkpoint_final.pt")["history"][-1]
    val_ids = json.loads((run_dir / "split.json").read_text())["val"]
    assert len(val_ids) == 2
    refs = tmp_path / "refs"
    refs.mkdir()
    for cid in val_ids:
        (refs / f"{cid}.nii.gz").write_bytes((demo_data / "labelsTr" / f"{cid}.nii.gz").read_bytes())
    images = [demo_data / "imagesTr" / f"{cid}_0000.nii.gz" for cid in val_ids]
    as_validated = ["postprocess.class_offsets=[]", "infer.mirror=false"]  # plain argmax, no test-time mirroring
    assert not predict(
        run_dir, images, tmp_path / "pred", device="cpu", checkpoint="final", overrides=as_validated
    ).summary.failed
    summary = evaluate_folders(tmp_path / "pred", refs, tmp_path / "eval", labels=[1, 2, 3], progress=False)
    for v in (1, 2, 3):
        assert summary["labels"][str(v)]["dice"]["mean"] == pytest.approx(last[f"val_dice_{v}"], abs=1e-6)


NAN_RUN = [
    "train.patch_size=[32,32,32]",
    "train.batch_size=1",
    "train.iters_per_epoch=4",
    "train.epochs=2",
    "model.levels=3",
]


def poisoned_cache(demo_data: Path, tmp_path: Path, overrides: list[str], which: str) -> Path:
    """A cache made by the trainer for ``overrides``, then NaN written into the cached image
    of the first training case (``which="one"``) or of every training case (``"all"``)."""
    cache = tmp_path / "cache"
    cfg = load_config(CONFIGS / "demo.yaml", overrides + [f"data.cache_dir={cache}"])
    trainer = Trainer(demo_data, tmp_path / "prep", cfg, device="cpu", progress=False)
    trainer.setup()
    train_ids = json.loads((tmp_path / "prep" / "split.json").read_text())["train"]
    for cid in train_ids[:1] if which == "one" else train_ids:
        array = np.load(cache / f"{cid}.npy", mmap_mode="r+")
        array[...] = np.nan
        array.flush()
        del array
    return cache


@pytest.mark.slow
def test_a_nan_batch_is_skipped_on_both_ranks_and_training_goes_on(demo_data, tmp_path):
    overrides = SMALL + NAN_RUN
    cache = poisoned_cache(demo_data, tmp_path, overrides, "one")
    run_dir = tmp_path / "run"
    res = torchrun(
        "train",
        "--data",
        str(demo_data),
        "--out",
        str(run_dir),
        "--device",
        "cpu",
        "--no-progress",
        "--config",
        str(CONFIGS / "demo.yaml"),
        *sets(overrides + [f"data.cache_dir={cache}"]),
    )
    assert res.returncode == 0, res.stderr[-4000:]
    rows = read_metrics(run_dir)
    skipped = sum(int(r["skipped_steps"]) for r in rows)
    warnings = re.findall(r"brainseg: warning: step \d+: the loss or a gradient is not finite", res.stderr)
    assert 0 < skipped < 8, rows  # some steps met the NaN case on some rank, the others trained
    assert len(warnings) == skipped  # logged once per skipped step (by rank 0), not once per rank
    state = finite_checkpoint(run_dir / "checkpoint_final.pt")
    assert state["step"] == 8 and state["skipped_steps"] == skipped
    for r in rows:  # the mean of the steps that trained
        assert np.isfinite(float(r["train_loss"])) == (int(r["skipped_steps"]) < 4)


@pytest.mark.slow
def test_consecutive_nonfinite_steps_stop_training_with_one_line(demo_data, tmp_path):
    overrides = SMALL + NAN_RUN + ["train.max_nonfinite_steps=3"]
    cache = poisoned_cache(demo_data, tmp_path, overrides, "all")
    run_dir = tmp_path / "run"
    res = torchrun(
        "train",
        "--data",
        str(demo_data),
        "--out",
        str(run_dir),
        "--device",
        "cpu",
        "--no-progress",
        "--config",
        str(CONFIGS / "demo.yaml"),
        *sets(overrides + [f"data.cache_dir={cache}"]),
    )
    assert res.returncode != 0
    lines = error_lines(res.stderr)
    assert len(lines) == 1, res.stderr[-4000:]
    assert lines[0].startswith("brainseg: error: training stopped at step 3: 3 steps in a row had a non-finite")
    assert not re.search(r'File ".*/brainseg/', res.stderr)  # no brainseg traceback (torchrun prints its own)
    assert not (run_dir / "checkpoint_final.pt").exists()
    assert [int(r["skipped_steps"]) for r in read_metrics(run_dir)] == [3]


def test_a_nan_step_changes_no_weight_and_nan_weights_are_never_saved(demo_data, tmp_path):
    """``Trainer._train_step`` in-process with a NaN image: skipped, weights untouched; a finite
    step then trains; weights made NaN by hand are refused by the checkpoint writer and by load_model."""
    cfg = load_config(CONFIGS / "demo.yaml", SMALL + NAN_RUN)
    torch.set_num_threads(1)
    trainer = Trainer(demo_data, tmp_path / "run", cfg, device="cpu", progress=False)
    trainer.setup()
    image, target = trainer.dataset[0]
    image, target = image[None], target[None]
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    outcome = trainer._train_step(torch.full_like(image, float("nan")), target, lr=0.003)
    assert outcome.skipped and not np.isfinite(outcome.loss)
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    outcome = trainer._train_step(image, target, lr=0.003)
    assert not outcome.skipped and np.isfinite(outcome.loss)
    assert not all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())

    with torch.no_grad():
        trainer.model.heads[0].weight[0, 0] = float("nan")
    with pytest.raises(BrainsegError, match=r"checkpoint_last\.pt: not written: the model weights hold NaN"):
        trainer._save(CHECKPOINT_LAST)
    assert not (tmp_path / "run" / CHECKPOINT_LAST).exists()
    state = trainer._state_dict()  # written anyway, by hand: predict refuses it
    save_checkpoint(tmp_path / "nan.pt", state)
    with pytest.raises(BrainsegError, match="weights hold NaN or inf"):
        load_model(tmp_path / "nan.pt")


@pytest.mark.slow
def test_resume_with_max_minutes_continues_the_budget_and_the_lr_schedule(demo_data, tmp_path):
    """Killed mid-run and resumed with the same --max-minutes, the run ends when the total is
    spent and its learning rate goes on falling; resumed again, nothing is left; a larger
    --max-minutes extends the total, and the lr follows the new total."""
    budget_min = 0.1  # 6 s of training
    overrides = SMALL + [
        "train.patch_size=[32,32,32]",
        "model.levels=3",
        "train.epochs=1000",
        "train.iters_per_epoch=3",
        "train.val_every=1000",
    ]
    run_dir = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(demo_data),
        "--out",
        str(run_dir),
        "--device",
        "cpu",
        "--no-progress",
        "--config",
        str(CONFIGS / "demo.yaml"),
        *sets(overrides),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "brainseg", *args, "--max-minutes", str(budget_min)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env(),
    )
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if (run_dir / CHECKPOINT_LAST).exists():
            try:
                if torch.load(run_dir / CHECKPOINT_LAST, weights_only=True)["epoch"] >= 2:
                    break
            except Exception:  # noqa: BLE001 - being replaced right now
                pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = torch.load(run_dir / CHECKPOINT_LAST, weights_only=True)
    assert killed["budget"] == pytest.approx(budget_min * 60) and killed["elapsed"] < budget_min * 60

    res = brainseg(*args, "--resume", "--max-minutes", str(budget_min))
    assert res.returncode == 0 and "stopped at the time budget" in res.stdout, res.stderr
    rows = read_metrics(run_dir)
    lrs = [float(r["lr"]) for r in rows]
    assert all(b <= a for a, b in zip(lrs, lrs[1:])), lrs  # no jump back up at the resume
    elapsed = [float(r["elapsed_minutes"]) * 60 for r in rows]
    assert budget_min * 60 <= elapsed[-1] < budget_min * 60 + 4  # the total, not a new budget on top
    n_rows = len(rows)

    res = brainseg(*args, "--resume", "--max-minutes", str(budget_min))
    assert res.returncode == 0 and "trained" in res.stdout and "stopped at the time budget" in res.stdout
    assert len(read_metrics(run_dir)) == n_rows  # nothing left of the budget

    res = brainseg(*args, "--resume", "--max-minutes", str(2 * budget_min))
    assert res.returncode == 0, res.stderr
    rows = read_metrics(run_dir)[n_rows:]
    assert rows and float(rows[-1]["elapsed_minutes"]) * 60 < 2 * budget_min * 60 + 4
    for r in rows:  # lr0 * (1 - elapsed / total)^0.9 with the new total (elapsed: at the end of the epoch)
        progress = float(r["elapsed_minutes"]) / (2 * budget_min)
        assert float(r["lr"]) >= 0.003 * max(0.0, 1 - progress) ** 0.9 - 1e-9
        assert float(r["lr"]) <= 0.003 * max(0.0, 1 - progress + 2 / (2 * budget_min * 60)) ** 0.9


CONSENSUS_SCRIPT = """
import json, sys, torch
from brainseg.errors import BrainsegError
from brainseg.train import distributed as ddp
info = ddp.init_distributed(torch.device("cpu"))
out = {"step": ddp.step_consensus(info.rank == 1, info.rank == 0, 10.0 + info.rank, info)}
try:
    with ddp.together(info, "testing"):
        if info.rank == 1:
            raise BrainsegError("only rank 1 fails")
except ddp.PeerFailure as exc:
    out["error"] = ["peer", exc.quiet, str(exc)]
except BrainsegError as exc:
    out["error"] = ["own", str(exc)]
ddp.cleanup(info)
sys.stdout.write(json.dumps({info.rank: out}) + "\\n")  # one write: the ranks share the pipe, a line stays whole
sys.stdout.flush()
"""


@pytest.mark.slow
def test_ranks_agree_on_skips_stop_and_clock_and_share_one_error(tmp_path):
    """A non-finite step on rank 1 is skipped on rank 0 too; rank 0's stop flag and clock hold on
    every rank; an error inside ``together`` on rank 1 is its own line there and a quiet stop on rank 0."""
    script = tmp_path / "consensus.py"
    script.write_text(CONSENSUS_SCRIPT)
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env(),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = {int(k): v for line in res.stdout.splitlines() if line.startswith("{") for k, v in json.loads(line).items()}
    for rank in (0, 1):
        assert ranks[rank]["step"] == [True, True, 10.0]
    assert ranks[1]["error"] == ["own", "only rank 1 fails"]
    assert ranks[0]["error"][:2] == ["peer", True] and "rank(s) 1 failed while testing" in ranks[0]["error"][2]


@pytest.mark.slow
def test_a_rank_that_fails_ends_both_ranks_promptly_with_one_line(demo_data_copy, tmp_path):
    cases = discover_dataset(demo_data_copy).train
    bad = Path(cases[1].label)  # rank 1 caches cases[1::2]
    bad.write_bytes(b"not a nifti file at all" * 10)
    t0 = time.time()
    res = torchrun(
        "train",
        "--data",
        str(demo_data_copy),
        "--out",
        str(tmp_path / "run"),
        "--device",
        "cpu",
        "--no-progress",
        "--config",
        str(CONFIGS / "demo.yaml"),
        *sets(SMALL + ["train.patch_size=[32,32,32]"]),
        timeout=120,
    )
    seconds = time.time() - t0
    assert res.returncode != 0
    lines = error_lines(res.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"brainseg: error: {bad}"), res.stderr[-4000:]
    assert not re.search(r'File ".*/brainseg/', res.stderr)  # no brainseg traceback (torchrun prints its own)
    assert seconds < 60  # at once, not at the process group's timeout (an hour)
    assert not (tmp_path / "run" / "checkpoint_last.pt").exists()
