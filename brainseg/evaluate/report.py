"""What an evaluation shows people: a box plot of Dice per label (or region) and the cases worst first.

``O/dice_boxplot.png``: one box per label or region over the scored cases, each case a point.
``O/cases_worst_first.csv``: one row per case, ``case``, ``mean_dice`` (over its labels or
regions), then ``<label or region>_dice``; sorted by mean Dice, lowest first (ties by case id),
so the cases to look at come first. Both are written (atomically) when a case was scored.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from brainseg.io.atomic import atomic_write_text
from brainseg.io.pictures import boxplot_png

BOXPLOT_NAME = "dice_boxplot.png"
WORST_FIRST_NAME = "cases_worst_first.csv"


def worst_first(dice: Mapping[str, Mapping[str, float]]) -> list[tuple[str, float]]:
    """(case, mean Dice over its labels) for every case, lowest mean first, ties by case id."""
    means = {case: float(np.mean(list(scores.values()))) for case, scores in dice.items() if scores}
    return sorted(means.items(), key=lambda item: (item[1], item[0]))


def write_report(out_dir: Path, dice: Mapping[str, Mapping[str, float]], names: Sequence[str], title: str) -> None:
    """The box plot and the worst-first table of ``dice`` ({case: {label or region name: Dice}},
    ``names`` in column order) in ``out_dir``; nothing when no case was scored."""
    if not dice or not names:
        return
    order = worst_first(dice)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", "mean_dice", *(f"{n}_dice" for n in names)])
    for case, mean in order:
        writer.writerow([case, format(mean, ".10g"), *(format(dice[case][n], ".10g") for n in names)])
    atomic_write_text(Path(out_dir) / WORST_FIRST_NAME, buf.getvalue())
    boxplot_png(Path(out_dir) / BOXPLOT_NAME, {n: [dice[c][n] for c in sorted(dice)] for n in names}, title)


def worst_lines(out_dir: Path, n: int) -> list[str]:
    """The first ``n`` rows of ``cases_worst_first.csv`` as text lines (none when it is absent)."""
    path = Path(out_dir) / WORST_FIRST_NAME
    if n <= 0 or not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))[:n]
    width = max(len(r["case"]) for r in rows) if rows else 0
    return [f"{r['case']:<{width}}  mean Dice {float(r['mean_dice']):.4f}" for r in rows]
