"""Measured trust: does a cross-validation run's predicted Dice rank, and its flag catch, the
scans that went wrong, on held-out scans damaged in ways its calibration never saw?

    python -m scripts.experiments.trust --run runs/cv --data demo/ --out trust/
    python -m scripts.experiments.trust --run runs/cv --data demo/ --out trust/ --skip-predict

RUN is a cross-validation run folder (``RUN/fold_0`` ... ``RUN/fold_{K-1}``), DATA a folder with
held-out ``imagesTs``/``labelsTs`` (one channel). Steps (each a ``python -m brainseg``
subprocess, so the experiment runs the CLI as a user would):

1. the test set ``OUT/test`` (imagesTs, labelsTs, variants.json): every held-out case clean and
   with mild and heavy noise, bias, thick slices and a wrong contrast
   (:mod:`~scripts.experiments.trust.degrade`; reused when it matches the seed);
2. ``brainseg predict --model RUN`` (the fold ensemble) into ``OUT/pred_ensemble`` and
   ``--model RUN/fold_k`` into ``OUT/pred_fold_k`` (no ``--tta``: no test-time mirroring),
   with ``--qc-threshold`` when predict has it; ``--skip-predict`` reuses these folders;
3. ``brainseg evaluate --pred OUT/pred_X --ref OUT/test/labelsTs --out OUT/eval_X`` for each
   (``--model`` too for a region model);
4. ``OUT/report.json`` and ``OUT/report.md`` (:mod:`~scripts.experiments.trust.report`): per
   case its damage, each model's true mean Dice, the ensemble's predicted Dice and flag; the
   ensemble against the mean single fold on the clean and on all cases; the trust numbers of
   ``OUT/eval_ensemble/trust.json`` ("no quality columns" when the run has no calibration);
   each target, met or not. The tables are printed at the end.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainseg.infer.qc import qc_columns
from brainseg.io.atomic import atomic_write_text
from brainseg.model.checkpoint import load_card
from brainseg.quality.qc import from_measures_record
from scripts.common import CommandFailed, brainseg_cmd, git_state, load1, logger, machine_info
from scripts.common import run as run_command
from scripts.experiments.trust import report as report_mod
from scripts.experiments.trust.degrade import DEFAULT_SEED, make_test_set

PROG = "python -m scripts.experiments.trust"
TRUST_JSON = "trust.json"
log = logger("trust")


def run(cmd: Sequence[Any], log_file: Path) -> None:
    """Run ``cmd`` (from the repo root), its output into ``log_file``; stop with its last lines on failure."""
    log(" ".join(str(c) for c in cmd))
    try:
        run_command(cmd, log_file)
    except CommandFailed as exc:
        raise SystemExit(f"trust: {exc}") from None


def folds_of(run_dir: Path) -> dict[str, Path]:
    """``fold_k`` -> its folder, in fold order; one error line when RUN has none."""
    found = [p for p in run_dir.glob("fold_*") if p.is_dir() and p.name[5:].isdigit()]
    if not found:
        raise SystemExit(f"trust: --run {run_dir}: no fold_* folders (expected a cross-validation run folder)")
    return {p.name: p for p in sorted(found, key=lambda p: int(p.name[5:]))}


def predict_has(option: str, logs: Path) -> bool:
    """Does ``brainseg predict`` take ``option`` (older versions have no quality score)?"""
    run(brainseg_cmd("predict", "--help"), logs / "predict_help.log")
    return option in (logs / "predict_help.log").read_text()


def predict(model: Path, images: Path, out: Path, extra: Sequence[Any], logs: Path, name: str) -> None:
    shutil.rmtree(out, ignore_errors=True)
    run(
        brainseg_cmd("predict", "--model", model, "--input", images, "--output", out, "--no-progress", *extra),
        logs / f"predict_{name}.log",
    )


def evaluate(model: Path, pred: Path, ref: Path, out: Path, logs: Path, name: str) -> None:
    """``brainseg evaluate`` of one model's masks (per region when the run record names regions)."""
    try:
        regions = json.loads((pred / "brainseg_run.json").read_text()).get("regions")
    except (OSError, ValueError, AttributeError):
        regions = None
    shutil.rmtree(out, ignore_errors=True)
    by_region = ["--model", model] if regions else []
    run(brainseg_cmd("evaluate", "--pred", pred, "--ref", ref, "--out", out, *by_region), logs / f"evaluate_{name}.log")


