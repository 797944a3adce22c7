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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..card import ModelCard, Network, Normalization, package_versions
from ..config import Config, dump_config
from ..data.cache import cache_cases, intensity_statistics, median_spacing
from ..data.layouts import discover_dataset
from ..data.loader import PatchDataset, RangeSampler, make_loader
from ..data.preprocess import PREPROCESS_VERSION
from ..errors import BrainsegError
from ..infer.predictor import Predictor
from ..atomic import atomic_write_text
from ..io import read_label
from ..metrics import dice
from ..model.checkpoint import CHECKPOINT_BEST, CHECKPOINT_FINAL, CHECKPOINT_LAST, load_checkpoint, save_checkpoint
from ..model.unet import UNet3D, build_model
from ..runtime import autocast, resolve_device, restore_rng_states, rng_states, seed_everything, torchrun_env
from . import distributed as ddp
from .recipe import SegLoss, label_table, make_optimizer, poly_lr, split_cases
from .monitor import TensorBoard, plot_curves, write_metrics_csv


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
        self.device = resolve_device(device, torchrun_env().local_rank)
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
        seed_everything(cfg.train.seed)
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
        ct = cfg.data.normalization == "ct"  # the data set's intensities, into the cache's key and the card
        self.intensity = intensity_statistics(ds.train, cache_dir, cfg.data.max_voxels) if ct else []
        common = dict(
            target_spacing=self.spacing,
            label_values=list(self.labels),
            normalization=cfg.data.normalization,
            crop_to_nonzero=cfg.data.crop_to_nonzero,
            max_voxels=cfg.data.max_voxels,
            intensity=self.intensity,
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
        self.val_sources = list(val_cases)  # validated from their files, as predict reads them
        self._val_prepared: list | None = None

        self.model: UNet3D = build_model(len(self.channels), len(self.labels), **asdict(cfg.model))
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
    def card(self) -> ModelCard:
        return ModelCard(
            network=Network.from_kwargs(self.model.hparams),
            labels=dict(self.labels),
            channels=tuple(self.channels),
            spacing=tuple(self.spacing),
            patch_size=tuple(int(p) for p in self.cfg.train.patch_size),
            normalization=Normalization(
                scheme=self.cfg.data.normalization,
                mask="foreground",  # non-zero voxels, or a threshold mask on a noisy background
                crop_to_nonzero=self.cfg.data.crop_to_nonzero,
            ),
            preprocess_version=PREPROCESS_VERSION,
            config=self.cfg.to_dict(),
            versions=package_versions(),
            intensity=tuple(self.intensity),
        )

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
            "rng": rng_states(),
            "card": self.card().to_dict(),
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
        restore_rng_states(st.get("rng") or {})

    def _save(self, name: str) -> None:
        if self.dist.is_main:
            save_checkpoint(self.run_dir / name, self._state_dict())

    # ----------------------------------------------------------------- loop
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
        with autocast(self.device, self.amp):
            out = self.net(image)
        loss = self.loss_fn(out, target)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 12.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    def validate(self) -> dict[int, float]:
        """Dice per foreground label value on the validation cases, computed as ``brainseg predict``
        then ``brainseg evaluate`` compute it: the same :class:`Predictor` (windows, input-mask
        rule, far background, postprocessing) on the cases' own files, scored in their own grids
        against their label files."""
        predictor = Predictor(
            self.model, self.card(), self.cfg.infer, self.cfg.postprocess, self.device,
            max_voxels=self.cfg.data.max_voxels,
        )
        if self._val_prepared is None:  # read and preprocessed once, segmented at every validation
            self._val_prepared = [predictor.prepare(list(c.images)) for c in self.val_sources]
        values = [v for v in sorted(self.labels) if v != 0]
        scores: dict[int, list[float]] = {v: [] for v in values}
        for source, case in zip(self.val_sources, self._val_prepared):
            pred, _ = predictor.segment(case)
            ref, _ = read_label(source.label, max_voxels=self.cfg.data.max_voxels)
            for v in values:
                scores[v].append(dice(pred == v, ref == v))
        return {v: float(np.mean(d)) for v, d in scores.items()}

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


def train(data_dir: Path, run_dir: Path, config: Config, **options) -> dict:
    """Train a model; returns a small summary (run folder, epochs, last validation Dice).

    ``options`` are :class:`Trainer`'s: ``device``, ``max_minutes``, ``resume``, ``progress``."""
    trainer = Trainer(data_dir, run_dir, config, **options)
    try:
        trainer.setup()
        return trainer.fit()
    finally:
        ddp.cleanup(trainer.dist)
