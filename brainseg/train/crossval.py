"""Cross-validation: K folds of one data set, each a complete run folder, scored out of fold.

Run folder (``brainseg train --folds K``)::

    RUN/splits.json                  [{"train": [ids], "val": [ids]}, ...], one entry per fold (nnU-Net's form)
    RUN/plan.yaml, fingerprint.json  the plan every fold trains with (no --config), made once
    RUN/cache/                       the preprocessed cases, shared by the folds (unless data.cache_dir names one)
    RUN/fold_k/                      a run folder as `brainseg train` writes it, validated on fold k's cases
    RUN/cv_predictions/ID.nii.gz     each case's mask from the fold that held it out, in the case's own grid
    RUN/cv_predictions/fold_k.json   the fold's cases, checkpoint, the decision its card holds, each case's Dice
    RUN/cv_summary.csv, .json        Dice per case and label (region), per fold, mean and std
    RUN/cv_decision.json             the decision chosen on all folds (:mod:`.cv_calibration`), Dice before/after
    RUN/cv_quality.json              the quality score's calibration set and how well it predicts

:func:`make_splits` shuffles the sorted case ids with ``train.seed`` and cuts them into K
near-equal parts, as scikit-learn's ``KFold(shuffle=True)`` does: every case is held out exactly
once. An existing ``splits.json`` is reused, so folds trained one at a time (``--fold k``, on
other machines) agree, and checked against the data set's cases. The masks are what
``brainseg predict --model RUN/fold_k`` writes (the same predictor, settings from the fold's card);
the scores are ``brainseg evaluate``'s: :func:`~brainseg.evaluate.per_label.evaluate_case` per label,
or :func:`~brainseg.evaluate.metrics.region_scores` (BraTS's conventions) for a region model. A fold
whose ``checkpoint_final.pt`` exists is not trained again; the summary is rewritten after every fold
from the fold records that exist. When the last fold is done, :mod:`.cv_calibration` chooses the
decision on all folds and calibrates the quality score, stores both in every fold's cards, and
the out-of-fold masks and the summary are made again with that decision (delete
``RUN/cv_decision.json`` and run the same command again to choose and calibrate anew).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainseg.config import Config
from brainseg.data.cases import Case
from brainseg.data.layouts import discover_dataset
from brainseg.errors import BrainsegError
from brainseg.evaluate.metrics import region_scores
from brainseg.evaluate.per_label import evaluate_case, read_pair
from brainseg.infer.batch import predict_cases
from brainseg.infer.loading import load_predictor
from brainseg.io.atomic import atomic_write_text
from brainseg.io.naming import CV_DECISION, CV_PREDICTIONS, CV_SUMMARY_FILES, FOLD_PREFIX, NIFTI_GZ, SPLITS_FILE
from brainseg.labels.regions import Regions
from brainseg.model.checkpoint import CHECKPOINT_FINAL, CHECKPOINT_LAST, resolve_checkpoint
from brainseg.plan.fingerprint import FINGERPRINT_FILE, fingerprint_dataset
from brainseg.runtime import resolve_device, torchrun_env
from brainseg.train.cv_calibration import finish_cross_validation
from brainseg.train.trainer import train

log = logging.getLogger(__name__)

CV_SUMMARY_JSON, CV_SUMMARY_CSV = CV_SUMMARY_FILES
CONVENTIONS = (
    "Dice as brainseg evaluate scores it (both masks empty -> 1.0, exactly one empty -> 0.0; a region model's "
    "regions with BraTS's conventions), of each case's mask predicted by the fold that held it out, in the case's "
    "own grid. mean: the mean over the labels (regions) of a case. std is the population std (ddof=0) over the "
    "out-of-fold cases; per_fold holds each fold's means."
)

Split = dict[str, list[str]]


def fold_dir(run_dir: Path, fold: int) -> Path:
    return Path(run_dir) / f"{FOLD_PREFIX}{fold}"


def fold_record_path(run_dir: Path, fold: int) -> Path:
    """The fold's record beside its masks (written last: it exists once the fold's masks do)."""
    return Path(run_dir) / CV_PREDICTIONS / f"{FOLD_PREFIX}{fold}.json"


# --------------------------------------------------------------------------- splits


def make_splits(case_ids: Sequence[str], folds: int, seed: int) -> list[Split]:
    """K folds of the sorted ids, shuffled by ``seed``: each id is in exactly one fold's ``val``."""
    ids = sorted(case_ids)
    if not 2 <= folds <= len(ids):
        raise BrainsegError(f"--folds {folds}: needs 2 folds or more, and at most one per case ({len(ids)} case(s))")
    order = np.random.default_rng(seed).permutation(len(ids))
    splits = []
    for part in np.array_split(order, folds):
        val = sorted(ids[i] for i in part)
        splits.append({"train": [i for i in ids if i not in set(val)], "val": val})
    return splits


