"""``brainseg train``: a scan directory in, a self-describing run folder out.

Run folder::

    RUN_DIR/config.yaml          the full config used
    RUN_DIR/split.json           training / validation case ids
    RUN_DIR/cache/               preprocessed cases (memory-mapped .npy)
    RUN_DIR/checkpoint_last.pt   latest state (every ``train.checkpoint_every`` epochs)
    RUN_DIR/checkpoint_best.pt   best validation Dice
    RUN_DIR/checkpoint_final.pt  the model at the end of training
    RUN_DIR/metrics.csv          one row per epoch
    RUN_DIR/curves.png           loss and validation Dice curves
    RUN_DIR/tensorboard/         TensorBoard event files

The learning rate follows nnU-Net's poly decay ``lr0 * (1 - progress)^0.9`` per
iteration. ``progress`` is the fraction of iterations done, or, under
``--max-minutes``, the fraction of the time budget used if that is larger, so a
time-limited run still anneals to the end of its budget.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..config import Config, dump_config, load_config
from ..data.cache import CachedCase, cache_cases, median_spacing
from ..data.cases import Case
from ..data.layouts import discover_dataset
from ..data.foreground import far_background
from ..data.loader import PatchDataset, RangeSampler, make_loader
from ..errors import BrainsegError
from ..infer.sliding_window import SlidingWindow
from ..atomic import atomic_write_text
from ..io import read_label
from ..model.checkpoint import (
    CHECKPOINT_BEST,
    CHECKPOINT_FINAL,
    CHECKPOINT_LAST,
    load_checkpoint,
    save_checkpoint,
    versions,
)
from ..model.unet import UNet3D, build_model
from ..postprocess import labels_within_input
from . import distributed as ddp
from .monitor import TensorBoard, plot_curves, write_metrics_csv


# --------------------------------------------------------------------------- data


def label_table(dataset_labels: dict[int, str], cases: list[Case], max_voxels: int) -> dict[int, str]:
    """The data set's labels; read from the label files when dataset.json gives none."""
    if dataset_labels:
        labels = {int(k): str(v) for k, v in dataset_labels.items()}
    else:
        values: set[int] = set()
        for case in cases:
            lab, _ = read_label(case.label, max_voxels=max_voxels)
            values.update(int(v) for v in np.unique(lab))
        labels = {v: ("background" if v == 0 else f"label_{v}") for v in sorted(values | {0})}
    if 0 not in labels:
        labels[0] = "background"
    if len(labels) < 2:
        raise BrainsegError("the data set has no foreground label")
    return dict(sorted(labels.items()))


def split_cases(cases: list[Case], val_fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    """Deterministic train/validation split (at least one of each when possible)."""
    if len(cases) < 2:
        return list(cases), list(cases)  # validate on the only case rather than not at all
    order = np.random.default_rng(seed).permutation(len(cases))
    n_val = min(len(cases) - 1, max(1, int(round(val_fraction * len(cases)))))
    val = sorted((cases[i] for i in order[:n_val]), key=lambda c: c.case_id)
    train = sorted((cases[i] for i in order[n_val:]), key=lambda c: c.case_id)
    return train, val


# --------------------------------------------------------------------------- model / loss


class SegLoss(torch.nn.Module):
    """Dice + cross-entropy (MONAI's DiceCELoss), with optional deep supervision."""

    def __init__(self):
        super().__init__()
        self.loss = DiceCELoss(
            include_background=False, to_onehot_y=True, softmax=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5
        )

    def forward(self, outputs, target: torch.Tensor) -> torch.Tensor:
        target = target[:, None]
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs.float(), target)
        weights = [0.5**i for i in range(len(outputs))]
        if len(weights) > 1:
            weights[-1] = 0.0  # nnU-Net ignores the coarsest output
        total = sum(weights)
        loss = 0.0
        for w, out in zip(weights, outputs):
            if w == 0:
                continue
            t = target if out.shape[2:] == target.shape[2:] else F.interpolate(
                target.float(), size=out.shape[2:], mode="nearest"
            ).long()
            loss = loss + (w / total) * self.loss(out.float(), t)
        return loss


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise BrainsegError(f"train.optimizer must be sgd or adamw, got {cfg.optimizer!r}")


def poly_lr(lr0: float, progress: float, schedule: str) -> float:
    if schedule == "constant":
        return lr0
    if schedule == "poly":
        return lr0 * (1.0 - min(max(progress, 0.0), 1.0)) ** 0.9
    raise BrainsegError(f"train.lr_schedule must be poly or constant, got {schedule!r}")


def dice_per_class(pred: np.ndarray, ref: np.ndarray, classes: list[int]) -> dict[int, float]:
    out = {}
    for c in classes:
        p, r = pred == c, ref == c
        denom = int(p.sum()) + int(r.sum())
        out[c] = 1.0 if denom == 0 else 2.0 * int(np.logical_and(p, r).sum()) / denom
    return out


