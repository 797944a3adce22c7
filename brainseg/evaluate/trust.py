"""Measured trust: how well the predicted Dice in ``volumes.csv`` ranks and matches the true Dice.

``brainseg predict`` with a calibrated model writes, beside its masks, ``volumes.csv`` with a
predicted Dice per case and label or region (``qc_dice_<key>``), their mean (``qc_dice_mean``) and
a flag (``qc_flag``, 1 when the predicted mean is under the run's threshold). When ``brainseg
evaluate`` scores such a folder it also measures that prediction against the Dice it has just
computed, so a user learns on their own data whether sorting by the predicted Dice finds the bad
masks: the rank correlation, the mean absolute error, the risk-coverage curve and its area (the
measure failure-detection benchmarks in medical segmentation ask for rather than a correlation
alone), and which flags were false alarms and which bad cases went unflagged.

``O/trust.json`` holds the numbers (see :data:`CONVENTIONS`), ``O/risk_coverage.png`` the curve;
the summary.json of the evaluation gets the same numbers under ``"trust"``, without the cases.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from brainseg.errors import InputError
from brainseg.evaluate.qc_columns import QC_FLAG, VOLUMES_NAME, QcTable, label_names_of_run, match_keys, read_qc_table
from brainseg.io.atomic import atomic_write_text
from brainseg.io.pictures import risk_coverage_png

log = logging.getLogger(__name__)

TRUST_NAME = "trust.json"
PLOT_NAME = "risk_coverage.png"
DEFAULT_QC_THRESHOLD = 0.7
MIN_CASES_FOR_SPEARMAN = 3
SPEARMAN_DECIMALS = 12  # so that a perfect (reversed) ranking reads 1 (-1), not 1 - 1e-16

CONVENTIONS = (
    "predicted: volumes.csv's qc_dice_<key> and qc_dice_mean; true: this evaluation's Dice, the mean "
    "over the labels or regions it scored for the case; cases pair by case id, and a scored case "
    "without a predicted Dice is left out (left_out). spearman: Spearman's rank correlation "
    "(scipy.stats.spearmanr, ties get average ranks; rounded to 12 decimals); null with fewer than 3 cases or when the "
    "predicted or the true Dice is the same for every case. mae: mean of |predicted - true|. "
    "risk-coverage: cases sorted by predicted Dice, highest (most trusted) first; the risk at "
    "coverage k/n is the mean of (1 - true Dice) over the k most trusted cases, where cases with "
    "equal predicted Dice count with their group's mean (the expectation over their orders); aurc is "
    "the mean risk over k = 1..n; ideal_aurc the same with the cases sorted by their true Dice; "
    "random_aurc the expectation for a random order (= the mean of 1 - true Dice); excess_aurc = "
    "aurc - ideal_aurc; relative_excess = excess_aurc / (random_aurc - ideal_aurc): 0 for the ideal "
    "order, 1 for no better than random (null when the two are equal). flagged: qc_flag = 1; a false "
    "alarm is a flagged case whose true mean Dice is >= threshold, a miss an unflagged case whose true "
    "mean Dice is < threshold. cases are listed least trusted first (ties by case id); null = no value."
)


@dataclass(frozen=True)
class Agreement:
    """How the predicted Dice of ``n`` cases agrees with their true Dice (see :data:`CONVENTIONS`)."""

    n: int
    spearman: float | None
    mae: float
    aurc: float
    ideal_aurc: float
    random_aurc: float
    excess_aurc: float
    relative_excess: float | None


@dataclass(frozen=True)
class CaseTrust:
    case: str
    predicted: float
    true: float
    flagged: bool


@dataclass(frozen=True)
class TrustReport:
    """Predicted against true Dice for the mean and each qc key (``scored_as``: the label value, as
    text, or the region the key was scored as), the flags against the threshold, and the
    risk-coverage curves of the mean (``coverage``, ``risk``, ``ideal_risk``)."""

    source: str
    threshold: float
    mean: Agreement
    per_key: dict[str, Agreement]
    scored_as: dict[str, str]
    per_key_note: str | None
    n_flagged: int
    flagged_true_mean: float | None
    unflagged_true_mean: float | None
    false_alarms: tuple[str, ...]
    misses: tuple[str, ...]
    left_out: tuple[str, ...]
    cases: tuple[CaseTrust, ...]
    coverage: tuple[float, ...]
    risk: tuple[float, ...]
    ideal_risk: tuple[float, ...]

    def to_dict(self, full: bool = True) -> dict:
        """Strict-JSON content of trust.json; ``full=False`` leaves out the cases and the curves."""
        out = {
            "source": self.source,
            "threshold": self.threshold,
            "n_cases": self.mean.n,
            "mean": asdict(self.mean),
            "per_key": {k: {"scored_as": self.scored_as[k], **asdict(v)} for k, v in self.per_key.items()},
            "per_key_note": self.per_key_note,
            "n_flagged": self.n_flagged,
            "flagged_true_mean": self.flagged_true_mean,
            "unflagged_true_mean": self.unflagged_true_mean,
            "false_alarms": list(self.false_alarms),
            "misses": list(self.misses),
            "left_out": list(self.left_out),
            "conventions": CONVENTIONS,
        }
        if full:
            out["cases"] = [asdict(c) for c in self.cases]
            out["curve"] = {
                "coverage": list(self.coverage),
                "risk": list(self.risk),
                "ideal_risk": list(self.ideal_risk),
            }
        return out


# ----------------------------------------------------------------------------- measuring


def risk_curve(scores: Sequence[float] | np.ndarray, true_dice: Sequence[float] | np.ndarray) -> np.ndarray:
    """Risk at coverage k/n, k = 1..n: the mean of (1 - true Dice) over the k cases of highest
    ``scores``; cases with equal scores contribute their group's mean loss (the expected risk
    over all orders among them)."""
    score = np.asarray(scores, dtype=np.float64)
    loss = 1.0 - np.asarray(true_dice, dtype=np.float64)
    order = np.argsort(-score, kind="stable")
    score, loss = score[order], loss[order]
    expected = np.empty_like(loss)
    start = 0
    while start < len(loss):
        stop = start + 1
        while stop < len(loss) and score[stop] == score[start]:
            stop += 1
        group = loss[start:stop]
        expected[start:stop] = group.mean() if np.ptp(group) > 0 else group
        start = stop
    return np.cumsum(expected) / np.arange(1, len(loss) + 1)


def agreement(predicted: Sequence[float] | np.ndarray, true_dice: Sequence[float] | np.ndarray) -> Agreement:
    """Spearman, MAE and the risk-coverage areas of paired predicted and true Dice (at least one case)."""
    pred = np.asarray(predicted, dtype=np.float64)
    true = np.asarray(true_dice, dtype=np.float64)
    if pred.shape != true.shape or pred.size == 0:
        raise ValueError("agreement needs as many predicted as true values, at least one")
    rho: float | None = None
    if pred.size >= MIN_CASES_FOR_SPEARMAN and np.ptp(pred) > 0 and np.ptp(true) > 0:
        from scipy.stats import spearmanr  # here: 0.2 s of imports every brainseg command would pay

        rho = round(float(spearmanr(pred, true).statistic), SPEARMAN_DECIMALS)
    aurc = float(risk_curve(pred, true).mean())
    ideal = float(risk_curve(true, true).mean())
    random = float((1.0 - true).mean())
    excess = aurc - ideal
    gap = random - ideal
    return Agreement(
        n=int(pred.size),
        spearman=rho,
        mae=float(np.abs(pred - true).mean()),
        aurc=aurc,
        ideal_aurc=ideal,
        random_aurc=random,
        excess_aurc=excess,
        relative_excess=float(excess / gap) if gap > 0 else None,
    )


def _mean_or_none(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def measure_trust(
    qc: QcTable,
    dice: Mapping[str, Mapping[str, float]],
    keys: Mapping[str, str],
    threshold: float,
    per_key_note: str | None = None,
) -> TrustReport | None:
    """The trust report of the cases both ``qc`` and ``dice`` ({case: {scored name: Dice}}) hold;
    ``keys`` maps qc keys to scored names (:func:`match_keys`). None when no case is in both."""
    scored = sorted(c for c, d in dice.items() if d)
    cases = [c for c in scored if c in qc.predicted]
    if not cases:
        return None
    true_mean = {c: float(np.mean(list(dice[c].values()))) for c in cases}
    pred_mean = [qc.predicted[c]["mean"] for c in cases]
    mean = agreement(pred_mean, [true_mean[c] for c in cases])
    per_key: dict[str, Agreement] = {}
    for key, name in keys.items():
        have = [c for c in cases if key in qc.predicted[c] and name in dice[c]]
        if have:
            per_key[key] = agreement([qc.predicted[c][key] for c in have], [dice[c][name] for c in have])
    rows = sorted(
        (CaseTrust(c, qc.predicted[c]["mean"], true_mean[c], qc.flagged[c]) for c in cases),
        key=lambda r: (r.predicted, r.case),
    )
    coverage = np.arange(1, len(cases) + 1) / len(cases)
    return TrustReport(
        source=str(qc.path),
        threshold=float(threshold),
        mean=mean,
        per_key=per_key,
        scored_as={k: keys[k] for k in per_key},
        per_key_note=per_key_note,
        n_flagged=sum(r.flagged for r in rows),
        flagged_true_mean=_mean_or_none([r.true for r in rows if r.flagged]),
        unflagged_true_mean=_mean_or_none([r.true for r in rows if not r.flagged]),
        false_alarms=tuple(r.case for r in rows if r.flagged and r.true >= threshold),
        misses=tuple(r.case for r in rows if not r.flagged and r.true < threshold),
        left_out=tuple(c for c in scored if c not in qc.predicted),
        cases=tuple(rows),
        coverage=tuple(float(v) for v in coverage),
        risk=tuple(float(v) for v in risk_curve(pred_mean, [true_mean[c] for c in cases])),
        ideal_risk=tuple(float(v) for v in risk_curve([true_mean[c] for c in cases], [true_mean[c] for c in cases])),
    )


def _check_flags(qc: QcTable, threshold: float) -> None:
    """A warning when the flags in ``qc`` do not follow ``threshold`` (another was used at prediction)."""
    odd = [c for c, v in qc.predicted.items() if qc.flagged[c] != (v["mean"] < threshold)]
    if not odd:
        return
    below = [v["mean"] for c, v in qc.predicted.items() if qc.flagged[c]]
    above = [v["mean"] for c, v in qc.predicted.items() if not qc.flagged[c]]
    fit = f" (they fit a threshold in ({max(below, default=0.0):.4f}, {min(above, default=1.0):.4f}])"
    log.warning(
        f"{qc.path}: {QC_FLAG} of {len(odd)} case(s) does not follow --qc-threshold {threshold:g}{fit}; "
        f"misses and false alarms are counted with {threshold:g} and the flags as written"
    )


# ----------------------------------------------------------------------------- the evaluation's step


def add_trust(
    summary: dict,
    pred_dir: str | Path,
    out_dir: str | Path,
    dice: Mapping[str, Mapping[str, float]],
    names: Sequence[str],
    by_value: bool,
    threshold: float = DEFAULT_QC_THRESHOLD,
) -> dict:
    """``summary`` with a ``"trust"`` entry, after writing ``out_dir/trust.json`` and
    ``risk_coverage.png``, when ``pred_dir/volumes.csv`` holds predicted Dice for a scored case;
    else ``summary`` unchanged. ``dice``: {case: {scored name: Dice}}, ``names`` the scored
    names (label values as text when ``by_value``, else region names). A volumes.csv that cannot
    be read costs the trust report only: one warning naming the file."""
    path = Path(pred_dir) / VOLUMES_NAME
    if not path.is_file():
        return summary
    try:
        qc = read_qc_table(path)
    except InputError as exc:
        log.warning(f"{exc}; no trust report")
        return summary
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        log.warning(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc}); no trust report")
        return summary
    if qc is None:
        return summary
    keys, note = match_keys(qc.keys, list(names), label_names_of_run(pred_dir) if by_value else None, by_value)
    if note:
        log.warning(f"{path}: {note}")
    report = measure_trust(qc, dice, keys, threshold, note)
    if report is None:
        log.warning(f"{path}: no scored case has a predicted Dice; no trust report")
        return summary
    _check_flags(qc, threshold)
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / TRUST_NAME, json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n")
    risk_coverage_png(
        out_dir / PLOT_NAME,
        report.coverage,
        {
            f"sorted by predicted Dice (AURC {report.mean.aurc:.3f})": report.risk,
            f"ideal: sorted by true Dice (AURC {report.mean.ideal_aurc:.3f})": report.ideal_risk,
        },
        report.mean.random_aurc,
        f"Risk-coverage of the mean Dice ({report.mean.n} cases)",
    )
    entry = report.to_dict(full=False) | {"file": TRUST_NAME, "plot": PLOT_NAME}
    return {**summary, "trust": entry}


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_trust(entry: Mapping) -> str:
    """The summary's ``"trust"`` entry as a short table and the flag lines."""
    rows = [("mean", entry["mean"])] + list(entry["per_key"].items())
    width = max(len("key"), *(len(k) for k, _ in rows))
    lines = [
        f"trust: predicted vs true Dice over {entry['n_cases']} case(s) ({entry['source']})",
        f"  {'key':>{width}}  {'Spearman':>8}  {'MAE':>6}  {'AURC':>6}  {'ideal':>6}  {'random':>6}",
    ]
    for key, a in rows:
        lines.append(
            f"  {key:>{width}}  {_cell(a['spearman']):>8}  {_cell(a['mae']):>6}  {_cell(a['aurc']):>6}  "
            f"{_cell(a['ideal_aurc']):>6}  {_cell(a['random_aurc']):>6}"
        )
    t = entry["threshold"]
    lines.append(
        f"  flagged {entry['n_flagged']} of {entry['n_cases']} (true mean Dice: flagged "
        f"{_cell(entry['flagged_true_mean'])}, not flagged {_cell(entry['unflagged_true_mean'])}; threshold {t:g})"
    )
    lines.append(f"  misses (not flagged, true mean Dice < {t:g}): {', '.join(entry['misses']) or 'none'}")
    lines.append(f"  false alarms (flagged, true mean Dice >= {t:g}): {', '.join(entry['false_alarms']) or 'none'}")
    if entry["left_out"]:
        lines.append(f"  left out (no predicted Dice): {', '.join(entry['left_out'])}")
    return "\n".join(lines)
