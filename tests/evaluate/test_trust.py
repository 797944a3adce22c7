"""Measured trust: the predicted Dice of a hand-written ``volumes.csv`` against the true Dice of real masks.

Five cases share one reference (label 1 "A": an 8-voxel cube, label 2 "B": a 4-voxel cube). Each
prediction keeps label B and the first ``m`` of label A's 8 slices, so label A's Dice is
2m / (8 + m) exactly and the true mean Dice of the case is its average with B's 1.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from brainseg.evaluate.per_label import SUMMARY_NAME, evaluate_folders
from brainseg.evaluate.per_region import evaluate_region_folders
from brainseg.evaluate.trust import PLOT_NAME, TRUST_NAME, agreement, risk_curve
from brainseg.io.pictures import risk_coverage_figure
from brainseg.labels.regions import BRATS_2021
from tests.conftest import brainseg, tumour_label, write_labels

SHAPE = (16, 16, 16)
KEPT_SLICES = {"a": 8, "b": 6, "c": 4, "d": 1, "e": 0}
DICE_A = {case: 2 * m / (8 + m) for case, m in KEPT_SLICES.items()}
TRUE_MEAN = {case: (d + 1.0) / 2 for case, d in DICE_A.items()}  # a 1.0, b 0.929, c 0.833, d 0.611, e 0.5
LABELS = {"0": "background", "1": "A", "2": "B"}


def reference() -> np.ndarray:
    ref = np.zeros(SHAPE, np.int16)
    ref[2:10, 2:10, 2:10] = 1
    ref[11:15, 11:15, 11:15] = 2
    return ref


def write_cases(root: Path, record: bool = True) -> None:
    ref = reference()
    for case, m in KEPT_SLICES.items():
        pred = ref.copy()
        pred[:, :, 2 + m : 10][pred[:, :, 2 + m : 10] == 1] = 0
        write_labels(root / "ref" / f"{case}.nii.gz", ref)
        write_labels(root / "pred" / f"{case}.nii.gz", pred)
    if record:
        (root / "pred" / "brainseg_run.json").write_text(json.dumps({"format": 1, "runs": [{"labels": LABELS}]}))


def write_volumes(pred_dir: Path, predicted: Mapping[str, tuple[str, str, str, str]]) -> Path:
    """volumes.csv as predict writes it; ``predicted``: {case: (qc_dice_A, qc_dice_B, qc_dice_mean, qc_flag)}."""
    lines = ["case,A_mm3,B_mm3,background,ood,qc_dice_A,qc_dice_B,qc_dice_mean,qc_flag"]
    lines += [f"{case},100.0000,64.0000,,,{','.join(cells)}" for case, cells in predicted.items()]
    path = pred_dir / "volumes.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def qc_rows(means: Mapping[str, float], threshold: float = 0.7) -> dict[str, tuple[str, str, str, str]]:
    """Rows whose label A prediction is the mean's, label B 1, flagged under ``threshold``."""
    return {c: (f"{m:.4f}", "1.0000", f"{m:.4f}", "1" if m < threshold else "0") for c, m in means.items()}


def hand_aurc(losses_in_order: list[float]) -> float:
    """The mean over k of the mean of the first k losses."""
    return sum(sum(losses_in_order[:k]) / k for k in range(1, len(losses_in_order) + 1)) / len(losses_in_order)


def is_png(path: Path) -> bool:
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and int.from_bytes(data[16:20], "big") > 0


PERFECT = {"a": 0.95, "b": 0.90, "c": 0.80, "d": 0.65, "e": 0.55}  # the true order
REVERSED = {"a": 0.55, "b": 0.65, "c": 0.80, "d": 0.90, "e": 0.95}


def test_a_perfect_ranking_has_spearman_1_and_the_ideal_aurc(tmp_path: Path):
    write_cases(tmp_path)
    write_volumes(tmp_path / "pred", qc_rows(PERFECT))

    summary = evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", progress=False)

    trust = json.loads((tmp_path / "out" / TRUST_NAME).read_text())
    mean = trust["mean"]
    assert mean["n"] == 5
    assert mean["spearman"] == 1.0
    assert mean["mae"] == pytest.approx(np.mean([abs(PERFECT[c] - TRUE_MEAN[c]) for c in PERFECT]), abs=1e-12)
    losses_best_first = [1 - TRUE_MEAN[c] for c in "abcde"]
    assert mean["aurc"] == mean["ideal_aurc"] == pytest.approx(hand_aurc(losses_best_first), abs=1e-12)
    assert mean["random_aurc"] == pytest.approx(np.mean(losses_best_first), abs=1e-12)
    assert mean["excess_aurc"] == 0.0 and mean["relative_excess"] == 0.0
    # label A ranks like the mean; label B's true Dice is 1 for every case: no rank correlation
    assert trust["per_key"]["A"]["spearman"] == 1.0 and trust["per_key"]["A"]["scored_as"] == "1"
    assert trust["per_key"]["A"]["mae"] == pytest.approx(np.mean([abs(PERFECT[c] - DICE_A[c]) for c in PERFECT]))
    assert trust["per_key"]["B"]["spearman"] is None and trust["per_key"]["B"]["mae"] == 0.0
    assert trust["n_flagged"] == 2 and trust["misses"] == [] and trust["false_alarms"] == []
    assert trust["flagged_true_mean"] == pytest.approx((TRUE_MEAN["d"] + TRUE_MEAN["e"]) / 2)
    assert trust["unflagged_true_mean"] == pytest.approx(np.mean([TRUE_MEAN[c] for c in "abc"]))
    assert [r["case"] for r in trust["cases"]] == ["e", "d", "c", "b", "a"]  # least trusted first
    assert trust["cases"][0] == {"case": "e", "predicted": 0.55, "true": pytest.approx(0.5), "flagged": True}
    assert trust["curve"]["coverage"] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert trust["curve"]["risk"] == trust["curve"]["ideal_risk"]
    assert summary["trust"]["mean"] == mean and summary["trust"]["file"] == TRUST_NAME
    assert "cases" not in summary["trust"]
    on_disk = json.loads((tmp_path / "out" / SUMMARY_NAME).read_text())
    assert on_disk["trust"]["mean"]["spearman"] == 1.0
    assert is_png(tmp_path / "out" / PLOT_NAME)


