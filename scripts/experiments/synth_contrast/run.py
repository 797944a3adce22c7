"""Synthetic-contrast check: the default demo model and one trained with ``train.synth``, each for the
same minutes and seeds, scored on the demo's held-out subjects in contrasts and slice thicknesses
the training never saw.

    python -m scripts.experiments.synth_contrast --out sc/                    # 10 demo subjects, 10-min trainings, seeds 0 1
    python -m scripts.experiments.synth_contrast --out sc/ --seeds 0 1 2 --share 0.5
    python -m scripts.experiments.synth_contrast --out sc/ --quick            # 4 subjects, a few seconds each, seed 0
    python -m scripts.experiments.synth_contrast --out f32/ --data sc/demo --arms default --set train.amp=none

Steps (each a subprocess, as a user runs them):

1. demo data: ``brainseg demo-data OUT/demo --n N --seed 0`` (or ``--data DIR``), kept when present;
2. the test family ``OUT/family`` from this experiment's own generator
   (:mod:`~scripts.experiments.synth_contrast.family`): the held-out T1 scans, T2-, PD- and
   FLAIR-like scans drawn from their labels, and T1 / T2-like scans with 4-6 mm slices on a new grid;
3. per seed S and arm: ``brainseg train --data D --out OUT/runs/ARM_sS --config configs/demo.yaml
   --max-minutes M --set train.seed=S`` (the synth arm adds ``--set train.synth=SHARE``, then every
   ``--set`` given here); ``--arms`` trains only those arms; a run folder with a final checkpoint is
   kept with ``--reuse``;
4. ``brainseg predict`` and ``brainseg evaluate --labels 1,2,3`` once per run on all sets pooled
   (``OUT/family_pooled``: links named ``SET__CASE``), the scores split back per set;
5. OUT/report.json (and ``--json PATH``) and OUT/report.md: mean tissue Dice per set per arm,
   each seed and the mean over seeds, and whether the synthetic arm met the issue's bar.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scripts.common import REPO, CommandFailed, brainseg_cmd, fresh, git_state, load1, logger, machine_info
from scripts.common import run as run_command
from scripts.experiments.generalisation.report import read_scores
from scripts.experiments.generalisation.run import brainseg_training
from scripts.experiments.synth_contrast import report as report_mod
from scripts.experiments.synth_contrast.family import DEFAULT_SEED, GENERATOR, SETS, make_family

FULL = dict(minutes=10.0, n_demo=10, seeds=[0, 1])
QUICK = dict(minutes=0.1, n_demo=4, seeds=[0])
CONFIG = REPO / "configs" / "demo.yaml"
PROG = "python -m scripts.experiments.synth_contrast"
ARMS = ("default", "synth")
SEP = "__"  # pooled case names: SET__CASE
log = logger("synth_contrast")


def run(cmd: Sequence[Any], log_file: Path) -> None:
    """Run ``cmd`` (from the repo root), its output into ``log_file``; stop with its last lines on failure."""
    log(" ".join(str(c) for c in cmd))
    try:
        run_command(cmd, log_file)
    except CommandFailed as exc:
        raise SystemExit(f"synth_contrast: {exc}") from None


def ensure_demo(out: Path, given: Path | None, n: int) -> Path:
    if given is not None:
        if not (given / "dataset.json").is_file():
            raise SystemExit(f"synth_contrast: --data {given}: no dataset.json (make one with brainseg demo-data)")
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


def ensure_family(demo: Path, out: Path, seed: int) -> dict[str, Any]:
    """The test family at ``out``, made anew unless its manifest says it is this generator's, seed and demo."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
        if (manifest["generator"], manifest["seed"], manifest["demo"]) == (GENERATOR, seed, str(demo)):
            log(f"test family: reusing {out}")
            return manifest
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return make_family(demo, out, seed, log=log)


def train(
    demo: Path,
    run_dir: Path,
    arm: str,
    seed: int,
    minutes: float,
    share: float,
    reuse: bool,
    logs: Path,
    overrides: Sequence[str] = (),
):
    """One arm's training; ``overrides`` (``--set KEY=VALUE``, every arm alike) after the arm's own."""
    if reuse and (run_dir / "checkpoint_final.pt").is_file():
        log(f"reusing {run_dir}")
        return
    extra = ["--set", f"train.synth={share}"] if arm == "synth" else []
    for item in overrides:
        extra += ["--set", item]
    cmd = brainseg_cmd(
        "train",
        "--data",
        demo,
        "--out",
        fresh(run_dir),
        "--config",
        CONFIG,
        "--max-minutes",
        minutes,
        "--set",
        f"train.seed={seed}",
        *extra,
        "--no-progress",
    )
    run(cmd, logs / f"train_{run_dir.name}.log")


def pooled_family(family: Path, out: Path) -> Path:
    """Every set of the family in one folder (links named ``SET__CASE``), so one ``predict`` and one
    ``evaluate`` per model cover them all: the model is loaded and warmed once, not once per set."""
    pooled = fresh(out)
    for name in SETS:
        for sub in ("images", "labels"):
            (pooled / sub).mkdir(exist_ok=True)
            for path in sorted((family / name / sub).glob("*.nii.gz")):
                (pooled / sub / f"{name}{SEP}{path.name}").symlink_to(path.resolve())
    return pooled