def read_splits(path: Path) -> list[Split]:
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise BrainsegError(f"{path}: unreadable ({exc})") from None
    if not (
        isinstance(raw, list)
        and raw
        and all(
            isinstance(f, dict) and isinstance(f.get("train"), list) and isinstance(f.get("val"), list) for f in raw
        )
    ):
        raise BrainsegError(f'{path}: expected a list of {{"train": [ids], "val": [ids]}}, one entry per fold')
    return [{"train": [str(i) for i in f["train"]], "val": [str(i) for i in f["val"]]} for f in raw]


def check_splits(splits: Sequence[Split], case_ids: Sequence[str], path: Path) -> None:
    """One error line unless ``splits`` cover exactly ``case_ids``, each held out by one fold, trained on by the rest."""
    ids = set(case_ids)
    named = {i for f in splits for i in f["train"] + f["val"]}
    if named != ids:
        added, removed = sorted(ids - named), sorted(named - ids)
        change = "; ".join(
            f"{what}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
            for what, items in (("new case(s)", added), ("case(s) gone", removed))
            if items
        )
        raise BrainsegError(
            f"{path}: the data set's cases changed since the folds were split ({change}); "
            f"use a new --out (or delete {path.name} and the folds trained on it)"
        )
    held = [i for f in splits for i in f["val"]]
    if len(held) != len(set(held)) or any(set(f["train"]) != ids - set(f["val"]) or not f["val"] for f in splits):
        raise BrainsegError(f"{path}: each case must be held out by exactly one fold and trained on by all others")


def fold_splits(run_dir: Path, case_ids: Sequence[str], folds: int | None, seed: int) -> list[Split]:
    """``RUN/splits.json`` checked against the data set, or made (and written) when absent."""
    path = Path(run_dir) / SPLITS_FILE
    if path.is_file():
        splits = read_splits(path)
        check_splits(splits, case_ids, path)
        if folds is not None and folds != len(splits):
            raise BrainsegError(f"{path}: holds {len(splits)} folds, not {folds} (--folds); use a new --out")
        return splits
    if folds is None:
        raise BrainsegError(f"{path}: not found; give --folds K (the first run makes the splits)")
    splits = make_splits(case_ids, folds, seed)
    if torchrun_env().is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(splits, indent=1) + "\n")
    return splits


# --------------------------------------------------------------------------- folds


