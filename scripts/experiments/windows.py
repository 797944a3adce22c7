"""Where the windows go, post hoc on trained models: window size, overlap and margin against Dice and
time, the same weights and the same prepared cases for every setting.

    python -m scripts.experiments.windows --cases RUN IMAGES LABELS [--cases RUN2 IMAGES2 LABELS2 ...] --out DIR

Each ``--cases`` names a trained run (or checkpoint), a folder of its held-out scans and their
reference labels (``<case>.nii.gz``). Every case is read and preprocessed once; then each setting of
:data:`SETTINGS` (``--settings`` picks some) places its own windows over the same preprocessed image
(``brainseg.infer.sliding_window.SlidingWindow``, set on the predictor for that case only: the
margin as the setting says, on every case, whatever its background) and segments it with the code
``brainseg predict`` runs. The first setting is the baseline; the report gives, per setting, the
windows and seconds against it and the Dice difference per label, over all cases, per background
kind (exact zero / noise) and per ``--cases`` entry, and the worst case: ``DIR/report.json``, ``DIR/report.md``.

It is a comparison on one set of trained weights per model, so no training seeds are needed: what
differs between the arms is only where the windows fall.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainseg.config import Amp
from brainseg.data.inputs import discover_inputs
from brainseg.evaluate.metrics import dice_per_class
from brainseg.infer.loading import load_predictor
from brainseg.infer.sliding_window import SlidingWindow
from brainseg.io.images import read_label
from scripts.common import git_state, load1, logger, machine_info, markdown_table

PROG = "python -m scripts.experiments.windows"
log = logger("windows")

#: name -> (window edge as a multiple of the training patch, overlap, margin in voxels, ``infer.amp``).
#: A margin is in voxels so a larger window reaches as far past the box as the baseline's. A name
#: without a precision runs in float32; "bf16" is what ``infer.amp: bf16`` gives on a CPU with
#: native bf16 (``brainseg.runtime.effective_amp``; elsewhere it runs in float32 too).
SETTINGS: dict[str, tuple[float, float, int, Amp]] = {
    "patch, overlap 1/2, margin 6": (1.0, 0.5, 6, "none"),
    "patch, overlap 1/2, margin 0": (1.0, 0.5, 0, "none"),
    "patch, overlap 1/3, margin 6": (1.0, 1 / 3, 6, "none"),
    "patch, overlap 1/4, margin 6": (1.0, 0.25, 6, "none"),
    "patch, overlap 1/4, margin 0": (1.0, 0.25, 0, "none"),
    "4/3 patch, overlap 1/2, margin 6": (4 / 3, 0.5, 6, "none"),
    "4/3 patch, overlap 1/4, margin 6": (4 / 3, 0.25, 6, "none"),
    "5/3 patch, overlap 1/2, margin 6": (5 / 3, 0.5, 6, "none"),
    "2 patch, overlap 1/2, margin 6": (2.0, 0.5, 6, "none"),
    "patch, overlap 1/2, margin 6, bf16": (1.0, 0.5, 6, "bf16"),
    "patch, overlap 1/2, margin 0, bf16": (1.0, 0.5, 0, "bf16"),
    "patch, overlap 1/3, margin 0, bf16": (1.0, 1 / 3, 0, "bf16"),
    "patch, overlap 1/4, margin 0, bf16": (1.0, 0.25, 0, "bf16"),
}


def window_for(
    patch: Sequence[int], outputs: int, setting: tuple[float, float, int, Amp], sigma: float
) -> SlidingWindow:
    """The setting's window: the patch scaled (rounded to a multiple of 16, the shipped networks' divisor)."""
    scale, overlap, margin, _ = setting
    size = tuple(max(16, int(round(p * scale / 16.0)) * 16) if scale != 1.0 else int(p) for p in patch)
    return SlidingWindow(size, outputs, overlap, sigma, margin / min(size))


def sweep(run: Path, images: Path, labels: Path, names: Sequence[str], entry: str) -> list[dict[str, Any]]:
    """Every case of ``images`` under every setting in ``names``: one row per case and setting."""
    precisions = sorted({SETTINGS[name][3] for name in names})
    predictors = {amp: load_predictor(run, torch.device("cpu"), overrides=[f"infer.amp={amp}"]) for amp in precisions}
    predictor = predictors[precisions[0]]
    card = predictor.card
    values = [v for v in card.label_values if v != 0]
    rows = []
    for case in discover_inputs([images], channel_names=card.channels):
        ref, _ = read_label(labels / f"{case.case_id}.nii.gz")
        prepared = predictor.prepare(list(case.images))
        shape = prepared.image.shape[1:]
        for name in names:
            window = window_for(card.patch_size, predictor.num_classes, SETTINGS[name], predictor.infer.sigma_scale)
            t0 = time.perf_counter()
            seg = predictor_with(predictors[SETTINGS[name][3]], window).segment(prepared)[0]
            seconds = time.perf_counter() - t0
            dice = dice_per_class(seg, ref, values)
            rows.append(
                {
                    "entry": entry,
                    "case": case.case_id,
                    "background": "zero" if prepared.record.zero_background else "noise",
                    "setting": name,
                    "window": list(window.patch),
                    "windows": len(window.locations(shape)),
                    "seconds": round(seconds, 3),
                    "dice": {str(v): round(float(dice[v]), 4) for v in values},
                }
            )
            log(f"{entry} {case.case_id} {name}: {rows[-1]['windows']} windows, {seconds:.2f} s, {rows[-1]['dice']}")
    return rows


def predictor_with(predictor, window: SlidingWindow):
    """A shallow copy of ``predictor`` whose every case takes ``window`` (the caller's predictor unchanged)."""

    def fixed(record, outputs: int | None = None) -> SlidingWindow:
        if outputs in (None, window.num_outputs):
            return window
        return SlidingWindow(window.patch, outputs, window.overlap, window.sigma_scale, window.margin)

    arm = copy.copy(predictor)
    arm.window = fixed
    return arm


def summarise(rows: list[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Per setting against the first: windows and seconds (ratios of the sums), the mean Dice difference
    per label over all cases, per background kind and per entry, and the worst case's mean difference."""
    base = names[0]
    by_key = {(r["entry"], r["case"], r["setting"]): r for r in rows}
    pairs = sorted({(r["entry"], r["case"]) for r in rows})
    out: dict[str, Any] = {}
    for name in names:
        both = [(by_key[m, c, base], by_key[m, c, name]) for m, c in pairs if (m, c, name) in by_key]
        if not both:
            continue
        labels = list(both[0][0]["dice"])

        def delta(group, labels=labels):
            if not group:
                return None
            d = np.array([[b["dice"][k] - a["dice"][k] for k in labels] for a, b in group])
            return {
                "n": len(group),
                **{k: round(float(v), 4) for k, v in zip(labels, d.mean(0))},
                "mean": round(float(d.mean()), 4),
            }

        out[name] = {
            "windows_ratio": round(sum(b["windows"] for _, b in both) / sum(a["windows"] for a, _ in both), 3),
            "seconds_ratio": round(sum(b["seconds"] for _, b in both) / sum(a["seconds"] for a, _ in both), 3),
            "all": delta(both),
            "by_background": {k: delta([p for p in both if p[0]["background"] == k]) for k in ("zero", "noise")},
            "by_entry": {
                e: delta([p for p in both if p[0]["entry"] == e]) for e in sorted({p[0]["entry"] for p in both})
            },
            "worst_case_mean": round(
                min(float(np.mean([b["dice"][k] - a["dice"][k] for k in labels])) for a, b in both), 4
            ),
        }
    return out


def _mean_n(d: dict[str, Any] | None) -> str:
    return "-" if d is None else f"{d['mean']:+.4f} ({d['n']})"


def markdown(summary: dict[str, Any], names: Sequence[str]) -> str:
    rows = []
    for name in names:
        s = summary.get(name)
        if s is None:
            continue
        labels = [k for k in s["all"] if k not in ("n", "mean")]
        rows.append(
            [name, s["windows_ratio"], s["seconds_ratio"], " / ".join(f"{s['all'][k]:+.4f}" for k in labels)]
            + [
                f"**{s['all']['mean']:+.4f}**",
                _mean_n(s["by_background"]["zero"]),
                _mean_n(s["by_background"]["noise"]),
            ]
            + [s["worst_case_mean"], ", ".join(f"{e} {d['mean']:+.4f}" for e, d in s["by_entry"].items())]
        )
    header = ["setting", "windows", "seconds", "Dice difference per label", "mean", "zero background (n)"]
    header += ["noisy background (n)", "worst case", "per --cases entry"]
    return markdown_table(rows, header)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs=3, action="append", required=True, metavar=("RUN", "IMAGES", "LABELS"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--settings",
        nargs="+",
        default=None,
        help=f"names from SETTINGS (default all; the first is the baseline): {list(SETTINGS)}",
    )
    args = p.parse_args(argv)
    names = args.settings or list(SETTINGS)
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        p.error(f"unknown settings {unknown}; known: {list(SETTINGS)}")
    started, load_start = time.perf_counter(), load1()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows: list[dict[str, Any]] = []
    for i, (run, images, labels) in enumerate(args.cases):
        rows += sweep(Path(run), Path(images), Path(labels), names, f"entry {i + 1}")
    summary = summarise(rows, names)
    report = {
        "command": " ".join([PROG, *(argv if argv is not None else sys.argv[1:])]),
        "entries": {f"entry {i + 1}": list(entry) for i, entry in enumerate(args.cases)},
        "settings": {n: SETTINGS[n] for n in names},
        "machine": machine_info(),
        "git": git_state(),
        "summary": summary,
        "rows": rows,
        "load_1min": {"start": load_start, "end": load1()},
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    text = markdown(summary, names)
    (args.out / "report.md").write_text(f"`{report['command']}`\n\n{text}\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
