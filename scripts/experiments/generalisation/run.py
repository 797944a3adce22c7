"""Generalisation check: trained on the demo data, scored on the demo's own held-out subjects
and on shifted scans the demo never shows, brainseg beside a MONAI reference.

    python -m scripts.experiments.generalisation --out gen/                  # 10 demo subjects, 10-min trainings, 6 scans
    python -m scripts.experiments.generalisation --out gen/ --quick          # 1-min trainings, 4 subjects, 3 scans
    python -m scripts.experiments.generalisation --out gen/ --model runs/x   # score a trained brainseg run (MONAI still trains)

Steps (each a subprocess, so every pipeline runs as a user would run it):

1. demo training data: ``brainseg demo-data OUT/demo --n 10`` (or ``--data DIR``), kept when present;
2. the shifted set ``OUT/shifted`` (images/, labels/, manifest.json) from this experiment's own
   generator, :mod:`~scripts.experiments.generalisation.shifted`: Rician noise over the whole field of view,
   its own warp, bias, gamma, intensity scale and offset, grids from 1 mm RAS to a 12-degree
   oblique one (one case in six skull-stripped); settings outside the demo's ranges;
3. ``brainseg train --data OUT/demo --out OUT/brainseg_run --config configs/demo.yaml
   --max-minutes M`` (or ``--model``), then ``brainseg predict`` and ``brainseg evaluate``
   on the demo's imagesTs/labelsTs and on the shifted set;
4. the MONAI-tutorial reference (:mod:`~scripts.experiments.generalisation.monai_reference`), trained on the same
   demo data for the same minutes, segmenting the same scans, scored by ``brainseg evaluate``;
5. OUT/report.json (and ``--json PATH``), OUT/report.md: Dice per label per set per pipeline,
   each shifted case's Dice with its settings, training steps, whether every mask has
   its scan's exact shape and affine, and how many voxels the two pipelines' masks share.
   The exit status is 1 when some mask is not on its scan's grid.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scripts.common import (
    REPO,
    CommandFailed,
    brainseg_cmd,
    fresh,
    git_state,
    load1,
    logger,
    machine_info,
    python_module,
)
from scripts.common import run as run_command
from scripts.experiments.generalisation import report as report_mod
from scripts.experiments.generalisation.shifted import DEFAULT_SEED, make_shifted_set

FULL = dict(minutes=10.0, n_demo=10, n_shifted=6)
QUICK = dict(minutes=1.0, n_demo=4, n_shifted=3)
CONFIG = REPO / "configs" / "demo.yaml"
PROG = "python -m scripts.experiments.generalisation"
MONAI_REFERENCE = "scripts.experiments.generalisation.monai_reference"
log = logger("generalisation")


def run(cmd: Sequence[Any], log_file: Path) -> None:
    """Run ``cmd`` (from the repo root), its output into ``log_file``; stop with its last lines on failure."""
    log(" ".join(str(c) for c in cmd))
    try:
        run_command(cmd, log_file)
    except CommandFailed as exc:
        raise SystemExit(f"generalisation: {exc}") from None


def ensure_demo(out: Path, given: Path | None, n: int) -> Path:
    if given is not None:
        if not (given / "dataset.json").is_file():
            raise SystemExit(f"generalisation: --data {given}: no dataset.json (make one with brainseg demo-data)")
        return given
    demo = out / "demo"
    try:
        meta = json.loads((demo / "dataset.json").read_text())
        if meta["numTraining"] + meta["numTest"] == n:
            log(f"demo data: reusing {demo} ({n} subjects)")
            return demo
    except (OSError, ValueError, KeyError, TypeError):
        pass
    run(brainseg_cmd("demo-data", demo, "--n", n, "--seed", 0), out / "logs" / "demo_data.log")
    return demo


def brainseg_training(run_dir: Path) -> dict[str, Any]:
    """Steps and minutes from a brainseg run folder's metrics.csv; the note names the config (a run
    trained without one has its plan.yaml)."""
    import csv

    folder = run_dir if run_dir.is_dir() else run_dir.parent
    try:
        with open(folder / "metrics.csv", newline="") as fh:
            last = list(csv.DictReader(fh))[-1]
    except (OSError, IndexError):
        return {"run": str(run_dir), "steps": None, "note": f"{run_dir} (no metrics.csv: steps unknown)"}
    steps, minutes = int(last["step"]), float(last["elapsed_minutes"])
    source = "no config (its plan.yaml)" if (folder / "plan.yaml").is_file() else "configs/demo.yaml"
    return {
        "run": str(run_dir),
        "steps": steps,
        "minutes": minutes,
        "note": f"{source}, {steps} steps in {minutes:.1f} min ({run_dir})",
    }


def score(pipeline: str, sets: dict[str, tuple[Path, Path]], masks: Path, out: Path) -> dict[str, Any]:
    """``brainseg evaluate`` of each set's masks, the scores read back and the masks' geometry checked."""
    results = {}
    for key, (images, labels) in sets.items():
        eval_dir = fresh(out / "evaluation" / pipeline / key)
        run(
            brainseg_cmd("evaluate", "--pred", masks / key, "--ref", labels, "--out", eval_dir, "--labels", "1,2,3"),
            out / "logs" / f"evaluate_{pipeline}_{key}.log",
        )
        results[key] = report_mod.read_scores(eval_dir)
        results[key]["geometry"] = report_mod.mask_geometry(images, masks / key)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="working folder: data, runs, masks, report")
    p.add_argument(
        "--minutes", type=float, default=None, help="training budget of each pipeline (default 10; 1 with --quick)"
    )
    p.add_argument("--quick", action="store_true", help="1-minute trainings, 4 demo subjects, 3 shifted scans")
    p.add_argument(
        "--data", type=Path, default=None, help="demo data set to train on (default: OUT/demo, made if absent)"
    )
    p.add_argument("--model", type=Path, default=None, help="score this brainseg run folder instead of training one")
    p.add_argument(
        "--monai-model", type=Path, default=None, help="reuse a MONAI reference run folder (model.pt, train.json)"
    )
    p.add_argument("--skip-monai", action="store_true", help="brainseg only")
    p.add_argument(
        "--no-mirror",
        action="store_true",
        help="brainseg predicts without test-time mirroring (8x faster; a smoke run's setting, not the shipped one)",
    )
    p.add_argument("--n-shifted", type=int, default=None, help="shifted scans (default 6; 3 with --quick)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the shifted scans")
    p.add_argument("--json", type=Path, default=None, help="also write report.json here")
    args = p.parse_args(argv)

    settings = dict(QUICK if args.quick else FULL)
    if args.minutes is not None:
        settings["minutes"] = args.minutes
    if args.n_shifted is not None:
        settings["n_shifted"] = args.n_shifted
    if settings["n_shifted"] < 1 or settings["minutes"] <= 0:
        p.error("--n-shifted must be >= 1 and --minutes > 0")
    started = time.perf_counter()
    load_start = load1()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    demo = ensure_demo(out, args.data.resolve() if args.data else None, settings["n_demo"])
    manifest = make_shifted_set(out / "shifted", settings["n_shifted"], args.seed, log=log)
    lap("data", t0)
    sets = {
        "demo_heldout": (demo / "imagesTs", demo / "labelsTs"),
        "shifted": (out / "shifted" / "images", out / "shifted" / "labels"),
    }

    t0 = time.perf_counter()
    model = args.model.resolve() if args.model else out / "brainseg_run"
    if args.model is None:
        fresh(model)
        run(
            brainseg_cmd(
                "train",
                "--data",
                demo,
                "--out",
                model,
                "--config",
                CONFIG,
                "--max-minutes",
                settings["minutes"],
                "--no-progress",
            ),
            out / "logs" / "brainseg_train.log",
        )
    lap("brainseg_train", t0)
    t0 = time.perf_counter()
    masks_b = out / "masks" / "brainseg"
    for key, (images, _) in sets.items():
        no_mirror = ["--set", "infer.mirror=false"] if args.no_mirror else []
        run(
            brainseg_cmd(
                "predict",
                "--model",
                model,
                "--input",
                images,
                "--output",
                fresh(masks_b / key),
                "--no-progress",
                *no_mirror,
            ),
            out / "logs" / f"predict_brainseg_{key}.log",
        )
    lap("brainseg_predict", t0)
    results = {"brainseg": score("brainseg", sets, masks_b, out)}
    training: dict[str, Any] = {"brainseg": brainseg_training(model)}

    agree = {}
    if not args.skip_monai:
        t0 = time.perf_counter()
        monai_run = args.monai_model.resolve() if args.monai_model else out / "monai_run"
        if args.monai_model is None:
            run(
                python_module(
                    MONAI_REFERENCE,
                    "train",
                    "--data",
                    demo,
                    "--out",
                    fresh(monai_run),
                    "--minutes",
                    settings["minutes"],
                ),
                out / "logs" / "monai_train.log",
            )
        lap("monai_train", t0)
        t0 = time.perf_counter()
        masks_m = out / "masks" / "monai"
        jobs = [a for key, (images, _) in sets.items() for a in ("--job", images, fresh(masks_m / key))]
        run(python_module(MONAI_REFERENCE, "predict", "--model", monai_run, *jobs), out / "logs" / "predict_monai.log")
        lap("monai_predict", t0)
        results["monai"] = score("monai", sets, masks_m, out)
        training["monai"] = json.loads((monai_run / "train.json").read_text())
        agree = report_mod.agreement(
            masks_b / "shifted", masks_m / "shifted", [c["case_id"] for c in manifest["cases"]]
        )

    report = {
        "command": " ".join([PROG, *(argv if argv is not None else sys.argv[1:])]),
        "settings": {
            **settings,
            "quick": args.quick,
            "seed": args.seed,
            "demo_data": str(demo),
            "config": str(CONFIG.relative_to(REPO)),
            "mirror": not args.no_mirror,
        },
        "machine": machine_info(),
        "git": git_state(),
        "training": training,
        "results": results,
        "shifted_cases": manifest["cases"],
        "agreement_shifted": agree,
        "timings_s": timings,
        "load_1min": {"start": load_start, "end": load1()},  # the machine may be shared
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    text = report_mod.tables(report)
    for path in [out / "report.json", *([args.json] if args.json else [])]:
        Path(path).write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(
        f"# Generalisation check\n\n`{report['command']}` ({report['total_seconds']:.0f} s; "
        f"{report['machine']['cores_usable']} cores, torch {report['machine']['torch']}, "
        f"MONAI {report['machine']['monai']}, 1-min load {load_start} at the start, {report['load_1min']['end']} "
        f"at the end, commit {(report['git']['commit'] or '?')[:10]}"
        f"{' + uncommitted changes' if report['git']['dirty_files'] else ''})\n\n{text}\n"
    )
    print(text)
    print(f"\n(total {report['total_seconds']:.0f} s; report in {out / 'report.md'} and {out / 'report.json'})")
    off_grid = [f"{k}/{s}" for k, r in results.items() for s, v in r.items() if not v["geometry"]["ok"]]
    if off_grid:
        print(f"generalisation: masks not on their scans' grids: {', '.join(off_grid)}", file=sys.stderr)
        return 1
    return 0
