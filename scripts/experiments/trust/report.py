"""What the trust experiment reads back and concludes: each model's true Dice per case (``brainseg
evaluate``'s metrics.csv), the ensemble's predicted Dice and flag (its volumes.csv), the trust
numbers of its trust.json, and whether each target is met.

Targets: Spearman >= 0.7 between predicted and true Dice per label and for the mean; every case
whose true mean Dice is under the threshold flagged; no clean case flagged; the fold ensemble's
mean Dice at least the mean single fold's, on the clean cases and on all cases.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scripts.common import markdown_table

SPEARMAN_TARGET = 0.7
QC_PREFIX = "qc_dice_"
NO_QC = "no quality columns"


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))
    except OSError:
        return []


def _number(text: str | None) -> float | None:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def label_names(pred_dir: Path, eval_dir: Path) -> dict[str, str]:
    """Label value -> name of the foreground labels: the predictions' brainseg_run.json (``"labels"``),
    else the ``<name>_mm3`` columns of their volumes.csv (one per label, in ascending value) matched
    to the labels evaluate scored; empty when neither says."""
    try:
        labels = json.loads((pred_dir / "brainseg_run.json").read_text()).get("labels") or {}
    except (OSError, ValueError, AttributeError):
        labels = {}
    if labels:
        return {str(k): str(v) for k, v in labels.items() if str(k) != "0"}
    rows = _read_csv(pred_dir / "volumes.csv")
    columns = [c[: -len("_mm3")] for c in (rows[0] if rows else {}) if c.endswith("_mm3")]
    values = sorted({int(r["label"]) for r in _read_csv(eval_dir / "metrics.csv") if r.get("label", "0") != "0"})
    return {str(v): c for v, c in zip(values, columns)} if len(values) == len(columns) else {}


def true_dice(eval_dir: Path, names: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """Case -> {label name (or value, or region): Dice} from ``brainseg evaluate``'s metrics.csv
    (one row per case and label, or one row per case with ``<region>_dice`` columns)."""
    out: dict[str, dict[str, float]] = {}
    for row in _read_csv(eval_dir / "metrics.csv"):
        if "label" in row:
            value = _number(row.get("dice"))
            if value is not None and row["label"] != "0":
                out.setdefault(row["case"], {})[names.get(row["label"], row["label"])] = value
            continue
        for column, text in row.items():
            value = _number(text)
            if column.endswith("_dice") and value is not None:
                out.setdefault(row["case"], {})[column[: -len("_dice")]] = value
    return out


def predicted(pred_dir: Path) -> dict[str, dict[str, Any]]:
    """Case -> {"dice": {key: predicted Dice}, "mean": qc_dice_mean, "flag": bool} from volumes.csv;
    empty when the model wrote no quality columns."""
    out = {}
    for row in _read_csv(pred_dir / "volumes.csv"):
        mean = _number(row.get(f"{QC_PREFIX}mean"))
        if mean is None:
            continue
        dice = {
            k[len(QC_PREFIX) :]: v
            for k, t in row.items()
            if k.startswith(QC_PREFIX) and k != f"{QC_PREFIX}mean" and (v := _number(t)) is not None
        }
        out[row["case"]] = {"dice": dice, "mean": mean, "flag": str(row.get("qc_flag", "")).strip() == "1"}
    return out


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Every number or boolean of a JSON object by its dotted path; lists (curves, per-case
    values) are left out: they stay in the raw trust.json kept in report.json."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    number = isinstance(value, bool | int | float) and not (isinstance(value, float) and not math.isfinite(value))
    return {prefix: value} if number and prefix else {}


def spearman_entries(trust: Mapping[str, Any]) -> dict[str, float]:
    """The Spearman coefficients of a flattened trust.json (paths naming "spearman", not p-values or counts)."""
    skip = {"p", "pvalue", "p_value", "n", "count", "n_cases"}
    return {
        k: float(v)
        for k, v in trust.items()
        if "spearman" in k.lower() and not skip & set(k.lower().split(".")) and not isinstance(v, bool)
    }


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation (None with fewer than 3 pairs or a constant side)."""
    from scipy.stats import spearmanr

    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return None
    return round(float(spearmanr(a, b).statistic), 4)


