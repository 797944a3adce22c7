"""The wall-clock budget of nnU-Net's training in the peers comparison (standard library only).

Imported by :mod:`nnUNetTrainerBudget` inside ``.venv-peers`` (as the top-level module
``peers_budget``, nnU-Net putting this folder on ``sys.path`` while it looks the trainer up
through ``nnUNet_extTrainer``) and by the tests in the default environment. It must import
neither brainseg nor nnU-Net.

The rules, those of ``brainseg train --max-minutes``:

* the clock starts when the data loaders are up (nnU-Net's unpacking and its first batch,
  like brainseg's preprocessing and MONAI's caching, are outside the budget);
* the run stops after the iteration past which one more would end farther beyond the
  budget than stopping leaves it short (``elapsed + mean iteration / 2 >= budget``, the
  mean over the run so far, epoch work included), so it ends as near the budget as whole
  iterations allow: an nnU-Net iteration on a CPU takes tens of seconds, not a brainseg
  step's fraction of one. At least one iteration is always done, and at most nnU-Net's
  own 1000 epochs x 250;
* the learning rate follows nnU-Net's poly schedule (``lr0 * (1 - progress) ** 0.9``) over
  the run's progress: the larger of the iterations done out of that total and the
  budget's seconds spent, so a budgeted run anneals to ~0 at its end as a full nnU-Net
  run does at its 1000th epoch (with the stock schedule, a run of minutes would stay at lr0).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

BUDGET_ENV = "PEERS_BUDGET_MINUTES"
ITERATIONS_ENV = "PEERS_ITERATIONS_PER_EPOCH"
THREADS_ENV = "PEERS_TORCH_THREADS"
FINAL_VALIDATION_ENV = "PEERS_FINAL_VALIDATION"

#: nnU-Net's default run: 1000 epochs of 250 iterations.
NNUNET_EPOCHS = 1000
NNUNET_ITERATIONS_PER_EPOCH = 250
NNUNET_TOTAL_ITERATIONS = NNUNET_EPOCHS * NNUNET_ITERATIONS_PER_EPOCH
#: Epochs of 10 iterations (nnU-Net's are 250): its per-epoch work (a validation batch, the
#: progress plot, the log) comes often enough to show the run's course, seldom enough to cost little.
DEFAULT_ITERATIONS_PER_EPOCH = 10
POLY_EXPONENT = 0.9


def poly_lr(initial: float, progress: float, exponent: float = POLY_EXPONENT) -> float:
    """nnU-Net's PolyLRScheduler at ``progress`` (0 = start, 1 = end; clipped to [0, 1])."""
    return initial * (1.0 - min(1.0, max(0.0, progress))) ** exponent


def epochs_for(total_iterations: int, iterations_per_epoch: int) -> int:
    """Epochs of ``iterations_per_epoch`` that hold ``total_iterations`` (the last may be partial)."""
    if iterations_per_epoch < 1:
        raise ValueError(f"iterations per epoch must be >= 1, not {iterations_per_epoch}")
    return math.ceil(total_iterations / iterations_per_epoch)


@dataclass
class Budget:
    """A training run's wall-clock budget (``seconds``) and its iteration cap; ``clock`` is injectable."""

    seconds: float
    total_iterations: int = NNUNET_TOTAL_ITERATIONS
    clock: Callable[[], float] = time.perf_counter
    started: float | None = field(default=None, init=False)
    iterations: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not self.seconds >= 0 or math.isinf(self.seconds):
            raise ValueError(f"a budget is a finite number of seconds >= 0, not {self.seconds}")
        if self.total_iterations < 1:
            raise ValueError(f"the iteration cap must be >= 1, not {self.total_iterations}")

    def start(self) -> None:
        self.started = self.clock()

    def elapsed(self) -> float:
        if self.started is None:
            raise RuntimeError("the budget's clock has not been started")
        return self.clock() - self.started

    def progress(self) -> float:
        """The run's fraction done, for the learning rate: max(iterations / cap, seconds / budget), at most 1."""
        by_time = self.elapsed() / self.seconds if self.seconds > 0 else 1.0
        return min(1.0, max(self.iterations / self.total_iterations, by_time))

    def step_done(self) -> bool:
        """Count one finished iteration; True when the run stops now: the cap is reached, or one more
        iteration at the mean pace so far would end farther past the budget than stopping leaves it short."""
        self.iterations += 1
        elapsed = self.elapsed()
        return self.iterations >= self.total_iterations or elapsed + elapsed / self.iterations / 2 >= self.seconds


def settings_from_env(environ: Mapping[str, str] | None = None) -> dict:
    """The trainer's settings from its environment: budget seconds (required), iterations per epoch,
    torch threads (None: leave nnU-Net's choice) and whether to run nnU-Net's final validation."""
    env = os.environ if environ is None else environ
    raw = env.get(BUDGET_ENV, "").strip()
    try:
        minutes = float(raw)
    except ValueError:
        raise ValueError(f"{BUDGET_ENV} must be the training budget in minutes, not {raw!r}") from None
    if not minutes >= 0 or math.isinf(minutes):
        raise ValueError(f"{BUDGET_ENV} must be a finite number of minutes >= 0, not {raw!r}")
    iterations = int(env.get(ITERATIONS_ENV, "").strip() or DEFAULT_ITERATIONS_PER_EPOCH)
    if iterations < 1:
        raise ValueError(f"{ITERATIONS_ENV} must be >= 1, not {iterations}")
    threads_raw = env.get(THREADS_ENV, "").strip()
    threads = int(threads_raw) if threads_raw else None
    if threads is not None and threads < 1:
        raise ValueError(f"{THREADS_ENV} must be >= 1, not {threads}")
    return {
        "seconds": minutes * 60.0,
        "iterations_per_epoch": iterations,
        "threads": threads,
        "final_validation": env.get(FINAL_VALIDATION_ENV, "").strip().lower() in ("1", "true", "yes"),
    }