def test_a_reversed_ranking_has_spearman_minus_1_a_larger_aurc_misses_and_false_alarms(tmp_path: Path):
    write_cases(tmp_path)
    write_volumes(tmp_path / "pred", qc_rows(REVERSED))

    trust = evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", progress=False)["trust"]

    mean = trust["mean"]
    assert mean["spearman"] == -1.0
    assert mean["aurc"] == pytest.approx(hand_aurc([1 - TRUE_MEAN[c] for c in "edcba"]), abs=1e-12)
    assert mean["aurc"] > mean["random_aurc"] > mean["ideal_aurc"]
    assert mean["relative_excess"] > 1.0  # worse than a random order
    assert trust["n_flagged"] == 2
    assert trust["false_alarms"] == ["a", "b"]  # flagged, true mean Dice 1.0 and 0.93
    assert trust["misses"] == ["d", "e"]  # not flagged, true mean Dice 0.61 and 0.5 (least trusted first)


def test_equal_predictions_score_like_a_random_order_and_few_cases_have_no_spearman():
    true = [1.0, 0.5, 0.0]
    flat = agreement([0.6, 0.6, 0.6], true)
    assert flat.spearman is None
    assert flat.aurc == pytest.approx(flat.random_aurc) and flat.random_aurc == pytest.approx(0.5)
    assert flat.relative_excess == pytest.approx(1.0)
    assert agreement([0.9, 0.1], [1.0, 0.0]).spearman is None  # fewer than 3 cases
    # the two cases tied at 0.9 (losses 0 and 1) count 0.5 each, whichever comes first
    assert list(risk_curve([0.9, 0.9, 0.1], [1.0, 0.0, 0.5])) == pytest.approx([0.5, 0.5, 0.5])


def test_a_flag_threshold_the_flags_do_not_follow_is_reported_and_used_for_misses(tmp_path: Path, caplog):
    write_cases(tmp_path)
    write_volumes(tmp_path / "pred", qc_rows(PERFECT))  # flags follow 0.7

    with caplog.at_level(logging.WARNING, logger="brainseg"):
        trust = evaluate_folders(
            tmp_path / "pred", tmp_path / "ref", tmp_path / "out", progress=False, qc_threshold=0.55
        )["trust"]

    assert trust["threshold"] == 0.55
    assert trust["false_alarms"] == ["d"]  # flagged, true mean Dice 0.61 >= 0.55
    assert trust["misses"] == []  # e: flagged (true mean Dice 0.5)
    (line,) = [r.getMessage() for r in caplog.records if "qc_flag" in r.getMessage()]
    assert "volumes.csv" in line and "--qc-threshold 0.55" in line and "(0.6500, 0.8000]" in line


def test_without_the_labels_mapping_only_the_mean_is_measured(tmp_path: Path, caplog):
    write_cases(tmp_path, record=False)
    write_volumes(tmp_path / "pred", qc_rows(PERFECT))

    with caplog.at_level(logging.WARNING, logger="brainseg"):
        trust = evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", progress=False)["trust"]

    assert trust["per_key"] == {} and trust["mean"]["spearman"] == 1.0
    (line,) = [r.getMessage() for r in caplog.records]
    assert "qc_dice_A, qc_dice_B" in line and "brainseg_run.json" in line and "mean only" in line
    assert trust["per_key_note"] in line


def test_without_qc_columns_the_evaluation_is_unchanged(tmp_path: Path):
    write_cases(tmp_path)
    (tmp_path / "pred" / "volumes.csv").write_text("case,A_mm3,B_mm3\na,1.0,2.0\n")

    summary = evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", progress=False)

    assert "trust" not in summary
    assert not (tmp_path / "out" / TRUST_NAME).exists() and not (tmp_path / "out" / PLOT_NAME).exists()