def own_check(cases: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The driver's own Spearman per label and for the mean, and the mean absolute error of the
    predicted mean Dice, from the per-case rows (a cross-check of trust.json)."""
    rows = [c for c in cases if c["predicted"] is not None and c["dice"].get("ensemble") is not None]
    keys = sorted({k for c in rows for k in c["predicted"]["dice"] if k in c["dice_per_label"]})
    out: dict[str, Any] = {"n_cases": len(rows), "spearman": {}}
    for key in keys:
        pairs = [(c["predicted"]["dice"][key], c["dice_per_label"][key]) for c in rows if key in c["predicted"]["dice"]]
        out["spearman"][key] = spearman([p for p, _ in pairs], [t for _, t in pairs])
    pred, true = [c["predicted"]["mean"] for c in rows], [c["dice"]["ensemble"] for c in rows]
    out["spearman"]["mean"] = spearman(pred, true)
    out["mae_mean"] = round(float(np.mean(np.abs(np.subtract(pred, true)))), 4) if rows else None
    return out


def ensemble_vs_folds(cases: Sequence[dict[str, Any]], folds: Sequence[str]) -> dict[str, Any]:
    """Mean Dice of the ensemble and of each fold over the cases every model scored, clean and all."""
    out: dict[str, dict[str, Any]] = {}
    for subset in ("clean", "all"):
        rows = [
            c
            for c in cases
            if (subset == "all" or c["degradation"] == "clean")
            and all(c["dice"].get(m) is not None for m in ("ensemble", *folds))
        ]
        if not rows:
            out[subset] = {"n_cases": 0, "met": None}
            continue
        per_fold = {f: float(np.mean([c["dice"][f] for c in rows])) for f in folds}
        ensemble = float(np.mean([c["dice"]["ensemble"] for c in rows]))
        mean_fold = float(np.mean(list(per_fold.values())))
        out[subset] = {
            "n_cases": len(rows),
            "ensemble": round(ensemble, 4),
            "mean_fold": round(mean_fold, 4),
            "folds": {f: round(v, 4) for f, v in per_fold.items()},
            "met": ensemble >= mean_fold,
        }
    return out


def targets(
    cases: Sequence[dict[str, Any]],
    trust: Mapping[str, Any] | None,
    check: Mapping[str, Any],
    threshold: float,
    versus: Mapping[str, Any],
) -> dict[str, dict[str, Any]]:
    """Each target with its value and whether it is met (None: nothing to judge, e.g. no quality columns)."""
    out: dict[str, dict[str, Any]] = {}
    for subset, v in versus.items():
        out[f"ensemble >= mean single fold ({subset} cases)"] = {
            "value": f"{_f(v.get('ensemble'))} vs {_f(v.get('mean_fold'))}" if v["n_cases"] else "no cases",
            "met": v["met"],
        }
    have_qc = any(c["predicted"] is not None for c in cases)
    entries = spearman_entries(trust or {})
    source = "trust.json" if entries else "own check"
    if not entries and have_qc:
        entries = {f"spearman.{k}": v for k, v in check["spearman"].items() if v is not None}
    if have_qc and entries:
        worst = min(entries, key=lambda k: entries[k])
        out["spearman >= 0.7 per label and mean"] = {
            "value": f"min {entries[worst]:.3f} ({worst}, {source})",
            "met": all(v >= SPEARMAN_TARGET for v in entries.values()),
        }
    else:
        out["spearman >= 0.7 per label and mean"] = {"value": NO_QC if not have_qc else "no Spearman", "met": None}
    scored = [c for c in cases if c["dice"].get("ensemble") is not None and c["predicted"] is not None]
    low = [c for c in scored if c["dice"]["ensemble"] < threshold]
    misses = [c["case"] for c in low if not c["predicted"]["flag"]]
    clean_flagged = [c["case"] for c in scored if c["degradation"] == "clean" and c["predicted"]["flag"]]
    if not have_qc:
        out[f"every case under {threshold:g} flagged"] = {"value": NO_QC, "met": None}
        out["no clean case flagged"] = {"value": NO_QC, "met": None}
    else:
        out[f"every case under {threshold:g} flagged"] = {
            "value": f"{len(low) - len(misses)}/{len(low)} flagged"
            + (f"; missed {', '.join(misses)}" if misses else ""),
            "met": not misses,
        }
        n_clean = sum(c["degradation"] == "clean" for c in scored)
        out["no clean case flagged"] = {
            "value": f"{len(clean_flagged)}/{n_clean} flagged"
            + (f": {', '.join(clean_flagged)}" if clean_flagged else ""),
            "met": not clean_flagged,
        }
    return out


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _met(value: bool | None) -> str:
    return "n/a" if value is None else "**yes**" if value else "**NO**"


def tables(report: Mapping[str, Any]) -> str:
    """The report as markdown: cases, ensemble against folds, trust numbers, targets."""
    models = report["models"]
    rows = []
    for c in report["cases"]:
        pred = c["predicted"]
        level = f"{c['level']:g} {c['unit']}".strip() if c["degradation"] != "clean" else ""
        rows.append(
            [
                c["case"],
                f"{c['degradation']} ({c['severity']})" if c["degradation"] != "clean" else "clean",
                level,
                *(_f(c["dice"].get(m)) for m in models),
                _f(pred["mean"]) if pred else "-",
                ("**yes**" if pred["flag"] else "no") if pred else "-",
            ]
        )
    parts = [
        "True mean Dice per model, the ensemble's predicted Dice and flag:",
        markdown_table(rows, ["case", "damage", "level", *models, "predicted", "flagged"]),
    ]
    vs = report["ensemble_vs_folds"]
    parts += [
        "Fold ensemble against single folds (mean Dice over the cases):",
        markdown_table(
            [[s, v["n_cases"], _f(v.get("ensemble")), _f(v.get("mean_fold")), _met(v["met"])] for s, v in vs.items()],
            ["cases", "n", "ensemble", "mean single fold", "ensemble >= mean fold"],
        ),
    ]
    quality = report["quality"]
    if quality["trust"]:
        parts += [
            "Trust numbers (the ensemble's trust.json):",
            markdown_table([[k, v] for k, v in quality["trust"].items()], ["entry", "value"]),
        ]
    else:
        parts.append(f"Trust numbers: {quality['note']}.")
    check = quality["check"]
    if check["n_cases"]:
        sp = ", ".join(f"{k} {_f(v)}" for k, v in check["spearman"].items())
        parts.append(
            f"Own check over {check['n_cases']} cases: Spearman {sp}; MAE of the mean {_f(check['mae_mean'])}."
        )
    parts += [
        "Targets:",
        markdown_table(
            [[k, v["value"], _met(v["met"])] for k, v in report["targets"].items()], ["target", "value", "met"]
        ),
    ]
    return "\n\n".join(parts)