# --------------------------------------------------------------------------- trainer


@dataclass
class RunState:
    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps done
    elapsed: float = 0.0  # training seconds over all invocations
    best_dice: float = -1.0
    history: list[dict] = field(default_factory=list)


class Trainer:
    def __init__(
        self,
        data_dir: Path,
        run_dir: Path,
        config: Config,
        device: str = "auto",
        max_minutes: float | None = None,
        resume: bool = False,
        progress: bool = True,
    ):
        self.data_dir = Path(data_dir)
        self.run_dir = Path(run_dir)
        self.cfg = config
        self.max_seconds = None if max_minutes is None else max(0.0, float(max_minutes)) * 60.0
        self.resume = resume
        self.progress = progress
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = ddp.resolve_device(device, local_rank)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BrainsegError(f"--device {device}: CUDA is not available on this machine")
        self.dist = ddp.init_distributed(self.device)
        self.state = RunState()

    # ----------------------------------------------------------------- setup
    def _check_run_dir(self) -> None:
        last = self.run_dir / CHECKPOINT_LAST
        if self.resume and not last.is_file():
            raise BrainsegError(f"{self.run_dir}: nothing to resume (no {CHECKPOINT_LAST})")
        if not self.resume and last.is_file():
            raise BrainsegError(
                f"{self.run_dir}: already holds a training run; use --resume to continue it or choose a new --out"
            )

    def setup(self) -> None:
        cfg = self.cfg
        self._check_run_dir()
        torch.manual_seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        np.random.seed(cfg.train.seed % 2**32)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)

        ds = discover_dataset(self.data_dir)
        if not ds.train:
            raise BrainsegError(f"{self.data_dir}: no labelled training cases found")
        self.labels = label_table(ds.labels, ds.train, cfg.data.max_voxels)
        self.channels = list(ds.channels)
        train_cases, val_cases = split_cases(ds.train, cfg.data.val_fraction, cfg.train.seed)
        spacing = cfg.data.target_spacing or median_spacing(ds.train, cfg.data.max_voxels)
        self.spacing = [float(s) for s in spacing]

        cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else self.run_dir / "cache"
        common = dict(
            target_spacing=self.spacing,
            label_values=list(self.labels),
            normalization=cfg.data.normalization,
            crop_to_nonzero=cfg.data.crop_to_nonzero,
            max_voxels=cfg.data.max_voxels,
        )
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.yaml", dump_config(cfg))
            atomic_write_text(
                self.run_dir / "split.json",
                json.dumps({"train": [c.case_id for c in train_cases], "val": [c.case_id for c in val_cases]}, indent=1),
            )
            cache_cases(ds.train, cache_dir, progress=self.progress, **common)
        ddp.barrier(self.dist)
        cached = {c.case_id: c for c in cache_cases(ds.train, cache_dir, progress=False, **common)}
        self.train_cases = [cached[c.case_id] for c in train_cases]
        self.val_cases = [cached[c.case_id] for c in val_cases]

        m = cfg.model
        self.model: UNet3D = build_model(
            in_channels=len(self.channels),
            num_classes=len(self.labels),
            levels=m.levels,
            base_features=m.base_features,
            max_features=m.max_features,
            norm=m.norm,
            deep_supervision=m.deep_supervision,
            skip_connections=m.skip_connections,
            skip_mode=m.skip_mode,
        )
        self.model.check_patch_size(cfg.train.patch_size)
        self.model.to(self.device)
        # channels-last (NDHWC) is faster for Conv3d on CUDA and, measured, on CPU (oneDNN) too
        self.channels_last = cfg.train.channels_last
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last_3d)
        self.optimizer = make_optimizer(self.model, cfg.train)
        self.amp = cfg.train.amp if self.device.type == "cuda" else "none"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == "fp16")
        self.loss_fn = SegLoss()

        if self.resume:
            self._load_state(self.run_dir / CHECKPOINT_LAST)
        self.net = (
            DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.dist.enabled
            else self.model
        )
        self.dataset = PatchDataset(
            self.train_cases,
            cfg.train.patch_size,
            cfg.train.batch_size,
            cfg.train.foreground_fraction,
            cfg.augment,
            seed=cfg.train.seed,
            rank=self.dist.rank,
        )
        self.sampler = RangeSampler(cfg.train.iters_per_epoch * cfg.train.batch_size)
        self.loader = make_loader(self.dataset, self.sampler, cfg.train.num_workers, self.device.type == "cuda")
        self.tb = TensorBoard(self.run_dir / "tensorboard" if self.dist.is_main else None)

    # ----------------------------------------------------------------- checkpoints
    def card(self) -> dict:
        return {
            "format": 1,
            "model": dict(self.model.hparams),
            "labels": {str(k): v for k, v in self.labels.items()},
            "channels": self.channels,
            "spacing": self.spacing,
            "patch_size": [int(p) for p in self.cfg.train.patch_size],
            "normalization": {
                "scheme": self.cfg.data.normalization,
                "mask": "foreground",  # non-zero voxels, or a threshold mask on a noisy background
                "crop_to_nonzero": self.cfg.data.crop_to_nonzero,
            },
            "config": self.cfg.to_dict(),
            "versions": versions(),
        }

    def _state_dict(self) -> dict:
        s = self.state
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": s.epoch,
            "step": s.step,
            "elapsed": s.elapsed,
            "best_dice": s.best_dice,
            "history": s.history,
            "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_state(), "python": list(random.getstate()[1])},
            "card": self.card(),
        }

    def _load_state(self, path: Path) -> None:
        st = load_checkpoint(path, map_location="cpu")
        self.model.load_state_dict(st["model"])
        self.optimizer.load_state_dict(st["optimizer"])
        if st.get("scaler"):
            self.scaler.load_state_dict(st["scaler"])
        self.state = RunState(
            epoch=int(st["epoch"]),
            step=int(st["step"]),
            elapsed=float(st["elapsed"]),
            best_dice=float(st["best_dice"]),
            history=list(st["history"]),
        )
        torch.set_rng_state(st["rng"]["torch"])

    def _save(self, name: str) -> None:
        if self.dist.is_main:
            save_checkpoint(self.run_dir / name, self._state_dict())

    # ----------------------------------------------------------------- loop
    def _autocast(self):
        if self.amp in ("bf16", "fp16"):
            return torch.autocast("cuda", dtype=torch.bfloat16 if self.amp == "bf16" else torch.float16)
        return torch.autocast("cpu", enabled=False)

    def _progress(self, started: float) -> float:
        cfg = self.cfg.train
        frac = self.state.step / max(1, cfg.epochs * cfg.iters_per_epoch)
        if self.max_seconds:
            spent = time.perf_counter() - started
            frac = max(frac, (self.elapsed_before + spent) / (self.elapsed_before + self.max_seconds))
        return frac

    def _train_step(self, image: torch.Tensor, target: torch.Tensor, lr: float) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        image = image.to(self.device, non_blocking=True)
        target = target.to(self.device, non_blocking=True)
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last_3d)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            out = self.net(image)
        loss = self.loss_fn(out, target)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 12.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    def validate(self) -> dict[int, float]:
        """Sliding-window Dice per foreground label value on the validation cases."""
        self.model.eval()
        sw = SlidingWindow(
            self.model,
            self.cfg.train.patch_size,
            num_classes=len(self.labels),
            overlap=self.cfg.infer.overlap,
            batch_windows=self.cfg.infer.batch_windows,
            sigma_scale=self.cfg.infer.sigma_scale,
            margin=self.cfg.infer.margin,
            amp=self.amp,
            device=self.device,
            channels_last=self.channels_last,
        )
        values = sorted(self.labels)  # class index i <-> i-th smallest label value
        classes = list(range(1, len(values)))
        scores: dict[int, list[float]] = {c: [] for c in classes}
        for case in self.val_cases:
            image, seg = case.load(mmap=False)
            background = case.record.pad_values()
            logits = sw(image, pad_value=background).cpu().numpy()
            if case.record.zero_background:  # the input-mask rule, as predict applies it
                fill = np.asarray(background, dtype=np.float32).reshape(-1, 1, 1, 1)
                nonzero = np.any(image != fill, axis=0)
                pred = labels_within_input(logits, nonzero, self.cfg.postprocess.input_mask)
            else:  # and, as predict does, the far background is background
                pred = labels_within_input(logits, None, "none")
                far = far_background(image, background, case.record.far_constant)
                if far is not None:
                    pred[far] = 0
            for c, d in dice_per_class(pred, seg, classes).items():
                scores[c].append(d)
        self.model.train()
        return {values[c]: float(np.mean(v)) for c, v in scores.items()}

    def fit(self) -> dict:
        cfg = self.cfg.train
        s = self.state
        self.elapsed_before = s.elapsed
        started = time.perf_counter()
        total_steps = cfg.epochs * cfg.iters_per_epoch
        # Under a time budget the bar runs to the budget (seconds), else to the last step.
        timed = self.max_seconds is not None
        bar = tqdm(
            total=int(self.max_seconds) if timed else total_steps,
            initial=0 if timed else s.step,
            desc=f"training ({self.max_seconds / 60:g} min budget)" if timed else "training",
            unit="s" if timed else "it",
            disable=not (self.progress and self.dist.is_main),
            dynamic_ncols=True,
            bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}" if timed else None,
        )
        stop = False
        self.model.train()
        while s.epoch < cfg.epochs and not stop:
            epoch_start = time.perf_counter()
            first = s.step - s.epoch * cfg.iters_per_epoch  # > 0 when resuming mid-epoch
            self.sampler.start = s.step * cfg.batch_size
            self.sampler.count = (cfg.iters_per_epoch - first) * cfg.batch_size
            losses, wait = [], 0.0
            it = iter(self.loader)
            for _ in range(cfg.iters_per_epoch - first):
                t0 = time.perf_counter()
                image, target = next(it)
                wait += time.perf_counter() - t0
                lr = poly_lr(cfg.lr, self._progress(started), cfg.lr_schedule)
                losses.append(self._train_step(image, target, lr))
                s.step += 1
                bar.update(min(int(time.perf_counter() - started), bar.total) - bar.n if timed else 1)
                out_of_time = self.max_seconds is not None and time.perf_counter() - started >= self.max_seconds
                if ddp.broadcast_flag(out_of_time, self.dist, self.device):
                    stop = True
                    break
            del it
            epoch_seconds = time.perf_counter() - epoch_start
            s.elapsed = self.elapsed_before + (time.perf_counter() - started)
            complete = s.step % cfg.iters_per_epoch == 0
            if complete:
                s.epoch += 1
            row = {
                "epoch": s.epoch if complete else s.epoch + (s.step % cfg.iters_per_epoch) / cfg.iters_per_epoch,
                "step": s.step,
                "train_loss": float(np.mean(losses)) if losses else float("nan"),
                "lr": lr if losses else cfg.lr,
                "epoch_seconds": epoch_seconds,
                "data_wait_fraction": wait / max(epoch_seconds, 1e-9),
                "elapsed_minutes": s.elapsed / 60.0,
            }
            last_epoch = s.epoch >= cfg.epochs or stop
            if self.dist.is_main and (last_epoch or (complete and s.epoch % cfg.val_every == 0)):
                dice = self.validate()
                row["val_dice_mean"] = float(np.mean(list(dice.values())))
                row.update({f"val_dice_{c}": d for c, d in dice.items()})
                if row["val_dice_mean"] > s.best_dice:
                    s.best_dice = row["val_dice_mean"]
                    self._save(CHECKPOINT_BEST)
            s.history.append(row)
            bar.set_postfix(
                step=s.step,
                epoch=s.epoch,
                loss=f"{row['train_loss']:.3f}",
                dice=f"{row['val_dice_mean']:.3f}" if "val_dice_mean" in row else "-",
            )
            if self.dist.is_main:
                if last_epoch or s.epoch % max(1, cfg.checkpoint_every) == 0 or not complete:
                    self._save(CHECKPOINT_LAST)
                write_metrics_csv(self.run_dir / "metrics.csv", s.history)
                self.tb.log(row, s.step)
                if "val_dice_mean" in row or last_epoch:
                    plot_curves(self.run_dir / "curves.png", s.history, {c: n for c, n in self.labels.items() if c})
            ddp.barrier(self.dist)
        bar.close()
        self._save(CHECKPOINT_FINAL)
        self.tb.close()
        last = next((r for r in reversed(s.history) if "val_dice_mean" in r), {})
        return {
            "run_dir": str(self.run_dir),
            "epochs": s.epoch,
            "steps": s.step,
            "minutes": s.elapsed / 60.0,
            "val_dice_mean": last.get("val_dice_mean"),
            "stopped_by_time": stop,
        }


def _numpy_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos)}


def train(
    data_dir: Path,
    run_dir: Path,
    config: Config,
    device: str = "auto",
    max_minutes: float | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Train a model; returns a small summary (run folder, epochs, last validation Dice)."""
    trainer = Trainer(data_dir, run_dir, config, device, max_minutes, resume, progress)
    try:
        trainer.setup()
        return trainer.fit()
    finally:
        ddp.cleanup(trainer.dist)


def train_from_cli(args) -> int:
    overrides = list(args.overrides)
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    config_path = args.config
    if args.resume and config_path is None and (args.out / "config.yaml").is_file():
        config_path = args.out / "config.yaml"
    config = load_config(config_path, overrides)
    summary = train(
        args.data,
        args.out,
        config,
        device=args.device,
        max_minutes=args.max_minutes,
        resume=args.resume,
        progress=not args.no_progress,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        dice = summary["val_dice_mean"]
        print(
            f"trained {summary['epochs']} epochs ({summary['steps']} steps, {summary['minutes']:.1f} min)"
            + (", stopped at the time budget" if summary["stopped_by_time"] else "")
            + (f"; validation Dice {dice:.3f}" if dice is not None else "")
            + f"; run folder: {summary['run_dir']}"
        )
    return 0
