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
time-limited run still anneals to the end of its budget. Under torchrun all ranks use
rank 0's clock (shared each step with its stop flag): one learning rate, one last step.

The time budget is the run's total, stored in its checkpoints with the training time
spent (``elapsed``). ``--resume`` continues it, schedule and all, with or without
``--max-minutes``, and stops when the total is spent; a larger ``--max-minutes`` raises
the total to that value, a smaller one is ignored (with a warning); a run that had no
budget gets ``--max-minutes`` as its total, time already trained included.

A step with a non-finite loss or gradient norm on any rank is skipped on all and counted
(metrics.csv's ``skipped_steps``); ``train.max_nonfinite_steps`` in a row stop training
with one error line; non-finite weights are never saved. Each rank caches and validates
its share of the cases; an error on one rank ends all (:mod:`brainseg.train.distributed`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from brainseg.config import Config, dump_config
from brainseg.data.layouts import discover_dataset
from brainseg.errors import BrainsegError
from brainseg.io.atomic import atomic_write_text
from brainseg.model.card import ModelCard, Network, Normalization, package_versions
from brainseg.model.checkpoint import CHECKPOINT_BEST, CHECKPOINT_FINAL, CHECKPOINT_LAST
from brainseg.model.unet import UNet3D, build_model
from brainseg.plan.fingerprint import FINGERPRINT_FILE, fingerprint_dataset, training_ranges
from brainseg.plan.rules import spacing_rule
from brainseg.preprocessing.cache import cache_cases, intensity_statistics, ras_spacing
from brainseg.preprocessing.preprocess import PREPROCESS_VERSION
from brainseg.runtime import autocast, effective_amp, resolve_device, seed_everything, torchrun_env
from brainseg.train import distributed as ddp
from brainseg.train.finetune import InitModel, check_channels, finish, start_from, start_row
from brainseg.train.monitor import EpochTally, RunLog, curve_names, training_bar, validation_fields
from brainseg.train.recipe import (
    SegLoss,
    label_table,
    make_optimizer,
    output_count,
    poly_lr,
    region_card_fields,
    region_table,
    resolve_laterality,
    resolve_regions,
    run_budget,
    schedule_progress,
    split_cases,
)
from brainseg.train.sampling.loader import PatchDataset, RangeSampler, make_loader
from brainseg.train.state import (
    RunState,
    StepOutcome,
    check_run_dir,
    checkpoint_state,
    restore_checkpoint,
    write_checkpoint,
    write_run_files,
)
from brainseg.train.validation import Validation

log = logging.getLogger(__name__)


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
        init: InitModel | None = None,
        split: tuple[Sequence[str], Sequence[str]] | None = None,
        cache_dir: Path | None = None,
    ):
        """``split``: (training, validation) case ids, a cross-validation fold (the card's ranges: its
        training cases only). ``cache_dir``: the cache when the config names none (``RUN_DIR/cache``)."""
        self.data_dir = Path(data_dir)
        self.split = split
        self.default_cache = Path(cache_dir) if cache_dir is not None else Path(run_dir) / "cache"
        self.run_dir = Path(run_dir)
        self.cfg = config
        self.max_seconds = None if max_minutes is None else max(0.0, float(max_minutes)) * 60.0
        self.resume = resume
        self.progress = progress
        self.init = init  # fine-tuning: the checkpoint training starts from
        self.device = resolve_device(device, torchrun_env().local_rank)
        self.dist = ddp.init_distributed(self.device)
        self.state = RunState()
        self.elapsed_before = 0.0  # training seconds before this invocation
        self._started = time.perf_counter()  # when this invocation's training started
        self.innermost_min_mm3 = 0.0  # the rules chosen on validation at the end
        self.decision: dict[str, Any] = {}

    # ----------------------------------------------------------------- setup
    def setup(self) -> None:
        """Find and split the cases, preprocess this rank's share of the cache, then read
        all of it and build the model (each phase ends with all ranks, or fails on all)."""
        with ddp.together(self.dist, "preprocessing"):
            self._prepare_cases()
        with ddp.together(self.dist, "reading the cache and building the model"):
            self._build()
        self.net = ddp.wrap(self.model, self.device, self.dist)
        if self.init is not None and not self.resume:  # the loaded model's Dice on the new data, before any step
            self.state.history.append(start_row(self.validate()))
            with ddp.together(self.dist, "writing the logs"):
                self.log.write(self.state.history, 0, False)

    def _prepare_cases(self) -> None:
        cfg = self.cfg
        check_run_dir(self.run_dir, self.resume)
        seed_everything(cfg.train.seed)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        ds = discover_dataset(self.data_dir)
        if not ds.train:
            raise BrainsegError(f"{self.data_dir}: no labelled training cases found")
        if self.init is not None:
            check_channels(self.init, ds.channels, self.data_dir)  # before any file is written
        self.labels = label_table(ds.labels, ds.train, cfg.data.max_voxels)
        self.cfg, self.laterality = resolve_laterality(cfg, self.labels)  # the pairs, recorded in the config
        cfg = self.cfg
        self.regions = resolve_regions(cfg.labels, ds.regions, self.labels)  # None: per-label training
        self.channels = list(ds.channels)
        train_cases, val_cases = split_cases(ds.train, cfg.data.val_fraction, cfg.train.seed, given=self.split)
        spacing = cfg.data.target_spacing
        if spacing is None:  # the plan's rule over the training cases' voxel sizes
            spacing, _ = spacing_rule([ras_spacing(c, cfg.data.max_voxels) for c in ds.train])
        self.spacing = [float(s) for s in spacing]

        cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else self.default_cache
        ct = cfg.data.normalization == "ct"  # the data set's intensities, into the cache's key and the card
        known = list(self.init.card.intensity) if self.init is not None else []  # fine-tuning: as the model was
        self.intensity = (known or intensity_statistics(ds.train, cache_dir, cfg.data.max_voxels)) if ct else []
        common = dict(
            target_spacing=self.spacing,
            label_values=list(self.labels),
            normalization=cfg.data.normalization,
            crop_to_nonzero=cfg.data.crop_to_nonzero,
            max_voxels=cfg.data.max_voxels,
            intensity=self.intensity,
        )
        self.ranges = None  # the training scans' ranges for the card's OOD check (rank 0 writes the checkpoints)
        if self.dist.is_main:
            write_run_files(self.run_dir, dump_config(cfg), train_cases, val_cases)
            fp = fingerprint_dataset(ds, self.run_dir / FINGERPRINT_FILE, cfg.data.max_voxels)
            if self.split is not None:  # a fold's held-out cases stay unseen by its ranges too
                fp = replace(fp, cases=[c for c in fp.cases if c.case_id in set(self.split[0])])
            self.ranges = training_ranges(fp)
        share = ds.train[self.dist.rank :: self.dist.world_size]  # each rank preprocesses its share
        cache_cases(share, cache_dir, progress=self.progress and self.dist.is_main, **common)
        self._cases = (ds.train, train_cases, val_cases, cache_dir, common)

    def _build(self) -> None:
        cfg = self.cfg
        cases, train_cases, val_cases, cache_dir, common = self._cases
        # every rank's share is there now: all are read, none made
        cached = {c.case_id: c for c in cache_cases(cases, cache_dir, progress=False, **common)}
        self.train_cases = [cached[c.case_id] for c in train_cases]
        self.val_sources = list(val_cases)  # validated from their files, as predict reads them
        self.validation = Validation(self.val_sources, list(self.labels), self.dist, self.regions)
        table = region_table(self.regions, self.labels)  # class index -> regions, or None
        self.model: UNet3D = build_model(
            len(self.channels), output_count(self.labels, self.regions), **asdict(cfg.model)
        )
        self.model.check_patch_size(cfg.train.patch_size)
        if self.init is not None and not self.resume:  # a resumed run's own checkpoint holds its weights
            self.decision, self.innermost_min_mm3 = start_from(self.init, self.model, self.labels, self.regions)
            self.state.initialised_from = self.init.source
        self.model.to(self.device)
        # channels-last (NDHWC) is faster for Conv3d on CUDA and on the CPU (oneDNN) too
        self.channels_last = cfg.train.channels_last
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        self.optimizer = make_optimizer(self.model, cfg.train)
        self.amp = effective_amp(self.device, cfg.train.amp, self.dist.world_size)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == "fp16")
        self.loss_fn = SegLoss(table)

        if self.resume:
            self.state = restore_checkpoint(self.run_dir / CHECKPOINT_LAST, self.model, self.optimizer, self.scaler)
        self.dataset = PatchDataset(
            self.train_cases,
            cfg.train.patch_size,
            cfg.train.batch_size,
            cfg.train.foreground_fraction,
            cfg.augment,
            seed=cfg.train.seed,
            rank=self.dist.rank,
            laterality=self.laterality,
            label_values=list(self.labels),
            region_table=table,
            synth_share=cfg.train.synth,
            normalization=cfg.data.normalization,
        )
        self.sampler = RangeSampler(cfg.train.iters_per_epoch * cfg.train.batch_size)
        self.loader = make_loader(self.dataset, self.sampler, cfg.train.num_workers, self.device.type == "cuda")
        self.log = RunLog(self.run_dir if self.dist.is_main else None, curve_names(self.labels, self.regions))

    # ----------------------------------------------------------------- checkpoints
    def card(self) -> ModelCard:
        x, y, z = self.spacing
        px, py, pz = (int(p) for p in self.cfg.train.patch_size)
        return ModelCard(
            network=Network.from_kwargs(self.model.hparams),
            labels=dict(self.labels),
            channels=tuple(self.channels),
            spacing=(x, y, z),
            patch_size=(px, py, pz),
            normalization=Normalization(
                scheme=self.cfg.data.normalization,
                mask="foreground",  # non-zero voxels, or a threshold mask on a noisy background
                crop_to_nonzero=self.cfg.data.crop_to_nonzero,
            ),
            preprocess_version=PREPROCESS_VERSION,
            config=self.cfg.to_dict(),
            versions=package_versions(),
            intensity=tuple(self.intensity),
            training_ranges=self.ranges,
            initialised_from=self.state.initialised_from,
            **(region_card_fields(self.regions, self.innermost_min_mm3) | self.decision),
        )

    def _state_dict(self) -> dict:
        return checkpoint_state(self.model, self.optimizer, self.scaler, self.state, self.card())

    def _save(self, name: str) -> None:
        """Rank 0 writes checkpoint ``name``, never with non-finite weights."""
        if self.dist.is_main:
            write_checkpoint(self.run_dir / name, self._state_dict(), self.state.step)

    # ----------------------------------------------------------------- loop
    def _lr(self, clock: float) -> float:
        """The learning rate of the next step; ``clock``: rank 0's seconds in this invocation."""
        cfg, s = self.cfg.train, self.state
        progress = schedule_progress(s.step, cfg.epochs * cfg.iters_per_epoch, self.elapsed_before + clock, s.budget)
        return poly_lr(cfg.lr, progress, cfg.lr_schedule)

    def _out_of_time(self, clock: float) -> bool:
        return self.state.budget is not None and self.elapsed_before + clock >= self.state.budget

    def _train_step(self, image: torch.Tensor, target: torch.Tensor, lr: float, stop: bool = False) -> StepOutcome:
        """Forward, backward, and the optimizer step unless the loss or the gradient norm is
        not finite on some rank (then no rank steps). ``stop``: this rank's out-of-time flag
        (rank 0's counts), shared in the same all-reduce as the skip decision."""
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
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 12.0)
        finite = bool(torch.isfinite(loss.detach())) and bool(torch.isfinite(grad_norm))
        skipped, stop, clock = ddp.step_consensus(not finite, stop, time.perf_counter() - self._started, self.dist)
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler.is_enabled():
                self.scaler.update()  # fp16: the scale goes down as after an overflow
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return StepOutcome(float(loss.detach()), skipped, stop, clock)

    def validate(self) -> dict:
        """Dice per foreground label value (region name), as ``predict`` + ``evaluate`` give it (:mod:`.validation`)."""
        return self.validation.dice(self.model, self.card(), self.cfg, self.device)

    def fit(self) -> dict:
        cfg = self.cfg.train
        s = self.state
        self.elapsed_before = s.elapsed
        s.budget = run_budget(s.budget, self.max_seconds)
        self._started = time.perf_counter()
        timed = s.budget is not None
        bar = training_bar(
            cfg.epochs * cfg.iters_per_epoch, s.step, s.budget, s.elapsed, self.progress and self.dist.is_main
        )
        stop = self._out_of_time(0.0)  # the same on every rank: from the checkpoint
        failure: str | None = None
        clock = 0.0
        self.model.train()
        while s.epoch < cfg.epochs and not stop:
            tally = EpochTally(lr=cfg.lr)
            first = s.step - s.epoch * cfg.iters_per_epoch  # > 0 when resuming mid-epoch
            self.sampler.start = s.step * cfg.batch_size
            self.sampler.count = (cfg.iters_per_epoch - first) * cfg.batch_size
            it = iter(self.loader)
            for _ in range(cfg.iters_per_epoch - first):
                t0 = time.perf_counter()
                image, target = next(it)
                wait = time.perf_counter() - t0
                lr = self._lr(clock)
                out_of_time = self._out_of_time(time.perf_counter() - self._started)
                outcome = self._train_step(image, target, lr, stop=out_of_time)
                clock = outcome.clock
                s.step += 1
                tally.add(outcome, lr, wait)
                failure = s.too_many_skips(outcome.skipped, self.dist.is_main, cfg, lr, self.run_dir)
                bar.update(min(int(clock), bar.total) - bar.n if timed else 1)
                if outcome.stop or failure:
                    stop = True
                    break
            del it
            s.elapsed = self.elapsed_before + (time.perf_counter() - self._started)
            complete = s.step % cfg.iters_per_epoch == 0
            if complete:
                s.epoch += 1
            row = tally.row(s, cfg.iters_per_epoch)
            last_epoch = s.epoch >= cfg.epochs or stop
            best = False
            if failure is None and (last_epoch or (complete and s.epoch % cfg.val_every == 0)):
                row |= validation_fields(self.validate())  # on every rank, each its share
                if row["val_dice_mean"] > s.best_dice:
                    s.best_dice, best = row["val_dice_mean"], True
            s.history.append(row)
            bar.set_postfix(
                step=s.step,
                epoch=s.epoch,
                loss=f"{row['train_loss']:.3f}",
                dice=f"{row['val_dice_mean']:.3f}" if "val_dice_mean" in row else "-",
            )
            save_last = failure is None and (last_epoch or not complete or s.epoch % max(1, cfg.checkpoint_every) == 0)
            with ddp.together(self.dist, "writing checkpoints and logs"):
                self._log_epoch(best, save_last, last_epoch)
        bar.close()
        if failure:
            ddp.stop_together(self.dist, failure)
        self.cfg = self.validation.checked_postprocess(self.model, self.card(), self.cfg, self.device)
        self.decision = self.validation.choose_decision(self.model, self.card(), self.cfg, self.device)
        self.innermost_min_mm3 = self.validation.choose_innermost_min(self.model, self.card(), self.cfg, self.device)
        with ddp.together(self.dist, "writing the final checkpoint"):
            self._save(CHECKPOINT_FINAL)
            if self.dist.is_main:  # the config as it ends: postprocessing checked on validation
                atomic_write_text(self.run_dir / "config.yaml", dump_config(self.cfg))
        self.log.close()
        last: dict = next((r for r in reversed(s.history) if "val_dice_mean" in r), {})
        tuned = finish(self.run_dir, s, self.validate(), self.dist.is_main) if s.initialised_from else {}
        return {
            "run_dir": str(self.run_dir),
            **{"epochs": s.epoch, "steps": s.step, "minutes": s.elapsed / 60.0},
            "val_dice_mean": last.get("val_dice_mean"),
            "stopped_by_time": stop,
            "precision": self.amp,  # what train.amp gave on this device (runtime.effective_amp)
            **tuned,
        }

    def _log_epoch(self, best: bool, save_last: bool, last_epoch: bool) -> None:
        """Rank 0: the best and last checkpoints, metrics.csv, TensorBoard, the curves."""
        if best:
            self._save(CHECKPOINT_BEST)
        if save_last:
            self._save(CHECKPOINT_LAST)
        self.log.write(self.state.history, self.state.step, last_epoch)


def train(data_dir: Path, run_dir: Path, config: Config, **options) -> dict:
    """Train a model; returns a small summary (run folder, epochs, last validation Dice).
    ``options`` are :class:`Trainer`'s: ``device``, ``max_minutes``, ``resume``, ``progress``, ``init``
    (:mod:`.finetune`), ``split`` and ``cache_dir`` (a cross-validation fold, :mod:`.crossval`)."""
    trainer = Trainer(data_dir, run_dir, config, **options)
    try:
        trainer.setup()
        summary = trainer.fit()
        ddp.barrier(trainer.dist)  # no rank leaves the group while another still uses it
        return summary
    finally:  # every exit path, errors included, leaves the process group
        ddp.cleanup(trainer.dist)