def test_regions_match_their_qc_columns_by_name(tmp_path: Path):
    ref = tumour_label(SHAPE, (8, 8, 8), (6, 4, 2))  # oedema 2 around necrosis 1 around enhancing 4
    preds = {"same": ref, "no_et": np.where(ref == 4, 1, ref), "empty": np.zeros_like(ref)}
    for case, pred in preds.items():
        write_labels(tmp_path / "ref" / f"{case}.nii.gz", ref)
        write_labels(tmp_path / "pred" / f"{case}.nii.gz", pred)
    predicted = {"same": (0.9, 0.8, 0.7), "no_et": (0.85, 0.8, 0.3), "empty": (0.2, 0.1, 0.1)}
    lines = ["case,background,ood,qc_dice_WT,qc_dice_TC,qc_dice_ET,qc_dice_mean,qc_flag"]
    for case, (wt, tc, et) in predicted.items():
        mean = (wt + tc + et) / 3
        lines.append(f"{case},,,{wt},{tc},{et},{mean:.4f},{int(mean < 0.7)}")
    (tmp_path / "pred" / "volumes.csv").write_text("\n".join(lines) + "\n")

    trust = evaluate_region_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", BRATS_2021, progress=False)[
        "trust"
    ]

    assert list(trust["per_key"]) == ["WT", "TC", "ET"]
    et = trust["per_key"]["ET"]
    assert et["n"] == 3 and et["mae"] == pytest.approx((0.3 + 0.3 + 0.1) / 3)
    # true ET Dice 1, 0, 0: ranks 3, 1.5, 1.5 (ties averaged) against the predicted ranks 3, 2, 1
    assert et["spearman"] == pytest.approx(np.corrcoef([3, 2, 1], [3, 1.5, 1.5])[0, 1])
    assert trust["mean"]["spearman"] == 1.0 and trust["misses"] == [] and trust["false_alarms"] == []
    cases = json.loads((tmp_path / "out" / TRUST_NAME).read_text())["cases"]
    assert [r["case"] for r in cases] == ["empty", "no_et", "same"]
    assert [r["true"] for r in cases] == pytest.approx([0.0, 2 / 3, 1.0])


def test_a_malformed_volumes_csv_costs_only_the_trust_report(tmp_path: Path):
    write_cases(tmp_path)
    rows = qc_rows(PERFECT)
    rows["c"] = ("0.8000", "1.0000", "abc", "0")
    volumes = write_volumes(tmp_path / "pred", rows)

    res = brainseg(
        "evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--out", str(tmp_path / "out")
    )

    assert res.returncode == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if line.startswith("brainseg: warning:")]
    assert warnings == [
        f"brainseg: warning: {volumes}: row 4 (case 'c'): qc_dice_mean 'abc' is not a number from 0 to 1; "
        "no trust report"
    ]
    assert (tmp_path / "out" / "metrics.csv").is_file()
    assert "trust" not in json.loads((tmp_path / "out" / SUMMARY_NAME).read_text())
    assert not (tmp_path / "out" / TRUST_NAME).exists() and "trust:" not in res.stdout


def test_brainseg_evaluate_prints_the_trust_table_and_writes_trust_json(tmp_path: Path):
    write_cases(tmp_path)
    write_volumes(tmp_path / "pred", qc_rows(REVERSED))
    out = tmp_path / "out"

    res = brainseg("evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--out", str(out))

    assert res.returncode == 0, res.stderr
    assert "brainseg: warning" not in res.stderr
    trust = json.loads((out / TRUST_NAME).read_text())
    assert trust["mean"]["spearman"] == -1.0 and trust["source"] == str(tmp_path / "pred" / "volumes.csv")
    lines = res.stdout.splitlines()
    at = lines.index(f"trust: predicted vs true Dice over 5 case(s) ({tmp_path / 'pred' / 'volumes.csv'})")
    assert lines[at + 1].split() == ["key", "Spearman", "MAE", "AURC", "ideal", "random"]
    m = trust["mean"]
    assert lines[at + 2].split() == ["mean", "-1.0000"] + [
        f"{m[k]:.4f}" for k in ("mae", "aurc", "ideal_aurc", "random_aurc")
    ]
    assert [line.split()[0] for line in lines[at + 3 : at + 5]] == ["A", "B"]
    assert "  misses (not flagged, true mean Dice < 0.7): d, e" in lines
    assert "  false alarms (flagged, true mean Dice >= 0.7): a, b" in lines
    assert any(line.startswith("  flagged 2 of 5 (true mean Dice: flagged 0.9643") for line in lines)
    assert f"wrote {out / TRUST_NAME}" in lines and f"wrote {out / PLOT_NAME}" in lines
    assert is_png(out / PLOT_NAME)


def test_the_risk_coverage_plot_draws_each_curve_and_the_random_level():
    fig = risk_coverage_figure([0.5, 1.0], {"predicted": [0.2, 0.3], "ideal": [0.0, 0.3]}, 0.3, "t")
    (ax,) = fig.axes
    lines = {line.get_gid(): list(line.get_ydata()) for line in ax.lines if line.get_gid()}
    assert lines["curve:predicted"] == [0.2, 0.3] and lines["curve:ideal"] == [0.0, 0.3]
    assert list(lines["random"]) == [0.3, 0.3]
