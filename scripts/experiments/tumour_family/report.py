"""Scores and tables of the tumour-family check: what ``brainseg evaluate --regions brats`` wrote, split
per family; each case's label confusion (necrosis and oedema recall); means and spreads over seeds.

Recall of a reference label: the share of its voxels that the prediction gives the same label
(BraTS 2021 values: 1 necrosis / non-enhancing core, 2 oedema, 4 enhancing). A case without that
label has no recall (``None``); a family's recall pools the voxels of its cases.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from scripts.common import markdown_table

REGIONS = ("WT", "TC", "ET")
METRICS = ("dice", "hd95_mm", "lesion_dice", "lesion_hd95_mm")
#: BraTS 2021 label values and their names in the confusion counts.
LABELS = {0: "background", 1: "necrosis", 2: "oedema", 4: "enhancing"}
RECALLS = {"necrosis_recall": 1, "oedema_recall": 2}
#: The issue's bar for a model on a family it was not trained on.
TARGET_MEAN, TARGET_REGION = 0.85, 0.80


def label_confusion(pred: np.ndarray, ref: np.ndarray) -> dict[str, dict[str, int]]:
    """For each reference label (by name), how many of its voxels the prediction gives each label."""
    out: dict[str, dict[str, int]] = {}
    for r, r_name in LABELS.items():
        inside = pred[ref == r]
        out[r_name] = {p_name: int(np.count_nonzero(inside == p)) for p, p_name in LABELS.items()}
        out[r_name]["other"] = int(inside.size - sum(out[r_name].values()))
    return out


def recall(confusion: dict[str, dict[str, int]], value: int) -> float | None:
    """The share of the reference's ``value`` voxels predicted ``value`` (None when it has none)."""
    row = confusion[LABELS[value]]
    total = sum(row.values())
    return None if total == 0 else row[LABELS[value]] / total


def case_confusions(masks: Path, refs: Path, case_ids: Iterable[str]) -> dict[str, dict[str, dict[str, int]]]:
    """Each case's :func:`label_confusion` from ``masks/ID.nii.gz`` and ``refs/ID.nii.gz``."""
    out = {}
    for cid in case_ids:
        pred = np.asarray(nib.load(str(masks / f"{cid}.nii.gz")).dataobj)
        ref = np.asarray(nib.load(str(refs / f"{cid}.nii.gz")).dataobj)
        out[cid] = label_confusion(pred, ref)
    return out


def read_region_metrics(eval_dir: Path) -> dict[str, dict[str, float]]:
    """metrics.csv of ``evaluate --regions``: case -> {"WT_dice": ..., "ET_lesion_hd95_mm": ...}."""
    with open(eval_dir / "metrics.csv", newline="") as fh:
        return {
            row["case"]: {k: float(v) for k, v in row.items() if k != "case" and v != ""} for row in csv.DictReader(fh)
        }


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def family_scores(
    metrics: dict[str, dict[str, float]],
    confusions: dict[str, dict[str, dict[str, int]]],
    case_ids: Sequence[str],
    kinds: dict[str, str],
) -> dict[str, Any]:
    """One run's scores on one family's cases: per region the mean of each metric, the mean Dice over
    regions (voxel- and lesion-wise), pooled recalls, and each case's row."""
    scored = [c for c in case_ids if c in metrics]
    per_case = {}
    for cid in scored:
        row: dict[str, Any] = {"kind": kinds.get(cid, "?"), **metrics[cid]}
        row["mean_dice"] = float(np.mean([metrics[cid][f"{r}_dice"] for r in REGIONS]))
        row["mean_lesion_dice"] = float(np.mean([metrics[cid][f"{r}_lesion_dice"] for r in REGIONS]))
        for key, value in RECALLS.items():
            row[key] = recall(confusions[cid], value)
        row["confusion"] = confusions[cid]
        per_case[cid] = row
    regions = {r: {m: _mean([per_case[c][f"{r}_{m}"] for c in scored]) for m in METRICS} for r in REGIONS}
    pooled = {}
    for key, value in RECALLS.items():
        name = LABELS[value]
        hit = sum(confusions[c][name][name] for c in scored)
        total = sum(sum(confusions[c][name].values()) for c in scored)
        pooled[key] = None if total == 0 else hit / total
    return {
        "n_cases": len(scored),
        "missing": [c for c in case_ids if c not in metrics],
        "regions": regions,
        "mean_dice": _mean([regions[r]["dice"] for r in REGIONS]),
        "mean_lesion_dice": _mean([regions[r]["lesion_dice"] for r in REGIONS]),
        **pooled,
        "per_case": per_case,
    }


