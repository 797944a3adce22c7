"""Tumour-family check: brainseg trained with no config on the demo's tumours (and, with
``--family-train``, on the independent family's), scored on both families' held-out cases.

    python -m scripts.experiments.tumour_family --out tf/                  # 12+4 demo cases, 4 family cases, 10-min trainings, seeds 0 1
    python -m scripts.experiments.tumour_family --out tf/ --family-train   # also 12 family training cases, trained on as well
    python -m scripts.experiments.tumour_family --out tf/ --quick          # 3+1 demo cases at 3 mm, a few seconds of training, seed 0
    python -m scripts.experiments.tumour_family --out tfB/ --set augment.per_channel=true   # an arm: every training with this override

Steps (each brainseg step a subprocess, as a new user runs it):

1. demo data: ``brainseg demo-data OUT/demo --kind tumour --layout brats2021 --n N --n-test T --seed 0``,
   kept when its manifest matches;
2. the independent family ``OUT/family`` (:mod:`~scripts.experiments.tumour_family.family`: its own
   shape and intensity models, BraTS 2021 layout): ``--n-family-test`` held-out cases (and
   ``--n-family-train`` training cases with ``--family-train``);
3. per training set and seed S: ``brainseg train --data SET/train --out OUT/runs/SET_sS --max-minutes M
   --set train.seed=S`` with no ``--config`` (the plan decides) and each ``--set`` given; ``--reuse`` keeps finished runs;
4. per run one ``brainseg predict`` of both families' ``test/`` folders and one ``brainseg evaluate
   --regions brats`` against both ``test_labels/`` (pooled in ``OUT/heldout_labels``), the scores split
   back per family; each case's label confusion from the masks (necrosis and oedema recall);
5. OUT/report.json (and ``--json PATH``) and OUT/report.md: per region (WT, TC, ET) the mean and spread
   over seeds on each family, voxel- and lesion-wise, recalls, each case, the commands, the machine,
   the commit and the load.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scripts.common import CommandFailed, brainseg_cmd, fresh, git_state, load1, logger, machine_info
from scripts.common import run as run_command
from scripts.experiments.generalisation.run import brainseg_training
from scripts.experiments.tumour_family import report as report_mod
from scripts.experiments.tumour_family.family import DEFAULT_SEED, GENERATOR, make_family

FULL = dict(minutes=10.0, n_demo=16, n_demo_test=4, n_family_test=4, n_family_train=12, seeds=[0, 1], spacing=2.0)
QUICK = dict(minutes=0.05, n_demo=4, n_demo_test=1, n_family_test=1, n_family_train=3, seeds=[0], spacing=3.0)
PROG = "python -m scripts.experiments.tumour_family"
DEMO_SEED = 0
log = logger("tumour_family")


def run(cmd: Sequence[Any], log_file: Path, commands: list[str]) -> None:
    """Run ``cmd`` (from the repo root), its output into ``log_file``, noted in ``commands``; stop with its
    last lines on failure."""
    line = " ".join(str(c) for c in cmd)
    log(line)
    commands.append(line.replace(sys.executable, "python"))
    try:
        run_command(cmd, log_file)
    except CommandFailed as exc:
        raise SystemExit(f"tumour_family: {exc}") from None


def ensure_demo(out: Path, s: dict[str, Any], commands: list[str]) -> dict[str, Any]:
    """The demo tumour set at ``out`` (made unless its manifest has these sizes, seed and spacing)."""
    try:
        meta = json.loads((out / "brainseg-demo.json").read_text())
        if (len(meta["train"]) + len(meta["test"]), len(meta["test"]), meta["seed"], meta["spacing_mm"]) == (
            s["n_demo"],
            s["n_demo_test"],
            DEMO_SEED,
            [s["spacing"]] * 3,
        ):
            log(f"demo data: reusing {out}")
            return meta
    except (OSError, ValueError, KeyError, TypeError):
        pass
    cmd = brainseg_cmd("demo-data", out, "--kind", "tumour", "--layout", "brats2021", "--n", s["n_demo"])
    cmd += ["--n-test", str(s["n_demo_test"]), "--seed", str(DEMO_SEED), "--spacing", *[str(s["spacing"])] * 3]
    run(cmd, out.parent / "logs" / "demo_data.log", commands)
    return json.loads((out / "brainseg-demo.json").read_text())


def ensure_family(out: Path, n_train: int, n_test: int, seed: int, spacing: float) -> dict[str, Any]:
    """The independent family at ``out``, made anew unless its manifest says it is this generator's, with these sizes."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
        if (manifest["generator"], manifest["seed"], manifest["spacing_mm"]) == (GENERATOR, seed, spacing) and (
            len(manifest["train"]),
            len(manifest["test"]),
        ) == (n_train, n_test):
            log(f"independent family: reusing {out}")
            return manifest
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return make_family(out, n_train, n_test, seed, spacing, log=log)


