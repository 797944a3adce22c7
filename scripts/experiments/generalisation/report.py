"""Scores, mask checks and tables of the generalisation check (reads what ``brainseg evaluate`` wrote)."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from scripts.benchmark.compare import mask_agreement
from scripts.common import case_id, markdown_table

#: Foreground labels scored (value -> name), the demo's convention.
LABEL_NAMES = {1: "CSF", 2: "grey matter", 3: "white matter"}
PIPELINES = {"brainseg": "brainseg", "monai": "MONAI reference"}
SETS = {"demo_heldout": "demo held-out", "shifted": "shifted scans"}
AFFINE_ATOL = 1e-5


def read_scores(eval_dir: Path) -> dict[str, Any]:
    """Mean Dice per label (and their mean) from summary.json; each case's mean Dice from metrics.csv."""
    summary = json.loads((eval_dir / "summary.json").read_text())
    dice = {name: summary["labels"][str(v)]["dice"]["mean"] for v, name in LABEL_NAMES.items()}
    per_label: dict[str, dict[str, float]] = {}
    with open(eval_dir / "metrics.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if int(row["label"]) in LABEL_NAMES:
                per_label.setdefault(row["case"], {})[LABEL_NAMES[int(row["label"])]] = float(row["dice"])
    return {
        "dice": dice,
        "mean": float(np.mean(list(dice.values()))),
        "n_cases": summary["n_cases"],
        "failed": summary["failed"],
        "per_case": {c: {**d, "mean": float(np.mean(list(d.values())))} for c, d in sorted(per_label.items())},
    }


def mask_geometry(images_dir: Path, masks_dir: Path) -> dict[str, Any]:
    """Does every scan's mask have the scan's exact shape and affine, with labels 0-3 only?"""
    cases = {}
    for image in sorted(images_dir.glob("*_0000.nii.gz")):
        cid = case_id(image)
        mask_path = masks_dir / f"{cid}.nii.gz"
        if not mask_path.is_file():
            cases[cid] = {"ok": False, "problem": "no mask"}
            continue
        src, mask = nib.load(str(image)), nib.load(str(mask_path))
        diff = float(np.abs(mask.affine - src.affine).max())
        values = np.unique(np.asarray(mask.dataobj)).tolist()
        ok = mask.shape == src.shape[:3] and diff <= AFFINE_ATOL and set(values) <= {0, *LABEL_NAMES}
        cases[cid] = {
            "ok": bool(ok),
            "shape": list(mask.shape),
            "scan_shape": list(src.shape[:3]),
            "affine_max_abs_diff": diff,
            "values": [int(v) for v in values],
        }
    return {"ok": bool(cases) and all(c["ok"] for c in cases.values()), "cases": cases}


def agreement(masks_a: Path, masks_b: Path, case_ids: Sequence[str]) -> dict[str, float]:
    """Fraction of voxels on which two pipelines' masks of each case agree."""
    out = {}
    for cid in case_ids:
        a = np.asarray(nib.load(str(masks_a / f"{cid}.nii.gz")).dataobj)
        b = np.asarray(nib.load(str(masks_b / f"{cid}.nii.gz")).dataobj)
        out[cid] = mask_agreement(a, b, [0, *LABEL_NAMES])["agreement"]
    return out


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_rows(report: dict) -> list[list[Any]]:
    rows = []
    for set_key, set_name in SETS.items():
        for key, name in PIPELINES.items():
            res = report["results"].get(key, {}).get(set_key)
            if res is None:
                continue
            steps = report["training"][key].get("steps")
            rows.append(
                [
                    set_name,
                    name,
                    res["n_cases"],
                    *(_f(res["dice"][n]) for n in LABEL_NAMES.values()),
                    f"**{_f(res['mean'])}**",
                    "-" if steps is None else steps,
                    "yes" if res["geometry"]["ok"] else "**NO**",
                ]
            )
    return rows


def case_rows(report: dict) -> list[list[Any]]:
    rows = []
    shifted = {key: report["results"].get(key, {}).get("shifted") for key in PIPELINES}
    agree = report.get("agreement_shifted", {})
    for case in report["shifted_cases"]:
        cid = case["case_id"]
        cells = []
        for res in shifted.values():
            if res is not None:
                c = res["per_case"].get(cid, {})
                cells.append(" / ".join(_f(c.get(n), 2) for n in LABEL_NAMES.values()) + f" (**{_f(c.get('mean'))}**)")
        if agree:
            cells.append(f"{agree[cid] * 100:.1f}%" if cid in agree else "-")
        rows.append([cid, case["description"], f"{case['brain_litres']:.2f} L", *cells])
    return rows


def tables(report: dict) -> str:
    """The report as markdown: the side-by-side Dice table and the per-case table of the shifted set."""
    pipelines = [PIPELINES[k] for k in PIPELINES if report["results"].get(k)]
    names = " / ".join(LABEL_NAMES.values())
    parts = [
        markdown_table(
            summary_rows(report),
            [
                "data set",
                "pipeline",
                "cases",
                *LABEL_NAMES.values(),
                "mean Dice",
                "training steps",
                "masks on the scans' grids",
            ],
        ),
        "Shifted scans, case by case (Dice " + names + ", mean in bold):",
        markdown_table(
            case_rows(report),
            [
                "case",
                "settings",
                "brain",
                *pipelines,
                *(["voxels equal (brainseg vs MONAI)"] if report.get("agreement_shifted") else []),
            ],
        ),
    ]
    tr = report["training"]
    notes = [f"brainseg: {tr['brainseg'].get('note', '')}"]
    if "monai" in tr and tr["monai"]:
        m = tr["monai"]
        notes.append(
            f"MONAI reference: BasicUNet {tuple(m['features'])}, {m['spacing_rule']}, patch "
            f"{m['patch_size'][0]}³ x {m['patches_per_step']}, {m['steps']} steps in "
            f"{m['minutes']:.1f} min, {m['threads']} threads"
        )
    parts.append("Training: " + "; ".join(notes) + ".")
    return "\n\n".join(parts)