def over_seeds(results: dict[str, dict[str, Any]], train: str, family: str, seeds: Sequence[int]) -> dict[str, Any]:
    """Mean, population std and each seed's value of every summary number of (training set, family)."""
    runs = [results[f"{train}_s{s}"][family] for s in seeds if family in results.get(f"{train}_s{s}", {})]

    def stats(values: list[float | None]) -> dict[str, Any]:
        kept = [v for v in values if v is not None]
        return {
            "mean": float(np.mean(kept)) if kept else None,
            "std": float(np.std(kept)) if kept else None,
            "per_seed": values,
        }

    out: dict[str, Any] = {f"{r}_{m}": stats([run["regions"][r][m] for run in runs]) for r in REGIONS for m in METRICS}
    for key in ("mean_dice", "mean_lesion_dice", *RECALLS):
        out[key] = stats([run[key] for run in runs])
    return out


def bar(summary: dict[str, dict[str, Any]], train: str = "demo", family: str = "family") -> dict[str, Any]:
    """The issue's bar on the family the model was not trained on: mean Dice >= 0.85 and each region >= 0.80."""
    s = summary.get(train, {}).get(family)
    if not s:
        return {"met": None}
    regions = {r: s[f"{r}_dice"]["mean"] for r in REGIONS}
    mean = s["mean_dice"]["mean"]
    met = (
        mean is not None and mean >= TARGET_MEAN and all(v is not None and v >= TARGET_REGION for v in regions.values())
    )
    return {"train": train, "family": family, "mean": mean, "regions": regions, "met": bool(met)}


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cell(stat: dict[str, Any]) -> str:
    if stat["mean"] is None:
        return "-"
    seeds = " / ".join(_f(v) for v in stat["per_seed"])
    return f"{stat['mean']:.3f} ± {stat['std']:.3f} ({seeds})" if len(stat["per_seed"]) > 1 else f"{stat['mean']:.3f}"


FAMILY_NAMES = {"demo": "demo (`demo-data --kind tumour`)", "family": "independent family"}


def summary_rows(summary: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for train, by_family in summary.items():
        for family, s in by_family.items():
            rows.append(
                [
                    FAMILY_NAMES.get(train, train),
                    FAMILY_NAMES.get(family, family),
                    *(_cell(s[f"{r}_dice"]) for r in REGIONS),
                    f"**{_cell(s['mean_dice'])}**",
                    " / ".join(_f(s[f"{r}_lesion_dice"]["mean"]) for r in REGIONS),
                    _cell(s["necrosis_recall"]),
                    _cell(s["oedema_recall"]),
                ]
            )
    return rows


def case_rows(results: dict[str, dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for key, by_family in results.items():
        for family, res in by_family.items():
            for cid, c in res["per_case"].items():
                nec = c["confusion"]["necrosis"]
                rows.append(
                    [
                        key,
                        FAMILY_NAMES.get(family, family).split(" (")[0],
                        cid,
                        c["kind"],
                        " / ".join(_f(c[f"{r}_dice"]) for r in REGIONS),
                        _f(c["mean_dice"]),
                        " / ".join(_f(c[f"{r}_lesion_dice"]) for r in REGIONS),
                        _f(c["necrosis_recall"], 2),
                        _f(c["oedema_recall"], 2),
                        f"{nec['necrosis']:,} / {nec['enhancing']:,} / {nec['oedema']:,} / {nec['background']:,}",
                        f"{c['confusion']['oedema']['background']:,}",
                    ]
                )
    return rows


def tables(report: dict[str, Any]) -> str:
    """The report as markdown: means over seeds per (training set, family), the bar, each case."""
    check = report["bar"]
    lines = [
        "Region Dice (voxel-wise) per training set and scored family: mean ± std over seeds (each seed); "
        "lesion-wise Dice WT / TC / ET (BraTS 2023) means over seeds; recalls pool each family's voxels:",
        markdown_table(
            summary_rows(report["summary"]),
            [
                "trained on",
                "scored on",
                "WT",
                "TC",
                "ET",
                "mean",
                "lesion-wise WT / TC / ET",
                "necrosis recall",
                "oedema recall",
            ],
        ),
    ]
    if check.get("met") is not None:
        lines.append(
            f"The issue's bar (trained on the demo, scored on the independent family: mean >= {TARGET_MEAN}, each region "
            f">= {TARGET_REGION}): mean {_f(check['mean'])}, "
            + ", ".join(f"{r} {_f(v)}" for r, v in check["regions"].items())
            + f": {'met' if check['met'] else 'not met'}."
        )
    lines += [
        "Each case (label 1 is necrosis, or the core of a non-enhancing tumour):",
        markdown_table(
            case_rows(report["results"]),
            [
                "run",
                "family",
                "case",
                "kind",
                "Dice WT / TC / ET",
                "mean",
                "lesion-wise WT / TC / ET",
                "necrosis recall",
                "oedema recall",
                "ref. necrosis predicted necrosis / enhancing / oedema / background",
                "ref. oedema predicted background",
            ],
        ),
    ]
    steps = report.get("training", {})
    if steps:
        lines.append(
            "Training: "
            + "; ".join(f"{k} {v['steps']} steps in {v['minutes']:.1f} min" for k, v in steps.items() if v.get("steps"))
            + "."
        )
    lines.append("Commands:\n\n" + "\n".join(f"    {c}" for c in report["commands"]))
    return "\n\n".join(lines)