def train_folds(
    data_dir: Path,
    run_dir: Path,
    config: Config,
    folds: int | None = None,
    only: int | None = None,
    on_fold: Callable[[int, dict | None], None] | None = None,
    **options: Any,
) -> dict | None:
    """Train fold ``only`` (None: every fold) of ``run_dir``'s cross-validation, predict and score
    its held-out cases, and rewrite the CV summary; returns the summary (None: no fold predicted).
    ``options``: :func:`~brainseg.train.trainer.train`'s ``device``, ``max_minutes`` (each fold's),
    ``resume``, ``progress``. ``on_fold(k, training summary or None when trained before)`` after each fold."""
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    if (run_dir / CHECKPOINT_LAST).is_file():
        raise BrainsegError(f"{run_dir}: holds a single training run, not a cross-validation; choose a new --out")
    ds = discover_dataset(data_dir)
    if not ds.train:
        raise BrainsegError(f"{data_dir}: no labelled training cases found")
    splits = fold_splits(run_dir, [c.case_id for c in ds.train], folds, config.train.seed)
    if only is not None and not 0 <= only < len(splits):
        raise BrainsegError(f"--fold {only}: {run_dir / SPLITS_FILE} holds folds 0 to {len(splits) - 1}")
    env = torchrun_env()
    if env.is_main:  # fingerprinted once, copied into every fold (its card's ranges come from it)
        fingerprint_dataset(ds, run_dir / FINGERPRINT_FILE, config.data.max_voxels)
    summary = None
    for k in [only] if only is not None else range(len(splits)):
        out = fold_dir(run_dir, k)
        trained = None
        if (out / CHECKPOINT_FINAL).is_file():
            log.debug(f"fold {k}: trained already ({out / CHECKPOINT_FINAL}); not trained again")
        else:
            if env.is_main and not (out / FINGERPRINT_FILE).is_file():
                atomic_write_text(out / FINGERPRINT_FILE, (run_dir / FINGERPRINT_FILE).read_text())
            resume = bool(options.get("resume")) and (out / CHECKPOINT_LAST).is_file()
            split = (splits[k]["train"], splits[k]["val"])
            trained = train(
                data_dir, out, config, **(options | {"resume": resume}), split=split, cache_dir=run_dir / "cache"
            )
        if env.is_main:
            if trained is not None or not fold_record_path(run_dir, k).is_file():
                device = resolve_device(options.get("device", "auto"), env.local_rank)
                predict_fold(run_dir, k, splits[k], ds.train, device)
            summary = write_cv_summary(run_dir, len(splits))
        if on_fold is not None:
            on_fold(k, trained)
    if env.is_main and complete(run_dir, len(splits)) and not (run_dir / CV_DECISION).is_file():
        device = resolve_device(options.get("device", "auto"), env.local_rank)
        finish_cross_validation(run_dir, splits, ds.train, device)
        for k, fold_split in enumerate(splits):  # the out-of-fold masks again, as the chosen decision makes them
            predict_fold(run_dir, k, fold_split, ds.train, device)
        summary = write_cv_summary(run_dir, len(splits))
    return summary


def complete(run_dir: Path, n_folds: int) -> bool:
    """Every fold trained to its end and its held-out cases predicted."""
    return all(
        (fold_dir(run_dir, k) / CHECKPOINT_FINAL).is_file() and fold_record_path(run_dir, k).is_file()
        for k in range(n_folds)
    )


def predict_fold(run_dir: Path, fold: int, split: Split, cases: Sequence[Case], device) -> dict:
    """Predict fold ``fold``'s held-out cases into ``RUN/cv_predictions`` as ``brainseg predict`` would,
    score each against its label, and write the fold's record (returned)."""
    model = fold_dir(run_dir, fold)
    predictor = load_predictor(model, device)
    by_id = {c.case_id: c for c in cases}
    held_out = [by_id[i] for i in split["val"]]
    out = Path(run_dir) / CV_PREDICTIONS
    done = predict_cases(predictor, held_out, out, overwrite=True)
    card = predictor.card
    regions = card.regions
    keys = list(regions.names) if regions is not None else [str(v) for v in card.label_values if v != 0]
    dice = {cid: case_dice(out / f"{cid}{NIFTI_GZ}", by_id[cid].label, keys, regions) for cid in done.written}
    record = {
        "fold": fold,
        "checkpoint": str(resolve_checkpoint(model).relative_to(run_dir)),
        "train": list(split["train"]),
        "val": list(split["val"]),
        "kind": "regions" if regions is not None else "labels",
        "keys": keys,
        "names": {k: (k if regions is not None else card.labels[int(k)]) for k in keys},
        "regions": regions.to_dict() if regions is not None else None,
        "decision": {  # what the fold's card decides voxels with, and its postprocessing
            "class_offsets": list(card.class_offsets),
            "region_thresholds": list(card.thresholds),
            "innermost_min_mm3": float(card.innermost_min_mm3),
            "postprocess": dict(card.config.get("postprocess") or {}),
        },
        "dice": dice,
        "ood": {cid: done.ood.get(cid, "") for cid in done.written},
        "failed": dict(done.failed),
    }
    path = fold_record_path(run_dir, fold)
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return record


def case_dice(mask: Path, label: Path | None, keys: Sequence[str], regions: Regions | None) -> dict[str, float]:
    """Dice per key (label value or region name) of one predicted mask against its label file,
    as ``brainseg evaluate`` (``--labels`` / ``--regions``) scores it."""
    if label is None:
        raise BrainsegError(f"{mask}: its case has no label file to score against")
    if regions is None:
        rows = evaluate_case(mask, label, [int(k) for k in keys])
        return {str(r["label"]): float(r["dice"]) for r in rows}
    pred, ref, geometry = read_pair(mask, label)
    return {name: float(d) for name, (d, _) in region_scores(pred, ref, regions, geometry.spacing).items()}


