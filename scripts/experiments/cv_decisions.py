"""Decisions chosen on all folds against decisions chosen on one fold's validation cases, on held-out scans.

    python -m scripts.experiments.cv_decisions --run RUN --input TEST_SCANS --ref TEST_LABELS --out OUT

RUN is a finished cross-validation run folder: after its last fold, every fold's card holds the
decision chosen on all out-of-fold cases, and (``decision_source.validation_decisions``) the one
that fold's training chose on its own validation cases. Each fold predicts the held-out scans
twice, once per decision (the validation one through ``--set`` overrides of the same
fields), ``brainseg evaluate`` scores both (per region for a region model), and OUT/report.json
holds each fold's mean Dice per arm and per region, their means over the folds and the difference.
Both arms use the same trained weights, so the comparison is post hoc on one model per fold.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainseg.io.atomic import atomic_write_text
from brainseg.model.checkpoint import load_card
from scripts.common import brainseg_cmd, git_state, machine_info, markdown_table, run

PROG = "python -m scripts.experiments.cv_decisions"


def validation_overrides(decision: dict[str, Any], n_regions: int) -> list[str]:
    """``--set`` arguments that make a fold decide as its own validation chose."""
    post = dict(decision.get("postprocess") or {})
    thresholds = list(decision.get("region_thresholds") or []) or ([0.5] * n_regions if n_regions else [])
    sets: dict[str, Any] = {
        "postprocess.class_offsets": list(decision.get("class_offsets") or []),
        "postprocess.innermost_min_mm3": float(decision.get("innermost_min_mm3") or 0.0),
        "postprocess.largest_foreground": bool(post.get("largest_foreground", False)),
        "postprocess.drop_coreless": bool(post.get("drop_coreless", False)),
        "postprocess.fill_holes": list(post.get("fill_holes") or []),
        "postprocess.largest_component": list(post.get("largest_component") or []),
        "postprocess.min_size_mm3": {int(k): float(v) for k, v in (post.get("min_size_mm3") or {}).items()},
    }
    if n_regions:
        sets["postprocess.region_thresholds"] = thresholds
    out = []
    for key, value in sets.items():
        text = json.dumps(value)
        if key == "postprocess.min_size_mm3":  # YAML with integer keys: JSON would make them strings
            text = "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
        out += ["--set", f"{key}={text}"]
    return out


def scores(summary_path: Path) -> dict[str, float]:
    """Mean Dice per region (or label) from an evaluation's summary.json, and their mean."""
    summary = json.loads(summary_path.read_text())
    groups = summary.get("regions") or summary.get("labels") or {}
    out = {name: float(entry["dice"]["mean"]) for name, entry in groups.items()}
    out["mean"] = float(np.mean(list(out.values())))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a finished cross-validation run folder")
    p.add_argument("--input", type=Path, required=True, help="held-out scans (a folder predict reads)")
    p.add_argument("--ref", type=Path, required=True, help="their reference label maps")
    p.add_argument("--out", type=Path, required=True, help="working folder: masks, evaluations, report")
    args = p.parse_args(argv)
    args.run, args.input, args.ref, args.out = (x.resolve() for x in (args.run, args.input, args.ref, args.out))
    folds = sorted((f for f in args.run.glob("fold_*") if f.name[5:].isdigit()), key=lambda f: int(f.name[5:]))
    if not folds:
        raise SystemExit(f"{PROG}: --run {args.run}: no fold_* folders")
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for k, fold in enumerate(folds):
        card = load_card(fold)
        source = card.decision_source or {}
        if source.get("on") != "cross-validation":
            raise SystemExit(f"{PROG}: {fold}: its card holds no decision chosen on all folds (is the run finished?)")
        n_regions = len(card.regions) if card.regions is not None else 0
        arms = {"all_folds": [], "validation": validation_overrides(source["validation_decisions"][k], n_regions)}
        rows[fold.name] = {}
        for arm, extra in arms.items():
            pred, ev = args.out / f"pred_{fold.name}_{arm}", args.out / f"eval_{fold.name}_{arm}"
            shutil.rmtree(pred, ignore_errors=True)
            shutil.rmtree(ev, ignore_errors=True)
            cmd = ["predict", "--model", fold, "--input", args.input, "--output", pred, "--no-progress", *extra]
            run(brainseg_cmd(*cmd), args.out / "logs" / f"predict_{fold.name}_{arm}.log")
            by = ["--model", fold] if n_regions else []
            cmd = ["evaluate", "--pred", pred, "--ref", args.ref, "--out", ev, *by]
            run(brainseg_cmd(*cmd), args.out / "logs" / f"evaluate_{fold.name}_{arm}.log")
            rows[fold.name][arm] = scores(ev / "summary.json")
    keys = list(next(iter(rows.values()))["all_folds"])
    mean = {
        arm: {key: float(np.mean([r[arm][key] for r in rows.values()])) for key in keys}
        for arm in ("all_folds", "validation")
    }
    report = {
        "command": " ".join([PROG, *(argv if argv is not None else sys.argv[1:])]),
        "folds": rows,
        "mean_over_folds": mean,
        "difference": {key: mean["all_folds"][key] - mean["validation"][key] for key in keys},
        "machine": machine_info(),
        "git": git_state(),
    }
    atomic_write_text(args.out / "report.json", json.dumps(report, indent=1) + "\n")
    table = [
        [f"{fold} {arm}", *(f"{r[arm][key]:.4f}" for key in keys)]
        for fold, r in [*rows.items(), ("mean", mean)]
        for arm in ("validation", "all_folds")
    ]
    print(markdown_table(table, ["fold, decision", *keys]))
    print("all folds - validation: " + ", ".join(f"{k} {v:+.4f}" for k, v in report["difference"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
