"""What a run leaves for people to read: metrics.csv, TensorBoard logs, curves.png, the progress bar."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from brainseg.io.atomic import atomic_path, atomic_write_text
from brainseg.labels.regions import Regions


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


def plot_curves(path: Path, history: Sequence[dict], label_names: dict[int, str]) -> None:
    """Training loss and validation Dice against epoch, one PNG."""
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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")


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