def pooled_labels(folders: Sequence[Path], out: Path) -> Path:
    """Both families' reference labels in one folder (links), for one ``evaluate`` per run."""
    pooled = fresh(out)
    for folder in folders:
        for path in sorted(folder.glob("*.nii.gz")):
            (pooled / path.name).symlink_to(path.resolve())
    return pooled


def train(
    data: Path,
    run_dir: Path,
    seed: int,
    minutes: float,
    reuse: bool,
    logs: Path,
    commands: list[str],
    overrides: Sequence[str] = (),
) -> None:
    """``brainseg train`` with no config (the plan decides), ``train.seed`` and the ``overrides`` (``--set``)."""
    if reuse and (run_dir / "checkpoint_final.pt").is_file():
        log(f"reusing {run_dir}")
        return
    cmd = brainseg_cmd("train", "--data", data, "--out", fresh(run_dir), "--max-minutes", minutes)
    cmd += [f for o in overrides for f in ("--set", o)]
    run(cmd + ["--set", f"train.seed={seed}", "--no-progress"], logs / f"train_{run_dir.name}.log", commands)


def score(
    run_dir: Path,
    tests: dict[str, Path],
    labels: Path,
    cases: dict[str, list[str]],
    kinds: dict[str, str],
    out: Path,
    commands: list[str],
) -> dict[str, Any]:
    """One predict of every family's held-out scans, one evaluate, the scores split per family."""
    key = run_dir.name
    masks = fresh(out / "masks" / key)
    cmd = brainseg_cmd("predict", "--model", run_dir, "--input", *tests.values(), "--output", masks, "--no-progress")
    run(cmd, out / "logs" / f"predict_{key}.log", commands)
    eval_dir = fresh(out / "evaluation" / key)
    cmd = brainseg_cmd("evaluate", "--pred", masks, "--ref", labels, "--out", eval_dir, "--regions", "brats")
    run(cmd, out / "logs" / f"evaluate_{key}.log", commands)
    metrics = report_mod.read_region_metrics(eval_dir)
    all_ids = [c for ids in cases.values() for c in ids]
    confusions = report_mod.case_confusions(masks, labels, [c for c in all_ids if c in metrics])
    return {name: report_mod.family_scores(metrics, confusions, ids, kinds) for name, ids in cases.items()}