def split_scores(eval_dir: Path) -> dict[str, Any]:
    """Per-set scores from one evaluation of the pooled family: each set's mean Dice per label over its
    cases (a case's labels as ``evaluate`` scored them), its cases' means, and its failures."""
    scores = read_scores(eval_dir)
    failed = {f["case"] for f in scores["failed"]}  # evaluate's summary: one entry per failed case and label
    results: dict[str, Any] = {}
    for name in SETS:
        cases = {c.split(SEP, 1)[1]: d for c, d in scores["per_case"].items() if c.split(SEP, 1)[0] == name}
        labels = [k for k in next(iter(cases.values()), {}) if k != "mean"]
        dice = {k: float(np.mean([d[k] for d in cases.values()])) for k in labels}
        results[name] = {
            "dice": dice,
            "mean": float(np.mean(list(dice.values()))) if dice else float("nan"),
            "n_cases": len(cases),
            "failed": sorted(c.split(SEP, 1)[1] for c in failed if c.startswith(f"{name}{SEP}")),
            "per_case": cases,
        }
    return results


def score(run_dir: Path, family: Path, out: Path) -> dict[str, Any]:
    """Predict every set of the family with one run (one ``predict``, one ``evaluate``), read the scores back."""
    key = run_dir.name
    masks = fresh(out / "masks" / key)
    run(
        brainseg_cmd("predict", "--model", run_dir, "--input", family / "images", "--output", masks)
        + ["--no-progress"],
        out / "logs" / f"predict_{key}.log",
    )
    eval_dir = fresh(out / "evaluation" / key)
    run(
        brainseg_cmd("evaluate", "--pred", masks, "--ref", family / "labels", "--out", eval_dir)
        + ["--labels", "1,2,3"],
        out / "logs" / f"evaluate_{key}.log",
    )
    return split_scores(eval_dir)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="working folder: data, family, runs, masks, report")
    p.add_argument(
        "--data", type=Path, default=None, help="demo data set to train on (default: OUT/demo, made if absent)"
    )
    p.add_argument(
        "--n-demo", type=int, default=None, help="demo subjects when OUT/demo is made (default 10; 4 --quick)"
    )
    p.add_argument("--minutes", type=float, default=None, help="training budget of each run (default 10; 0.1 --quick)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="train.seed of each pair of runs (default 0 1)")
    p.add_argument("--share", type=float, default=0.5, help="train.synth of the synthetic arm (default 0.5)")
    p.add_argument("--family-seed", type=int, default=DEFAULT_SEED, help="seed of the test family")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="which arms to train (default both)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for every arm's training (repeatable), e.g. train.amp=none",
    )
    p.add_argument("--reuse", action="store_true", help="keep run folders that hold a final checkpoint")
    p.add_argument("--quick", action="store_true", help="4 subjects, trainings of a few seconds, seed 0 (a smoke run)")
    p.add_argument("--json", type=Path, default=None, help="also write report.json here")
    args = p.parse_args(argv)

    settings: dict[str, Any] = dict(QUICK if args.quick else FULL)
    for key in ("minutes", "n_demo", "seeds"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if settings["minutes"] <= 0 or settings["n_demo"] < 2 or not 0 < args.share <= 1:
        p.error("--minutes must be > 0, --n-demo >= 2 and --share in (0, 1]")
    started, load_start = time.perf_counter(), load1()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    demo = ensure_demo(out, args.data.resolve() if args.data else None, settings["n_demo"])
    manifest = ensure_family(demo, out / "family", args.family_seed)
    pooled = pooled_family(out / "family", out / "family_pooled")
    timings["data"] = round(time.perf_counter() - t0, 1)

    results: dict[str, dict[str, Any]] = {}
    training: dict[str, Any] = {}
    for seed in settings["seeds"]:
        for arm in args.arms:
            run_dir = out / "runs" / f"{arm}_s{seed}"
            t0 = time.perf_counter()
            train(demo, run_dir, arm, seed, settings["minutes"], args.share, args.reuse, out / "logs", args.overrides)
            timings[f"train_{run_dir.name}"] = round(time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
            results[run_dir.name] = score(run_dir, pooled, out)
            timings[f"score_{run_dir.name}"] = round(time.perf_counter() - t0, 1)
            training[run_dir.name] = brainseg_training(run_dir)

    report: dict[str, Any] = {
        "command": " ".join([PROG, *(argv if argv is not None else sys.argv[1:])]),
        "settings": {
            **settings,
            "arms": list(args.arms),
            "overrides": list(args.overrides),
            "share": args.share,
            "quick": args.quick,
            "family_seed": args.family_seed,
            "demo_data": str(demo),
            "config": str(CONFIG.relative_to(REPO)),
        },
        "machine": machine_info(),
        "git": git_state(),
        "training": training,
        "results": results,
        "family": manifest,
        "timings_s": timings,
        "load_1min": {"start": load_start, "end": load1()},  # the machine may be shared
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    report["bar"] = report_mod.bar(report)
    text = report_mod.tables(report)
    for path in [out / "report.json", *([args.json] if args.json else [])]:
        Path(path).write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(
        f"# Synthetic-contrast check\n\n`{report['command']}` ({report['total_seconds']:.0f} s; "
        f"{report['machine']['cores_usable']} cores, torch {report['machine']['torch']}, 1-min load {load_start} "
        f"at the start, {report['load_1min']['end']} at the end, commit {(report['git']['commit'] or '?')[:10]}"
        f"{' + uncommitted changes' if report['git']['dirty_files'] else ''}; synth arm: train.synth="
        f"{args.share}, {settings['minutes']:g} min per run)\n\n{text}\n"
    )
    print(text)
    print(f"\n(total {report['total_seconds']:.0f} s; report in {out / 'report.md'} and {out / 'report.json'})")
    return 0
