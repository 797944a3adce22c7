"""After the folds of a cross-validation: the decision chosen on all out-of-fold cases, and the
quality score calibrated on them.

Once every fold is trained and has predicted its held-out cases, :func:`finish_cross_validation`:

1. predicts every out-of-fold case again with probabilities (its own fold's model), pools them
   (at most :data:`MAX_POOLED_CASES`, float16) and chooses the voxel decision and the
   postprocessing rules on the pool (:func:`~brainseg.train.decisions.choose_on_pool`);
2. predicts each out-of-fold case with that decision, clean and as :data:`CALIBRATION_COPIES`
   degraded copies (:mod:`brainseg.quality.degrade`), measures each prediction
   (:mod:`brainseg.quality.qc`) and scores it against the case's label;
3. fits the quality score on those rows, and checks it honestly: each fold's rows predicted by
   a score fitted on the other folds' rows (the ``cross_fitted`` numbers);
4. writes the decision (with the pooled Dice before and after, and the folds' own validation
   choices) and the quality score into every fold's checkpoints' cards, and
   ``RUN/cv_decision.json`` and ``RUN/cv_quality.json`` beside them.

Every fold ends up with the same card fields, so a fold alone and the fold ensemble decide
alike and carry the same quality score.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from brainseg.config import config_from_dict
from brainseg.data.cases import Case
from brainseg.errors import BrainsegError
from brainseg.evaluate.metrics import dice, region_dice
from brainseg.infer.loading import inference_config
from brainseg.infer.predictor import Predictor
from brainseg.infer.qc import case_measures, quality_keys
from brainseg.io.atomic import atomic_write_text
from brainseg.io.images import Geometry, read_channels, read_label
from brainseg.io.naming import CHECKPOINT_CHOICES, CV_DECISION, CV_QUALITY, FOLD_PREFIX
from brainseg.model.card import ModelCard
from brainseg.model.checkpoint import load_model, replace_card
from brainseg.preprocessing.foreground import subject_mask
from brainseg.quality.degrade import case_seed, degradation_plan, degrade_case
from brainseg.quality.qc import CalibrationRow, QualityModel, fit_quality, from_measures_record, measures_record
from brainseg.train.decisions import Decision, PooledCase, choose_on_pool

log = logging.getLogger(__name__)

#: Degraded copies of each out-of-fold case in the quality score's calibration set.
CALIBRATION_COPIES = 4
#: At most this many out-of-fold cases' probabilities are pooled in memory for the decision.
MAX_POOLED_CASES = 48

Split = dict[str, list[str]]


def _fold(run_dir: Path, k: int) -> Path:
    return run_dir / f"{FOLD_PREFIX}{k}"


def _predictor(model: torch.nn.Module, card: ModelCard, device: torch.device) -> Predictor:
    cfg = inference_config(card, None, ())
    return Predictor(model, card, cfg.infer, cfg.postprocess, device, max_voxels=cfg.data.max_voxels)


def _label(case: Case) -> np.ndarray:
    if case.label is None:
        raise BrainsegError(f"{case.images[0]}: a cross-validation case without a label file")
    return read_label(case.label)[0]


def key_dice(pred: np.ndarray, ref: np.ndarray, card: ModelCard) -> dict[str, float]:
    """Dice per quality key (label value as a string, or region name) of one case."""
    if card.regions is not None:
        return {k: float(v) for k, v in region_dice(pred, ref, card.regions).items()}
    return {k: float(dice(pred == int(k), ref == int(k))) for k in quality_keys(card)}


def pooled_cases(run_dir: Path, splits: Sequence[Split], by_id: dict[str, Case], device) -> list[PooledCase]:
    """Every out-of-fold case's probabilities from its own fold (the first :data:`MAX_POOLED_CASES`
    in fold order, spread over the folds), with what deciding them needs."""
    per_fold = max(1, MAX_POOLED_CASES // len(splits))
    pool = []
    for k, split in enumerate(splits):
        model, card = load_model(_fold(run_dir, k), device)
        predictor = _predictor(model, card, device)
        for cid in split["val"][:per_fold]:
            prepared = predictor.prepare(list(by_id[cid].images))
            probs = predictor.segment_maps(prepared, probabilities=True).probabilities
            assert probs is not None  # asked for
            mode = predictor.input_mask_rule(prepared.record)
            spacing = tuple(prepared.geometry.spacing)
            ref = _label(by_id[cid])
            pool.append(PooledCase(probs.astype(np.float16), prepared.nonzero, mode, ref, spacing, fold=k))
    return pool


def decided_card(card: ModelCard, decision: Decision, source: dict) -> ModelCard:
    """``card`` deciding as ``decision`` says (the chosen postprocessing in its config)."""
    config = {**card.config, "postprocess": asdict(decision.postprocess)}
    return replace(
        card,
        class_offsets=decision.class_offsets,
        region_thresholds=decision.region_thresholds,
        innermost_min_mm3=decision.innermost_min_mm3,
        config=config,
        decision_source=source,
    )


def calibration_rows(
    run_dir: Path, splits: Sequence[Split], by_id: dict[str, Case], cards: Sequence[ModelCard], device, copies: int
) -> tuple[list[dict], list[CalibrationRow], dict[str, list[float]]]:
    """Each out-of-fold case, clean and degraded, predicted by its fold with its new card: (table
    rows for cv_quality.json, calibration rows, reference volumes per key of the clean cases)."""
    table: list[dict] = []
    rows: list[CalibrationRow] = []
    volumes: dict[str, list[float]] = {}
    for k, split in enumerate(splits):
        model, _ = load_model(_fold(run_dir, k), device)
        card = cards[k]
        predictor = _predictor(model, card, device)
        for cid in split["val"]:
            case = by_id[cid]
            data, geometry = read_channels(list(case.images))
            ref = _label(case)
            subject = subject_mask(data)
            voxel = float(np.prod(geometry.spacing))
            for key in quality_keys(card):
                mask = card.regions.masks(ref)[card.regions.names.index(key)] if card.regions else ref == int(key)
                volumes.setdefault(key, []).append(float(np.count_nonzero(mask)) * voxel)
            for i, variant in enumerate([None, *degradation_plan(cid, copies)]):
                image, truth, grid = data, ref, geometry
                if variant is not None:
                    image, truth, affine = degrade_case(data, ref, subject, geometry.affine, variant, case_seed(cid, i))
                    grid = Geometry((truth.shape[0], truth.shape[1], truth.shape[2]), affine)
                prepared = predictor.prepare_arrays(image, grid)
                seg = predictor.segment_maps(prepared, probabilities=True)
                assert seg.probabilities is not None  # asked for
                measures = case_measures(card, seg.probabilities, seg.labels, grid.spacing)
                row = CalibrationRow(cid, measures, prepared.ood_distance, key_dice(seg.labels, truth, card))
                rows.append(row)
                table.append(
                    {
                        "case": cid,
                        "fold": k,
                        "variant": "clean" if variant is None else variant.name,
                        "dice": dict(row.dice),
                        **measures_record(measures, prepared.ood_distance),
                    }
                )
    return table, rows, volumes


def cross_fitted(table: list[dict], rows: list[CalibrationRow], keys: list[str], volumes) -> dict[str, float]:
    """Each fold's rows predicted by a score fitted on the other folds' rows (written into ``table``
    as ``predicted_cross_fitted``); Spearman and mean absolute error of the mean over keys."""
    folds = sorted({t["fold"] for t in table})
    predicted: list[float | None] = [None] * len(rows)
    for k in folds:
        train = [r for r, t in zip(rows, table) if t["fold"] != k]
        if len(train) < 3:
            continue
        model = fit_quality(train, keys, volumes)
        for i, (r, t) in enumerate(zip(rows, table)):
            if t["fold"] == k:
                scores = model.predict(r.measures, r.ood)
                t["predicted_cross_fitted"] = scores
                predicted[i] = float(np.mean(list(scores.values())))
    pairs = [(p, float(np.mean(list(r.dice.values())))) for p, r in zip(predicted, rows) if p is not None]
    if len(pairs) < 3:
        return {}
    pred, true = np.array(pairs).T
    rho = float(stats.spearmanr(pred, true).statistic)
    out = {"mae_mean_cross_fitted": float(np.abs(pred - true).mean())}
    return out | ({"spearman_mean_cross_fitted": rho} if np.isfinite(rho) else {})


def store_quality(run_dir: Path, fold: int, card: ModelCard) -> None:
    """``card`` into every checkpoint of fold ``fold`` (the weights stay as they are)."""
    for name in CHECKPOINT_CHOICES.values():
        if (_fold(run_dir, fold) / name).is_file():
            replace_card(_fold(run_dir, fold) / name, card)


def refit_quality(run_dir: Path, device: torch.device | str = "cpu") -> QualityModel:
    """Fit the quality score again on the calibration rows ``RUN/cv_quality.json`` keeps (what each
    out-of-fold prediction measured and scored) and store it as :func:`finish_cross_validation`
    does, without predicting anything again: for a new form of the fit on an existing run."""
    run_dir = Path(run_dir)
    try:
        stored = json.loads((run_dir / CV_QUALITY).read_text())
        volumes = {str(k): [float(v) for v in vs] for k, vs in stored["reference_volumes_mm3"].items()}
        table = stored["rows"]
        rows = [CalibrationRow(t["case"], *from_measures_record(t), t["dice"]) for t in table]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BrainsegError(
            f"{run_dir / CV_QUALITY}: no calibration rows with reference volumes to refit from ({exc}); "
            f"delete {run_dir / CV_DECISION} and run the cross-validation's train command again"
        ) from None
    keys = list(rows[0].dice)
    quality = fit_quality(rows, keys, volumes)
    quality = QualityModel(
        quality.keys, quality.calibrations, quality.n_cases, quality.fit | cross_fitted(table, rows, keys, volumes)
    )
    folds = sorted(int(p.name.removeprefix(FOLD_PREFIX)) for p in run_dir.glob(f"{FOLD_PREFIX}*") if p.is_dir())
    for k in folds:
        store_quality(run_dir, k, replace(load_model(_fold(run_dir, k), device)[1], quality=quality))
    atomic_write_text(run_dir / CV_QUALITY, json.dumps(stored | {"fit": quality.fit, "rows": table}, indent=1) + "\n")
    decision = json.loads((run_dir / CV_DECISION).read_text())
    atomic_write_text(run_dir / CV_DECISION, json.dumps(decision | {"quality_fit": quality.fit}, indent=1) + "\n")
    return quality


def validation_decision(card: ModelCard, fold: int) -> dict:
    """What fold ``fold`` chose on its own validation cases: its card's decision, or, when the card
    already holds one chosen on all folds (a calibration run again), the one recorded then."""
    earlier = (card.decision_source or {}).get("validation_decisions")
    if earlier:
        return dict(earlier[fold])
    return {
        "class_offsets": list(card.class_offsets),
        "region_thresholds": list(card.region_thresholds),
        "innermost_min_mm3": card.innermost_min_mm3,
        "postprocess": card.config.get("postprocess"),
    }


def finish_cross_validation(
    run_dir: Path, splits: Sequence[Split], cases: Sequence[Case], device, copies: int = CALIBRATION_COPIES
) -> dict:
    """Choose the decision on all out-of-fold cases, calibrate the quality score, store both in
    every fold's cards (see the module docstring); returns what ``cv_decision.json`` holds."""
    run_dir = Path(run_dir)
    by_id = {c.case_id: c for c in cases}
    cards = [load_model(_fold(run_dir, k), device)[1] for k in range(len(splits))]
    configured = validation_decision(cards[0], 0).get(
        "postprocess"
    )  # the rules as trained (a rerun: not the last choice)
    post = (
        config_from_dict({"postprocess": configured}).postprocess
        if configured
        else inference_config(cards[0], None, ()).postprocess
    )
    log.info(f"choosing the decision on the {len(splits)} folds' out-of-fold cases")
    pool = pooled_cases(run_dir, splits, by_id, device)
    decision = choose_on_pool(pool, cards[0], post)
    del pool
    source = {
        "on": "cross-validation",
        "folds": len(splits),
        "cases": sum(min(len(s["val"]), max(1, MAX_POOLED_CASES // len(splits))) for s in splits),
        "dice_before": decision.dice_before,
        "dice_after": decision.dice_after,
        "steps": decision.steps,
        "validation_decisions": [validation_decision(c, k) for k, c in enumerate(cards)],
    }  # fmt: skip
    log.info(
        "decision chosen on all folds: mean out-of-fold Dice %.4f -> %.4f (%s)",
        decision.dice_before,
        decision.dice_after,
        "; ".join(s["step"] for s in decision.steps) or "the defaults kept",
    )
    decided = [decided_card(c, decision, source) for c in cards]
    log.info(f"calibrating the quality score on the out-of-fold cases, each clean and {copies} degraded")
    table, rows, volumes = calibration_rows(run_dir, splits, by_id, decided, device, copies)
    keys = quality_keys(decided[0])
    quality = fit_quality(rows, keys, volumes)
    quality = QualityModel(
        quality.keys, quality.calibrations, quality.n_cases, quality.fit | cross_fitted(table, rows, keys, volumes)
    )
    log.info(
        "quality score fitted on %d predictions: %s",
        len(rows),
        ", ".join(f"{k} {v:.3f}" for k, v in quality.fit.items()),
    )
    for k, card in enumerate(decided):
        store_quality(run_dir, k, replace(card, quality=quality))
    stored = {"fit": quality.fit, "reference_volumes_mm3": volumes, "rows": table}
    atomic_write_text(run_dir / CV_QUALITY, json.dumps(stored, indent=1) + "\n")
    record = source | {"postprocess": asdict(decision.postprocess), "class_offsets": list(decision.class_offsets),
                       "region_thresholds": list(decision.region_thresholds),
                       "innermost_min_mm3": decision.innermost_min_mm3, "quality_fit": quality.fit}  # fmt: skip
    atomic_write_text(run_dir / CV_DECISION, json.dumps(record, indent=1) + "\n")
    return record
