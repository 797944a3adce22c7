"""What a training run carries from step to step and from one invocation to the next.

:class:`RunState` is the loop's counters, the run's time budget and its history, stored in
every checkpoint (:meth:`RunState.checkpoint_fields`, :meth:`RunState.from_checkpoint`;
checkpoints from before a field existed load with its default). It also keeps the count
of steps skipped for a non-finite loss or gradient (:meth:`RunState.count_step`) and, for a
fine-tuned run, the checkpoint it started from (kept across ``--resume`` for the model card).
:func:`checkpoint_state` is what a checkpoint holds besides it (weights, optimizer, scaler, RNG
states, the model card), :func:`write_checkpoint` writes one (never with non-finite weights),
:func:`restore_checkpoint` reads one back into a resumed run.
:func:`check_run_dir` says whether a folder can take a new run or be resumed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from brainseg.config import TrainConfig
from brainseg.errors import BrainsegError
from brainseg.io.atomic import atomic_write_text
from brainseg.io.naming import SPLITS_FILE
from brainseg.model.card import InitialisedFrom, ModelCard
from brainseg.model.checkpoint import CHECKPOINT_LAST, load_checkpoint, nonfinite_tensors, save_checkpoint
from brainseg.runtime import restore_rng_states, rng_states

log = logging.getLogger(__name__)


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """A new run needs a folder without a run in it; ``resume`` needs one with its last checkpoint;
    neither goes into a cross-validation run's folder (its folds are runs, it is not)."""
    if (run_dir / SPLITS_FILE).is_file():
        raise BrainsegError(
            f"{run_dir}: holds a cross-validation run ({SPLITS_FILE}); train it with --folds/--fold or choose a new --out"
        )
    last = run_dir / CHECKPOINT_LAST
    if resume and not last.is_file():
        raise BrainsegError(f"{run_dir}: nothing to resume (no {CHECKPOINT_LAST})")
    if not resume and last.is_file():
        raise BrainsegError(
            f"{run_dir}: already holds a training run; use --resume to continue it or choose a new --out"
        )


def write_run_files(run_dir: Path, config_yaml: str, train_cases, val_cases) -> None:
    """The run folder's ``config.yaml`` and ``split.json`` (case ids per split)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", config_yaml)
    split = {"train": [c.case_id for c in train_cases], "val": [c.case_id for c in val_cases]}
    atomic_write_text(run_dir / "split.json", json.dumps(split, indent=1))


@dataclass
class StepOutcome:
    """One training step as every rank agreed on it."""

    loss: float  # this rank's loss
    skipped: bool  # a non-finite loss or gradient on some rank: no optimizer step
    stop: bool  # rank 0 is out of time
    clock: float  # rank 0's seconds since this invocation's training started


@dataclass
class RunState:
    epoch: int = 0  # completed epochs
    step: int = 0  # iterations done (skipped non-finite steps included)
    elapsed: float = 0.0  # training seconds over all invocations
    best_dice: float = -1.0
    history: list[dict] = field(default_factory=list)
    budget: float | None = None  # the run's total time budget (seconds); None: none
    skipped_steps: int = 0  # steps skipped for a non-finite loss or gradient, over the run
    nonfinite_run: int = 0  # how many of them came in a row, up to the last step
    initialised_from: InitialisedFrom | None = None  # fine-tuning: the checkpoint training started from

    def checkpoint_fields(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "elapsed": self.elapsed,
            "budget": self.budget,
            "skipped_steps": self.skipped_steps,
            "nonfinite_run": self.nonfinite_run,
            "best_dice": self.best_dice,
            "history": self.history,
            "initialised_from": None if self.initialised_from is None else self.initialised_from.to_dict(),
        }

    @classmethod
    def from_checkpoint(cls, st: dict[str, Any]) -> RunState:
        budget = st.get("budget")  # absent before budgets were stored
        init = st.get("initialised_from")  # absent before fine-tuning, None when trained from scratch
        return cls(
            epoch=int(st["epoch"]),
            step=int(st["step"]),
            elapsed=float(st["elapsed"]),
            best_dice=float(st["best_dice"]),
            history=list(st["history"]),
            budget=None if budget is None else float(budget),
            skipped_steps=int(st.get("skipped_steps", 0)),
            nonfinite_run=int(st.get("nonfinite_run", 0)),
            initialised_from=None if init is None else InitialisedFrom.from_dict(init),
        )

    def count_step(self, skipped: bool, report: bool = True) -> int:
        """Count a step that was skipped (a warning line when ``report``), or end the run of
        skips; returns how many steps in a row have been skipped."""
        if not skipped:
            self.nonfinite_run = 0
            return 0
        self.skipped_steps += 1
        self.nonfinite_run += 1
        if report:
            log.warning(
                f"step {self.step}: the loss or a gradient is not finite (NaN or inf); the step is skipped "
                f"({self.nonfinite_run} in a row, {self.skipped_steps} in this run)"
            )
        return self.nonfinite_run

    def too_many_skips(self, skipped: bool, report: bool, train: TrainConfig, lr: float, run_dir: Path) -> str | None:
        """Count a step (:meth:`count_step`); the error line that stops training once
        ``train.max_nonfinite_steps`` steps in a row were skipped, else None."""
        limit = train.max_nonfinite_steps
        if self.count_step(skipped, report) < limit:
            return None
        return (
            f"training stopped at step {self.step}: {self.nonfinite_run} steps in a row had a non-finite loss or "
            f"gradient (train.max_nonfinite_steps: {limit}); the learning rate ({lr:g}) may be too high or the "
            f"data may hold NaN/inf values; the checkpoints in {run_dir} hold the last finite weights"
        )


def checkpoint_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler, state: RunState, card: ModelCard
) -> dict[str, Any]:
    """A checkpoint's contents: weights, optimizer and gradient-scaler states, the run's
    :class:`RunState`, the RNG states and the model card (a plain dict)."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        **state.checkpoint_fields(),
        "rng": rng_states(),
        "card": card.to_dict(),
    }


def write_checkpoint(path: Path, checkpoint: dict[str, Any], step: int) -> None:
    """Write :func:`checkpoint_state`'s ``checkpoint`` to ``path``, never with non-finite weights."""
    bad = nonfinite_tensors(checkpoint["model"])
    if bad:
        raise BrainsegError(
            f"{path}: not written: the model weights hold NaN or inf at step {step} ({len(bad)} tensor(s), e.g. {bad[0]})"
        )
    save_checkpoint(path, checkpoint)


def restore_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler) -> RunState:
    """Load ``path`` into the model, optimizer and scaler and restore the RNG states; the run's state."""
    st = load_checkpoint(path, map_location="cpu")
    model.load_state_dict(st["model"])
    optimizer.load_state_dict(st["optimizer"])
    if st.get("scaler"):
        scaler.load_state_dict(st["scaler"])
    restore_rng_states(st.get("rng") or {})
    return RunState.from_checkpoint(st)