def rescore(run_dir: Path, pred: Path, threshold: float) -> int:
    """Rewrite the quality columns of ``pred/volumes.csv`` with the run's current quality score
    (after :func:`brainseg.train.cv_calibration.refit_quality`), from what prediction recorded
    per case in ``brainseg_run.json`` (``quality``: the measures and OOD distances); no case is
    predicted again. Returns the number of cases rescored."""
    card = load_card(next(iter(folds_of(run_dir).values())))
    if card.quality is None:
        raise SystemExit(f"trust: --rescore: {run_dir} has no quality score")
    record = json.loads((pred / "brainseg_run.json").read_text())["cases"]
    predicted = {}
    for cid, entry in record.items():
        if "quality" not in entry:
            raise SystemExit(f"trust: --rescore: {pred / 'brainseg_run.json'}: {cid} has no recorded measures")
        predicted[cid] = card.quality.predict(*from_measures_record(entry["quality"]))
    columns = qc_columns(card, predicted, threshold)
    with open(pred / "volumes.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    fields = [f for f in table[0] if f not in columns] + list(columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in table:
        writer.writerow({**row, **{name: values.get(row["case"], "") for name, values in columns.items()}})
    atomic_write_text(pred / "volumes.csv", buffer.getvalue())
    return len(predicted)


def case_rows(manifest: dict[str, Any], out: Path, models: Sequence[str]) -> list[dict[str, Any]]:
    """One row per test case: its damage, each model's true mean Dice, the ensemble's per label, its prediction."""
    names = report_mod.label_names(out / "pred_ensemble", out / "eval_ensemble")
    dice = {m: report_mod.true_dice(out / f"eval_{m}", names) for m in models}
    predicted = report_mod.predicted(out / "pred_ensemble")
    rows = []
    for entry in manifest["cases"]:
        cid = entry["case"]
        means = {m: round(float(np.mean(list(d[cid].values()))), 4) if d.get(cid) else None for m, d in dice.items()}
        rows.append(
            {
                **entry,
                "dice": means,
                "dice_per_label": {k: round(v, 4) for k, v in dice["ensemble"].get(cid, {}).items()},
                "predicted": predicted.get(cid),
            }
        )
    return rows


def quality(out: Path, cases: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The ensemble's trust.json (raw and flattened) and the driver's own cross-check."""
    path = out / "eval_ensemble" / TRUST_JSON
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        raw = None
    has_qc = any(c["predicted"] is not None for c in cases)
    if raw is not None:
        note = f"read from {path}"
    elif has_qc:
        note = f"no {TRUST_JSON} beside the evaluation (volumes.csv has quality columns: own check only)"
    else:
        note = f"{report_mod.NO_QC} in {out / 'pred_ensemble' / 'volumes.csv'} (the run has no quality calibration)"
    return {
        "trust_json": raw,
        "trust": report_mod.flatten(raw) if raw is not None else {},
        "check": report_mod.own_check(cases),
        "quality_columns": has_qc,
        "note": note,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="cross-validation run folder (fold_0 ... fold_{K-1})")
    p.add_argument("--data", type=Path, required=True, help="data folder with held-out imagesTs/ and labelsTs/")
    p.add_argument("--out", type=Path, required=True, help="working folder: test set, masks, evaluations, report")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the damaged test set")
    p.add_argument("--qc-threshold", type=float, default=0.7, help="flag cases whose predicted mean Dice is below")
    p.add_argument("--skip-predict", action="store_true", help="reuse OUT/pred_* (evaluation and report only)")
    p.add_argument(
        "--rescore",
        action="store_true",
        help="with --skip-predict: the ensemble's quality columns again from its recorded measures, "
        "with RUN's current quality score (after refit_quality)",
    )
    args = p.parse_args(argv)
    if not 0.0 < args.qc_threshold < 1.0:
        p.error("--qc-threshold must lie between 0 and 1")

    started, load_start = time.perf_counter(), load1()
    run_dir, out = args.run.resolve(), args.out.resolve()
    logs = out / "logs"
    folds = folds_of(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = {"ensemble": run_dir, **folds}
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    manifest = make_test_set(args.data.resolve(), out / "test", args.seed, log=log)
    timings["test_set"] = round(time.perf_counter() - t0, 1)
    images, labels = out / "test" / "imagesTs", out / "test" / "labelsTs"

    if args.rescore and not args.skip_predict:
        p.error("--rescore goes with --skip-predict")
    if args.skip_predict:
        missing = [str(out / f"pred_{m}") for m in models if not (out / f"pred_{m}").is_dir()]
        if missing:
            raise SystemExit(f"trust: --skip-predict: no predictions in {', '.join(missing)}")
        if args.rescore:
            log(
                f"rescored {rescore(run_dir, out / 'pred_ensemble', args.qc_threshold)} case(s) from their recorded measures"
            )
    else:
        extra = ["--qc-threshold", args.qc_threshold] if predict_has("--qc-threshold", logs) else []
        if not extra:
            log("brainseg predict has no --qc-threshold (no quality score in this version)")
        for name, model in models.items():
            t0 = time.perf_counter()
            predict(model, images, out / f"pred_{name}", extra, logs, name)
            timings[f"predict_{name}"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    for name, model in models.items():
        evaluate(model, out / f"pred_{name}", labels, out / f"eval_{name}", logs, name)
    timings["evaluate"] = round(time.perf_counter() - t0, 1)

    cases = case_rows(manifest, out, list(models))
    qual = quality(out, cases)
    versus = report_mod.ensemble_vs_folds(cases, list(folds))
    machine, git = machine_info(), git_state()
    report: dict[str, Any] = {
        "command": " ".join([PROG, *(argv if argv is not None else sys.argv[1:])]),
        "settings": {
            "run": str(run_dir),
            "data": str(args.data.resolve()),
            "seed": args.seed,
            "qc_threshold": args.qc_threshold,
            "folds": len(folds),
            "skip_predict": args.skip_predict,
            "rescore": args.rescore,
        },
        "models": list(models),
        "machine": machine,
        "git": git,
        "cases": cases,
        "ensemble_vs_folds": versus,
        "quality": qual,
        "targets": report_mod.targets(cases, qual["trust"] or None, qual["check"], args.qc_threshold, versus),
        "timings_s": timings,
        "load_1min": {"start": load_start, "end": load1()},  # the machine may be shared
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    text = report_mod.tables(report)
    atomic_write_text(out / "report.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(
        out / "report.md",
        f"# Measured trust\n\n`{report['command']}` ({report['total_seconds']:.0f} s; "
        f"{machine['cores_usable']} cores, torch {machine['torch']}, 1-min load {load_start} "
        f"at the start, {report['load_1min']['end']} at the end, commit {(git['commit'] or '?')[:10]}"
        f"{' + uncommitted changes' if git['dirty_files'] else ''})\n\n{text}\n",
    )
    print(text)
    print(f"\n(total {report['total_seconds']:.0f} s; report in {out / 'report.md'} and {out / 'report.json'})")
    return 0