# --------------------------------------------------------------------------- summary


def cv_summary(run_dir: Path, n_folds: int) -> tuple[dict, list[dict]] | None:
    """(summary, rows) from the fold records that exist: rows are (case, fold, Dice per key and
    their mean), sorted by case; None without any record."""
    records = []
    for k in range(n_folds):
        path = fold_record_path(run_dir, k)
        if path.is_file():
            try:
                records.append(json.loads(path.read_text()))
            except (OSError, ValueError) as exc:
                raise BrainsegError(f"{path}: unreadable fold record ({exc})") from None
    if not records:
        return None
    keys, names = records[0]["keys"], records[0]["names"]
    rows = []
    for rec in records:
        for cid, scores in rec["dice"].items():
            rows.append({"case": cid, "fold": int(rec["fold"]), **{k: float(scores[k]) for k in keys}})
    for row in rows:
        row["mean"] = float(np.mean([row[k] for k in keys]))
    rows.sort(key=lambda r: r["case"])
    columns = [*keys, "mean"]

    def stats(values: list[float]) -> dict:
        arr = np.asarray(values, dtype=np.float64)
        return {"mean": float(arr.mean()), "std": float(arr.std()), "n": int(arr.size)} if arr.size else {"n": 0}

    per_fold = {}
    for rec in records:
        mine = [r for r in rows if r["fold"] == int(rec["fold"])]
        per_fold[str(rec["fold"])] = {"n_cases": len(mine), "dice": {c: stats([r[c] for r in mine]) for c in columns}}
    summary = {
        "kind": records[0]["kind"],
        "keys": keys,
        "names": names,
        "folds": n_folds,
        "folds_done": [int(r["fold"]) for r in records],
        "complete": len(records) == n_folds and not any(r["failed"] for r in records),
        "n_cases": len(rows),
        "dice": {c: stats([r[c] for r in rows]) for c in columns},
        "per_fold": per_fold,
        "conventions": CONVENTIONS,
    }
    return summary, rows


def write_cv_summary(run_dir: Path, n_folds: int) -> dict | None:
    """``RUN/cv_summary.json`` and ``RUN/cv_summary.csv`` (case, fold, ``dice_<key>``, ``dice_mean``)."""
    found = cv_summary(run_dir, n_folds)
    if found is None:
        return None
    summary, rows = found
    columns = [*summary["keys"], "mean"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", "fold", *(f"dice_{c}" for c in columns)])
    for row in rows:
        writer.writerow([row["case"], row["fold"], *(repr(row[c]) for c in columns)])
    atomic_write_text(Path(run_dir) / CV_SUMMARY_CSV, buf.getvalue())
    atomic_write_text(Path(run_dir) / CV_SUMMARY_JSON, json.dumps(summary, indent=1, allow_nan=False) + "\n")
    return summary


def format_cv_table(summary: dict) -> str:
    """Per label (region): the mean ± std Dice over the out-of-fold cases and each fold's mean."""
    folds = [str(k) for k in summary["folds_done"]]
    rows = [(f"{k} {summary['names'][k]}" if summary["kind"] == "labels" else k, k) for k in summary["keys"]]
    rows.append(("mean", "mean"))
    width = max(len(name) for name, _ in rows + [("label", "")])
    head = f"{'label' if summary['kind'] == 'labels' else 'region':<{width}}  {'Dice mean ± std':>15}"
    lines = [head + "".join(f"  {'fold ' + k:>7}" for k in folds)]
    for name, key in rows:
        st = summary["dice"][key]
        cell = f"{st['mean']:.4f} ± {st['std']:.4f}" if st["n"] else "-"
        means = [summary["per_fold"][k]["dice"][key].get("mean") for k in folds]
        lines.append(
            f"{name:<{width}}  {cell:>15}" + "".join("  " + ("-" if m is None else f"{m:.4f}").rjust(7) for m in means)
        )
    done = len(folds)
    lines.append(
        f"{summary['n_cases']} case(s) out of fold, {done} of {summary['folds']} fold(s)"
        + ("" if summary["complete"] else " (incomplete: the mean covers the folds predicted so far)")
    )
    return "\n".join(lines)