def parse(argv: Sequence[str] | None) -> tuple[argparse.Namespace, dict[str, Any]]:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="working folder: data, runs, masks, report")
    p.add_argument("--minutes", type=float, default=None, help="training budget of each run (default 10; 0.05 --quick)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="train.seed of each run (default 0 1; 0 --quick)")
    p.add_argument("--n-demo", type=int, default=None, help="demo cases in all (default 16; 4 --quick)")
    p.add_argument("--n-demo-test", type=int, default=None, help="of them held out (default 4; 1 --quick)")
    p.add_argument("--n-family-test", type=int, default=None, help="independent held-out cases (default 4; 1 --quick)")
    p.add_argument("--n-family-train", type=int, default=None, help="with --family-train (default 12; 3 --quick)")
    p.add_argument("--family-train", action="store_true", help="also train on the independent family and score both")
    p.add_argument(
        "--spacing", type=float, default=None, help="voxel size in mm of both families (default 2; 3 --quick)"
    )
    p.add_argument("--family-seed", type=int, default=DEFAULT_SEED, help="seed of the independent family")
    p.add_argument("--reuse", action="store_true", help="keep run folders that hold a final checkpoint")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a config override of every training (an arm)"
    )
    p.add_argument("--quick", action="store_true", help="small sets at 3 mm, trainings of a few seconds, seed 0")
    p.add_argument("--json", type=Path, default=None, help="also write report.json here")
    args = p.parse_args(argv)
    settings: dict[str, Any] = dict(QUICK if args.quick else FULL)
    for key in ("minutes", "seeds", "n_demo", "n_demo_test", "n_family_test", "n_family_train", "spacing"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if settings["minutes"] <= 0 or not 1 <= settings["n_demo_test"] < settings["n_demo"] - 1:
        p.error("--minutes must be > 0 and --n-demo-test between 1 and --n-demo - 2")
    if settings["n_family_test"] < 1 or (args.family_train and settings["n_family_train"] < 2):
        p.error("--n-family-test must be >= 1 and --n-family-train >= 2")
    return args, settings


def main(argv: Sequence[str] | None = None) -> int:
    args, settings = parse(argv)
    started, load_start = time.perf_counter(), load1()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    commands: list[str] = []

    t0 = time.perf_counter()
    demo_meta = ensure_demo(out / "demo", settings, commands)
    n_family_train = settings["n_family_train"] if args.family_train else 0
    family_meta = ensure_family(
        out / "family", n_family_train, settings["n_family_test"], args.family_seed, settings["spacing"]
    )
    commands.append(
        f"make_family(OUT/family, n_train={n_family_train}, n_test={settings['n_family_test']}, "
        f"seed={args.family_seed}, spacing={settings['spacing']})  # {GENERATOR}"
    )
    labels = pooled_labels([out / "demo" / "test_labels", out / "family" / "test_labels"], out / "heldout_labels")
    tests = {"demo": out / "demo" / "test", "family": out / "family" / "test"}
    cases = {"demo": list(demo_meta["test"]), "family": list(family_meta["test"])}
    kinds = {c["id"]: c["kind"] for c in [*demo_meta["cases"], *family_meta["cases"]]}
    timings["data"] = round(time.perf_counter() - t0, 1)

    trainings = {"demo": out / "demo" / "train", **({"family": out / "family" / "train"} if args.family_train else {})}
    results: dict[str, dict[str, Any]] = {}
    training: dict[str, Any] = {}
    for name, data in trainings.items():
        for seed in settings["seeds"]:
            run_dir = out / "runs" / f"{name}_s{seed}"
            t0 = time.perf_counter()
            train(data, run_dir, seed, settings["minutes"], args.reuse, out / "logs", commands, args.set)
            timings[f"train_{run_dir.name}"] = round(time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
            results[run_dir.name] = score(run_dir, tests, labels, cases, kinds, out, commands)
            timings[f"score_{run_dir.name}"] = round(time.perf_counter() - t0, 1)
            training[run_dir.name] = brainseg_training(run_dir)

    summary = {
        name: {family: report_mod.over_seeds(results, name, family, settings["seeds"]) for family in cases}
        for name in trainings
    }
    report: dict[str, Any] = {
        "command": " ".join([PROG, *(argv if argv is not None else sys.argv[1:])]),
        "settings": {
            **settings,
            "family_train": args.family_train,
            "overrides": args.set,
            "family_seed": args.family_seed,
            "demo_seed": DEMO_SEED,
        },
        "commands": commands,
        "machine": machine_info(),
        "git": git_state(),
        "training": training,
        "summary": summary,
        "results": results,
        "cases": {"demo": demo_meta["cases"], "family": family_meta["cases"]},
        "timings_s": timings,
        "load_1min": {"start": load_start, "end": load1()},  # the machine may be shared
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    report["bar"] = report_mod.bar(summary)
    text = report_mod.tables(report)
    for path in [out / "report.json", *([args.json] if args.json else [])]:
        Path(path).write_text(json.dumps(report, indent=1) + "\n")
    m, g = report["machine"], report["git"]
    (out / "report.md").write_text(
        f"# Tumour families\n\n`{report['command']}` ({report['total_seconds']:.0f} s; {m['cores_usable']} cores "
        f"({m['cpu']}), torch {m['torch']}, 1-min load {load_start} at the start, {report['load_1min']['end']} at "
        f"the end, commit {(g['commit'] or '?')[:10]}{' + uncommitted changes' if g['dirty_files'] else ''}; "
        f"{settings['minutes']:g} min per training, no config, seeds {' '.join(map(str, settings['seeds']))}; "
        f"{len(demo_meta['train'])} demo training cases, {len(cases['demo'])} demo and {len(cases['family'])} "
        f"independent held-out cases at {settings['spacing']:g} mm)\n\n{text}\n"
    )
    print(text)
    print(f"\n(total {report['total_seconds']:.0f} s; report in {out / 'report.md'} and {out / 'report.json'})")
    return 0
