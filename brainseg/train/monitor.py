"""What a run leaves for people to read: metrics.csv (one row per epoch, :class:`EpochTally`),
TensorBoard logs, curves.png (:class:`RunLog` writes all three), the progress bar."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from brainseg.io.atomic import atomic_path, atomic_write_text
from brainseg.labels.regions import Regions
from brainseg.train.state import RunState, StepOutcome

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class EpochTally:
    """What one epoch's steps add up to, for its metrics row."""

    lr: float  # the last step's learning rate
    start: float = field(default_factory=time.perf_counter)
    losses: list[float] = field(default_factory=list)  # of the steps that trained
    wait: float = 0.0  # seconds spent waiting for the loader
    skipped: int = 0  # steps skipped for a non-finite loss or gradient

    def add(self, outcome: StepOutcome, lr: float, wait: float) -> None:
        self.lr, self.wait, self.skipped = lr, self.wait + wait, self.skipped + outcome.skipped
        if not outcome.skipped:
            self.losses.append(outcome.loss)

    def row(self, state: RunState, iters_per_epoch: int) -> dict:
        """The epoch's metrics.csv row; ``state`` as the epoch ends (a partial epoch, cut by the
        clock or a failure, counts as the fraction of its steps done)."""
        seconds = time.perf_counter() - self.start
        partial = (state.step % iters_per_epoch) / iters_per_epoch
        return {
            "epoch": state.epoch + partial if partial else state.epoch,
            "step": state.step,
            "train_loss": float(np.mean(self.losses)) if self.losses else float("nan"),
            "lr": self.lr,
            "skipped_steps": self.skipped,
            "epoch_seconds": seconds,
            "data_wait_fraction": self.wait / max(seconds, 1e-9),
            "elapsed_minutes": state.elapsed / 60.0,
        }


def validation_fields(dice: Mapping) -> dict:
    """A row's validation columns: the mean Dice and one per label value (region name)."""
    return {"val_dice_mean": float(np.mean(list(dice.values()))), **{f"val_dice_{c}": d for c, d in dice.items()}}


def training_bar(total_steps: int, step: int, budget: float | None, elapsed: float, enabled: bool) -> tqdm:
    """The training progress bar: to the last step, or under a time budget (seconds) to what
    is left of it (``elapsed``: training seconds before this invocation)."""
    if budget is None:
        return tqdm(
            total=total_steps, initial=step, desc="training", unit="it", disable=not enabled, dynamic_ncols=True
        )
    left = max(0.0, budget - elapsed)
    return tqdm(
        total=int(left),
        desc=f"training ({left / 60:.3g} of {budget / 60:g} min budget left)",
        unit="s",
        disable=not enabled,
        dynamic_ncols=True,
        bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}",
    )


def write_metrics_csv(path: Path, history: Sequence[dict]) -> None:
    """The whole history as CSV (rewritten atomically; columns = union of keys)."""
    columns: list[str] = []
    for row in history:
        for k in row:
            if k not in columns:
                columns.append(k)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def curve_names(labels: dict[int, str], regions: Regions | None) -> dict:
    """The validation Dice columns to plot: foreground label value -> name, or region name -> itself."""
    if regions is not None:
        return {n: n for n in regions.names}
    return {c: n for c, n in labels.items() if c}


def plot_curves(path: Path, history: Sequence[dict], label_names: dict) -> None:
    """Training loss and validation Dice against epoch, one PNG (:func:`curves_figure`)."""
    fig = curves_figure(history, label_names)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")


def curves_figure(history: Sequence[dict], label_names: dict) -> Figure:
    """Training loss (left) and validation Dice (right: the mean, and one dashed line per
    label value or region of ``label_names``, named by it, from its ``val_dice_<key>`` column)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    epochs = [r["epoch"] for r in history]
    loss = [r["train_loss"] for r in history]
    fig = Figure(figsize=(11, 4))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, loss, color="tab:blue")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss (Dice + CE)")
    ax1.set_title("Training loss")
    ax1.grid(alpha=0.3)
    val = [r for r in history if r.get("val_dice_mean") not in (None, "")]
    if val:
        ax2.plot([r["epoch"] for r in val], [r["val_dice_mean"] for r in val], "k-o", ms=3, label="mean")
        for v, name in label_names.items():
            key = f"val_dice_{v}"
            pts = [(r["epoch"], r[key]) for r in val if r.get(key) not in (None, "")]
            if pts:
                ax2.plot(*zip(*pts), "--", lw=1, label=name)
        ax2.legend(fontsize=8, loc="lower right")
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("Dice")
    ax2.set_title("Validation Dice (sliding window)")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return fig


class TensorBoard:
    """A thin wrapper that does nothing when TensorBoard is unavailable or disabled."""

    def __init__(self, log_dir: Path | None):
        self.writer = None
        if log_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(log_dir))
            except Exception:  # tensorboard not installed: logs are optional
                self.writer = None

    def log(self, row: dict, step: int) -> None:
        if self.writer is None:
            return
        for k, v in row.items():
            if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class RunLog:
    """Rank 0's record of a run in ``run_dir``: metrics.csv (the whole history, rewritten each
    epoch), TensorBoard scalars and curves.png (after a validation and after the last epoch);
    ``run_dir`` None (the other ranks): nothing."""

    def __init__(self, run_dir: Path | None, curves: dict):
        self.run_dir = run_dir
        self.curves = curves
        self.tb = TensorBoard(run_dir / "tensorboard" if run_dir is not None else None)

    def write(self, history: Sequence[dict], step: int, last_epoch: bool) -> None:
        if self.run_dir is None:
            return
        row = history[-1]
        write_metrics_csv(self.run_dir / "metrics.csv", history)
        self.tb.log(row, step)
        if "val_dice_mean" in row or last_epoch:
            plot_curves(self.run_dir / "curves.png", history, self.curves)

    def close(self) -> None:
        self.tb.close()
