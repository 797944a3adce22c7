"""The quality columns ``brainseg predict`` writes into ``volumes.csv``, read back for evaluation.

With a calibrated model each row of ``volumes.csv`` holds ``qc_dice_<key>`` (the predicted Dice of
a label, by its name, or of a region), ``qc_dice_mean`` and ``qc_flag`` (1: the predicted mean is
under the run's threshold); the cells are empty for a case without a prediction. A label's name
maps to its value through the ``"labels"`` mapping (``{"<value>": "<name>"}``) of the folder's
``brainseg_run.json``.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from brainseg.errors import InputError

# The names brainseg predict gives its table and its run record in the output folder.
VOLUMES_NAME = "volumes.csv"
RUN_RECORD_NAME = "brainseg_run.json"
QC_PREFIX = "qc_dice_"
QC_MEAN = "qc_dice_mean"
QC_FLAG = "qc_flag"
_UNNAMED_LABEL = re.compile(r"label_(\d+)")


@dataclass(frozen=True)
class QcTable:
    """The quality columns of a ``volumes.csv``: per case the predicted Dice by key (and
    ``"mean"``) and the flag; cases whose cells are empty (no calibration) are absent."""

    path: Path
    keys: tuple[str, ...]
    predicted: dict[str, dict[str, float]]
    flagged: dict[str, bool]


def _number(path: Path, row: int, case: str, column: str, cell: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # also NaN
        raise InputError(path, f"row {row} (case {case!r}): {column} {cell!r} is not a number from 0 to 1")
    return value


def read_qc_table(path: str | Path) -> QcTable | None:
    """The quality columns of ``path`` (a ``volumes.csv``); None when it has no ``qc_dice_mean``
    column or every case's cells are empty. :class:`InputError` naming the file for a cell that is
    not a Dice (a number from 0 to 1), a flag other than 0/1, a missing ``qc_flag`` column or a case
    listed twice."""
    path = Path(path)
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        if QC_MEAN not in header:
            return None
        if "case" not in header:
            raise InputError(path, "has no 'case' column")
        if QC_FLAG not in header:
            raise InputError(path, f"has a {QC_MEAN} column but no {QC_FLAG} column")
        keys = tuple(c[len(QC_PREFIX) :] for c in header if c.startswith(QC_PREFIX) and c != QC_MEAN)
        predicted: dict[str, dict[str, float]] = {}
        flagged: dict[str, bool] = {}
        for row_number, row in enumerate(reader, start=2):
            case = str(row.get("case") or "")
            mean_cell = str(row.get(QC_MEAN) or "").strip()
            if not mean_cell:
                continue  # no calibration for this case
            if case in predicted:
                raise InputError(path, f"row {row_number}: case {case!r} is listed twice")
            values = {"mean": _number(path, row_number, case, QC_MEAN, mean_cell)}
            for key in keys:
                cell = str(row.get(QC_PREFIX + key) or "").strip()
                if cell:
                    values[key] = _number(path, row_number, case, QC_PREFIX + key, cell)
            flag = str(row.get(QC_FLAG) or "").strip()
            if flag not in ("0", "1"):
                raise InputError(path, f"row {row_number} (case {case!r}): {QC_FLAG} {flag!r} is not 0 or 1")
            predicted[case] = values
            flagged[case] = flag == "1"
    if not predicted:
        return None
    return QcTable(path=path, keys=keys, predicted=predicted, flagged=flagged)


def label_names_of_run(pred_dir: str | Path) -> dict[str, str] | None:
    """{label name: label value as text} from the ``"labels"`` mapping of the newest run in the
    prediction folder's ``brainseg_run.json`` (``{"runs": [{..., "labels": ...}]}``; background left
    out); None when the record or the mapping is absent or unreadable."""
    path = Path(pred_dir) / RUN_RECORD_NAME
    try:
        runs = json.loads(path.read_text()).get("runs") or [{}]
        labels = runs[-1].get("labels")
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    if not isinstance(labels, dict):
        return None
    return {
        str(name): str(int(value))
        for value, name in labels.items()
        if str(value).lstrip("-").isdigit() and int(value) != 0
    }


def match_keys(
    keys: Sequence[str], scored: Sequence[str], label_names: Mapping[str, str] | None, by_value: bool
) -> tuple[dict[str, str], str | None]:
    """{qc key: scored name} and a note when the per-key report is left out.

    Regions (``by_value=False``) match by name. Labels (``by_value=True``, scored names are label
    values) map through ``label_names`` (:func:`label_names_of_run`); an unnamed label's key
    ``label_<v>`` is its value. Any key that does not map leaves only the mean (the predicted and
    the scored labels may then not be the same structures); keys of labels this evaluation did not
    score are left out.
    """
    names = dict(label_names or {})
    matched: dict[str, str] = {}
    unmapped: list[str] = []
    for key in keys:
        if not by_value:
            target = key
        elif key in names:
            target = names[key]
        elif (m := _UNNAMED_LABEL.fullmatch(key)) is not None:
            target = str(int(m.group(1)))
        else:
            unmapped.append(key)
            continue
        if target in scored:
            matched[key] = target
    if unmapped:
        where = (
            "the regions scored here"
            if not by_value
            else f'the "labels" of {RUN_RECORD_NAME}'
            if label_names is not None
            else f'{RUN_RECORD_NAME} (no "labels" mapping)'
        )
        cols = ", ".join(QC_PREFIX + k for k in unmapped)
        return {}, f"{cols}: not found in {where}; trust is measured for the mean only"
    return matched, None
