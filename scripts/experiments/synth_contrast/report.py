"""Tables of the synthetic-contrast check: Dice per test set per arm, per seed and their mean, and
the issue's bar (what the synthetic arm must reach, what it may lose on the training contrast)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from scripts.common import markdown_table
from scripts.experiments.synth_contrast.family import SETS

#: What the sets are, for the table.
SET_NAMES = {
    "t1": "T1 (the demo's held-out scans)",
    "t2": "T2-like",
    "pd": "PD-like",
    "flair": "FLAIR-like",
    "thick_t1": "T1, 4-6 mm slices",
    "thick_t2": "T2-like, 4-6 mm slices",
}
#: The bar: the synthetic arm's mean tissue Dice on every other set, and its largest loss on T1.
TARGET_DICE = 0.80
MAX_T1_LOSS = 0.02


def mean_over_seeds(results: dict[str, dict[str, Any]], arm: str, name: str) -> float | None:
    """Mean over seeds of an arm's mean tissue Dice on one set (None when no seed has it)."""
    values = [r[name]["mean"] for key, r in results.items() if key.startswith(f"{arm}_s") and name in r]
    return float(np.mean(values)) if values else None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def summary_rows(report: dict[str, Any]) -> list[list[str]]:
    results, seeds, arms = report["results"], report["settings"]["seeds"], report["settings"]["arms"]
    rows = []
    for name in SETS:
        row = [SET_NAMES[name]]
        for arm in arms:
            per_seed = [results.get(f"{arm}_s{s}", {}).get(name, {}).get("mean") for s in seeds]
            row += [" / ".join(_fmt(v) for v in per_seed), f"**{_fmt(mean_over_seeds(results, arm, name))}**"]
        if len(arms) == 2:
            a, b = (mean_over_seeds(results, arm, name) for arm in arms)
            row.append("-" if a is None or b is None else f"{b - a:+.3f}")
        rows.append(row)
    return rows


def bar(report: dict[str, Any]) -> dict[str, Any]:
    """Whether the synthetic arm met the bar: >= TARGET_DICE on every set but T1, and on T1 at most
    MAX_T1_LOSS below the default arm (means over seeds)."""
    results = report["results"]
    others = {name: mean_over_seeds(results, "synth", name) for name in SETS if name != "t1"}
    default_t1, synth_t1 = mean_over_seeds(results, "default", "t1"), mean_over_seeds(results, "synth", "t1")
    loss = None if default_t1 is None or synth_t1 is None else default_t1 - synth_t1
    met = all(v is not None and v >= TARGET_DICE for v in others.values()) and loss is not None and loss <= MAX_T1_LOSS
    return {"synth_dice": others, "t1_loss": loss, "met": bool(met)}


def tables(report: dict[str, Any]) -> str:
    seeds: Sequence[int] = report["settings"]["seeds"]
    arms = report["settings"]["arms"]
    header = ["test set"]
    for arm in arms:
        header += [f"{arm}: seeds {' / '.join(str(s) for s in seeds)}", f"{arm}: mean"]
    if len(arms) == 2:
        header.append(f"{arms[1]} - {arms[0]}")
    check = report.get("bar") or bar(report)
    worst = min((v for v in check["synth_dice"].values() if v is not None), default=None)
    lines = [
        "Mean tissue Dice (CSF, grey and white matter) per test set; each seed, then the mean over seeds:",
        markdown_table(summary_rows(report), header),
        f"The bar: the synthetic arm >= {TARGET_DICE} on every set but T1 (its lowest: {_fmt(worst)}), and at "
        f"most {MAX_T1_LOSS} below the default arm on T1 (it lost {_fmt(check['t1_loss'])}): "
        f"{'met' if check['met'] else 'not met'}.",
    ]
    steps = report.get("training", {})
    if steps:
        lines.append(
            "Training: "
            + "; ".join(f"{k} {v['steps']} steps in {v['minutes']:.1f} min" for k, v in steps.items() if v.get("steps"))
            + "."
        )
    return "\n\n".join(lines)
