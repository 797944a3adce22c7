"""nnU-Net v2 side by side: brainseg, the MONAI reference and nnU-Net v2's default 3d_fullres, trained on the
same demo data for the same wall-clock budget on the same machine, scored on the same held-out and shifted
scans by ``brainseg evaluate``, in one run.

    make peers-env                                                     # once: .venv-peers, several GB
    python -m scripts.experiments.peers --out peers/                   # 10 demo subjects, 10-min trainings, 6 shifted scans
    python -m scripts.experiments.peers --out peers/ --quick           # 1-min trainings, 4 subjects, 2 shifted scans,
                                                                       # no mirrored nnU-Net predictions (--nnunet-tta)
    python -m scripts.experiments.peers --out peers/ --reuse           # keep trained runs found in OUT

Run from the default environment (``.venv``); nnU-Net runs only as ``.venv-peers/bin/nnUNetv2_*``
commands (its own entry points; the budget trainer is found through ``nnUNet_extTrainer``). Steps, each
a subprocess as a user runs it:

1. demo data: ``brainseg demo-data OUT/demo --n N --seed 0`` (or ``--data DIR``), kept when present, and
   the generalisation check's shifted scans (``OUT/shifted``, :mod:`scripts.experiments.generalisation.shifted`);
2. nnU-Net's raw layout (:mod:`~scripts.experiments.peers.raw_layout`): the training cases copied to
   ``OUT/nnUNet_raw/Dataset961_BrainsegDemo`` (``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results``
   all under OUT), then ``nnUNetv2_plan_and_preprocess -d 961 -c 3d_fullres --verify_dataset_integrity``;
3. ``nnUNetv2_train 961 3d_fullres all -tr nnUNetTrainerBudget -device cpu``: nnU-Net's default trainer
   stopped by the budget (``nnunet_ext/nnUNetTrainerBudget.py``), fold ``all`` (every training case, as
   brainseg's and MONAI's trainings use them); it writes the iterations it reached to ``budget.json``;
4. ``nnUNetv2_predict ... -f all -device cpu`` on the demo's held-out scans and on the shifted scans, with
   its test-time mirroring (its default; minutes per scan on a CPU, so ``--quick`` leaves it out unless
   ``--nnunet-tta`` asks) and with ``--disable_tta``;
5. ``brainseg train --config configs/demo.yaml --max-minutes M``, ``brainseg predict`` as shipped and with
   ``--tta``; the MONAI reference (:mod:`scripts.experiments.generalisation.monai_reference`) for M minutes;
6. ``brainseg evaluate --labels 1,2,3`` of every pipeline's masks, each mask checked to have its scan's
   exact shape and affine; OUT/report.json (and ``--json PATH``) and OUT/report.md with one table.

Seconds per case are each predict command's whole wall time (process start, imports, model load, every
case) over its cases, one command per pipeline and scan set, as a user would time it, beside the CPU
seconds the command and its workers used (the figure to read on a shared machine). nnU-Net's worker
processes are held to the machine's cores: ``nnUNet_n_proc_DA`` = cores - 1 (at least 1) augmentation
workers beside the training process, ``nnUNet_def_n_proc`` = cores for planning and preprocessing,
``-npp 1 -nps 1`` when predicting, and torch threads = cores (what ``-device cpu`` sets). The exit
status is 1 when some mask is not on its scan's grid.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from brainseg.config import load_config
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
from scripts.experiments.generalisation import report as gen_report
from scripts.experiments.generalisation.run import brainseg_training, ensure_demo
from scripts.experiments.generalisation.shifted import DEFAULT_SEED, make_shifted_set
from scripts.experiments.peers import report as report_mod
from scripts.experiments.peers.nnunet_ext.peers_budget import BUDGET_ENV, ITERATIONS_ENV, THREADS_ENV
from scripts.experiments.peers.raw_layout import DEFAULT_ID, DEFAULT_NAME, nnunet_env, to_nnunet_raw

FULL = dict(minutes=10.0, n_demo=10, n_shifted=6)
QUICK = dict(minutes=1.0, n_demo=4, n_shifted=2)
CONFIG = REPO / "configs" / "demo.yaml"
PEERS_VENV = REPO / ".venv-peers"
EXT_TRAINERS = Path(__file__).resolve().parent / "nnunet_ext"
TRAINER = "nnUNetTrainerBudget"
CONFIGURATION = "3d_fullres"
FOLD = "all"
PROG = "python -m scripts.experiments.peers"
MONAI_REFERENCE = "scripts.experiments.generalisation.monai_reference"
log = logger("peers")


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished (waited-for) children and theirs."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(cmd: Sequence[Any], log_file: Path, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run ``cmd`` (from the repo root) under ``env``, its output into ``log_file``; (wall seconds, CPU
    seconds of the command and its worker processes). The CPU seconds stay meaningful on a shared
    machine, where the wall seconds include waiting for the cores. Stops the experiment with the
    command's last lines on failure."""
    log(" ".join(str(c) for c in cmd))
    t0, c0 = time.perf_counter(), children_cpu_seconds()
    try:
        run_command(cmd, log_file, env=env)
    except CommandFailed as exc:
        raise SystemExit(f"peers: {exc}") from None
    return time.perf_counter() - t0, children_cpu_seconds() - c0


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def worker_limits(cores: int) -> dict[str, int]:
    """nnU-Net's processes and threads on a machine of ``cores`` cores (see the module's docstring)."""
    cores = max(1, int(cores))
    return {
        "nnUNet_n_proc_DA": max(1, cores - 1),
        "nnUNet_def_n_proc": cores,
        "torch_threads": cores,
        "predict_npp": 1,
        "predict_nps": 1,
    }


def nnunet_environment(out: Path, limits: dict[str, int], minutes: float) -> dict[str, str]:
    """What every nnU-Net command of this run sees besides this process's environment."""
    return {
        **nnunet_env(out),
        "nnUNet_extTrainer": str(EXT_TRAINERS),
        "nnUNet_n_proc_DA": str(limits["nnUNet_n_proc_DA"]),
        "nnUNet_def_n_proc": str(limits["nnUNet_def_n_proc"]),
        "nnUNet_compile": "false",  # nnU-Net turns compile off on a CPU itself; said here too
        BUDGET_ENV: f"{minutes:g}",
        THREADS_ENV: str(limits["torch_threads"]),
        ITERATIONS_ENV: os.environ.get(ITERATIONS_ENV, ""),
    }


def peers_bin(venv: Path, name: str) -> Path:
    path = venv / "bin" / name
    if not path.exists():
        raise SystemExit(f"peers: {path} not found: build nnU-Net's environment first with `make peers-env`")
    return path


def peers_versions(venv: Path) -> dict[str, str]:
    """Python, torch and nnunetv2 of the peers environment (asked of its own interpreter)."""
    import subprocess

    code = (
        "import json, platform, importlib.metadata as m; print(json.dumps({'python': platform.python_version(), "
        "**{p: m.version(p) for p in ('nnunetv2', 'torch', 'dynamic_network_architectures', 'numpy')}}))"
    )
    res = subprocess.run([str(peers_bin(venv, "python")), "-c", code], capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise SystemExit(f"peers: {venv}/bin/python cannot read its package versions:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def n_scans(images: Path) -> int:
    return len(list(images.glob("*_0000.nii.gz")))


# --------------------------------------------------------------------------- the pipelines


def nnunet_side(
    demo: Path,
    sets: dict[str, tuple[Path, Path]],
    out: Path,
    venv: Path,
    env: dict[str, str],
    limits: dict[str, int],
    dataset_id: int,
    reuse: bool,
    mirrored: bool = True,
) -> tuple[dict[str, Any], dict[str, dict[str, tuple[float, float]]], dict[str, float]]:
    """Convert, plan, train and predict with nnU-Net (with its mirroring too where ``mirrored``); (training
    record, predict seconds per mode and set, timings)."""
    timings: dict[str, float] = {}
    results = Path(env["nnUNet_results"])
    final = list(results.glob(f"Dataset{dataset_id:03d}_*/{TRAINER}__nnUNetPlans__{CONFIGURATION}/fold_{FOLD}"))
    trained = False
    if final and (final[0] / "checkpoint_final.pth").is_file() and (final[0] / "budget.json").is_file():
        budget = json.loads((final[0] / "budget.json").read_text())["budget_seconds"]
        trained = abs(budget - float(env[BUDGET_ENV]) * 60.0) < 1e-6
    if reuse and trained:
        log(f"nnU-Net: reusing {final[0]}")
    else:
        for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            fresh(Path(env[key]))
        t0 = time.perf_counter()
        meta = to_nnunet_raw(demo, Path(env["nnUNet_raw"]), dataset_id, DEFAULT_NAME)
        log(f"nnU-Net raw layout: {meta['name']}, {meta['numTraining']} training cases")
        timings["nnunet_convert"] = round(time.perf_counter() - t0, 1)
        cmd = [peers_bin(venv, "nnUNetv2_plan_and_preprocess"), "-d", dataset_id, "-c", CONFIGURATION]
        cmd += ["--verify_dataset_integrity", "-npfp", limits["nnUNet_def_n_proc"], "-np", limits["nnUNet_def_n_proc"]]
        timings["nnunet_plan_and_preprocess"] = round(run(cmd, out / "logs" / "nnunet_plan.log", env)[0], 1)
        cmd = [peers_bin(venv, "nnUNetv2_train"), dataset_id, CONFIGURATION, FOLD, "-tr", TRAINER, "-device", "cpu"]
        timings["nnunet_train_process"] = round(run(cmd, out / "logs" / "nnunet_train.log", env)[0], 1)
        final = list(results.glob(f"Dataset{dataset_id:03d}_*/{TRAINER}__nnUNetPlans__{CONFIGURATION}/fold_{FOLD}"))
    training = json.loads((final[0] / "budget.json").read_text())
    plans = json.loads((final[0].parent / "plans.json").read_text())
    training["plan"] = report_mod.plan_summary(plans, CONFIGURATION)
    training["steps"], training["minutes"] = training["iterations"], training["seconds"] / 60.0
    seconds: dict[str, dict[str, tuple[float, float]]] = {}
    modes = [("nnunet_tta", []), ("nnunet", ["--disable_tta"])] if mirrored else [("nnunet", ["--disable_tta"])]
    for mode, flags in modes:
        seconds[mode] = {}
        for key, (images, _) in sets.items():
            cmd = [peers_bin(venv, "nnUNetv2_predict"), "-i", images, "-o", fresh(out / "masks" / mode / key)]
            cmd += ["-d", dataset_id, "-c", CONFIGURATION, "-f", FOLD, "-tr", TRAINER, "-device", "cpu", *flags]
            cmd += ["-npp", limits["predict_npp"], "-nps", limits["predict_nps"], "--disable_progress_bar"]
            seconds[mode][key] = run(cmd, out / "logs" / f"predict_{mode}_{key}.log", env)
    return training, seconds, timings


def brainseg_side(
    demo: Path, sets: dict[str, tuple[Path, Path]], out: Path, minutes: float, reuse: bool
) -> tuple[dict[str, Any], dict[str, dict[str, tuple[float, float]]]]:
    model = out / "brainseg_run"
    if reuse and (model / "checkpoint_final.pt").is_file():
        log(f"brainseg: reusing {model}")
    else:
        cmd = brainseg_cmd("train", "--data", demo, "--out", fresh(model), "--config", CONFIG)
        run([*cmd, "--max-minutes", minutes, "--no-progress"], out / "logs" / "brainseg_train.log")
    seconds: dict[str, dict[str, tuple[float, float]]] = {}
    for mode, flags in (("brainseg", []), ("brainseg_tta", ["--tta"])):
        seconds[mode] = {}
        for key, (images, _) in sets.items():
            cmd = brainseg_cmd(
                "predict", "--model", model, "--input", images, "--output", fresh(out / "masks" / mode / key)
            )
            seconds[mode][key] = run([*cmd, "--no-progress", *flags], out / "logs" / f"predict_{mode}_{key}.log")
    return brainseg_training(model), seconds


def monai_side(
    demo: Path, sets: dict[str, tuple[Path, Path]], out: Path, minutes: float, reuse: bool
) -> tuple[dict[str, Any], dict[str, dict[str, tuple[float, float]]]]:
    model = out / "monai_run"

    def same_budget() -> bool:
        return abs(json.loads((model / "train.json").read_text())["budget_minutes"] - minutes) < 1e-9

    if reuse and (model / "model.pt").is_file() and (model / "train.json").is_file() and same_budget():
        log(f"MONAI reference: reusing {model}")
    else:
        cmd = python_module(MONAI_REFERENCE, "train", "--data", demo, "--out", fresh(model), "--minutes", minutes)
        run(cmd, out / "logs" / "monai_train.log")
    seconds: dict[str, tuple[float, float]] = {}
    for key, (images, _) in sets.items():
        cmd = python_module(
            MONAI_REFERENCE, "predict", "--model", model, "--job", images, fresh(out / "masks" / "monai" / key)
        )
        seconds[key] = run(cmd, out / "logs" / f"predict_monai_{key}.log")
    return json.loads((model / "train.json").read_text()), {"monai": seconds}


def score(pipeline: str, sets: dict[str, tuple[Path, Path]], out: Path) -> dict[str, Any]:
    """``brainseg evaluate`` of the pipeline's masks of each set, read back, and the masks' geometry."""
    masks = out / "masks" / pipeline
    results = {}
    for key, (images, labels) in sets.items():
        eval_dir = fresh(out / "evaluation" / pipeline / key)
        cmd = brainseg_cmd("evaluate", "--pred", masks / key, "--ref", labels, "--out", eval_dir, "--labels", "1,2,3")
        run(cmd, out / "logs" / f"evaluate_{pipeline}_{key}.log")
        results[key] = gen_report.read_scores(eval_dir)
        results[key]["geometry"] = gen_report.mask_geometry(images, masks / key)
    return results


# --------------------------------------------------------------------------- the command


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="working folder: data, nnU-Net's folders, runs, report")
    p.add_argument("--quick", action="store_true", help="1-minute trainings, 4 demo subjects, 2 shifted scans")
    p.add_argument("--minutes", type=float, default=None, help="every pipeline's training budget (10; 1 with --quick)")
    p.add_argument(
        "--data", type=Path, default=None, help="demo data set to train on (default: OUT/demo, made if absent)"
    )
    p.add_argument("--n-shifted", type=int, default=None, help="shifted scans (default 6; 2 with --quick)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the shifted scans")
    p.add_argument("--dataset-id", type=int, default=DEFAULT_ID, help=f"nnU-Net data set id (default {DEFAULT_ID})")
    p.add_argument("--peers-venv", type=Path, default=PEERS_VENV, help="nnU-Net's environment (make peers-env)")
    p.add_argument("--reuse", action="store_true", help="keep trained runs found in OUT (each pipeline's own check)")
    p.add_argument("--skip-monai", action="store_true", help="no MONAI reference rows")
    p.add_argument(
        "--nnunet-tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also predict with nnU-Net's test-time mirroring (8 passes, minutes per scan on a CPU; "
        "default: yes, with --quick: no)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write report.json here")
    args = p.parse_args(argv)

    settings: dict[str, Any] = dict(QUICK if args.quick else FULL)
    settings["nnunet_tta"] = not args.quick if args.nnunet_tta is None else args.nnunet_tta
    if args.minutes is not None:
        settings["minutes"] = args.minutes
    if args.n_shifted is not None:
        settings["n_shifted"] = args.n_shifted
    if settings["n_shifted"] < 1 or settings["minutes"] <= 0:
        p.error("--n-shifted must be >= 1 and --minutes > 0")
    venv = args.peers_venv.resolve()
    versions = peers_versions(venv)  # fails early, before any training, without the peers environment
    started, load_start = time.perf_counter(), load1()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cores = usable_cores()
    limits = worker_limits(cores)
    env = nnunet_environment(out, limits, settings["minutes"])
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    demo = ensure_demo(out, args.data.resolve() if args.data else None, settings["n_demo"])
    manifest = make_shifted_set(out / "shifted", settings["n_shifted"], args.seed, log=log)
    timings["data"] = round(time.perf_counter() - t0, 1)
    sets = {
        "demo_heldout": (demo / "imagesTs", demo / "labelsTs"),
        "shifted": (out / "shifted" / "images", out / "shifted" / "labels"),
    }
    cases = {key: n_scans(images) for key, (images, _) in sets.items()}

    training: dict[str, Any] = {}
    predict_seconds: dict[str, dict[str, tuple[float, float]]] = {}
    t0 = time.perf_counter()
    training["brainseg"], secs = brainseg_side(demo, sets, out, settings["minutes"], args.reuse)
    training["brainseg_tta"] = training["brainseg"]
    predict_seconds.update(secs)
    timings["brainseg"] = round(time.perf_counter() - t0, 1)
    if not args.skip_monai:
        t0 = time.perf_counter()
        training["monai"], secs = monai_side(demo, sets, out, settings["minutes"], args.reuse)
        predict_seconds.update(secs)
        timings["monai"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    nn_training, secs, nn_timings = nnunet_side(
        demo, sets, out, venv, env, limits, args.dataset_id, args.reuse, settings["nnunet_tta"]
    )
    training["nnunet_tta"] = training["nnunet"] = nn_training
    predict_seconds.update(secs)
    timings.update(nn_timings)
    timings["nnunet"] = round(time.perf_counter() - t0, 1)

    results = {key: score(key, sets, out) for key in predict_seconds}
    report: dict[str, Any] = {
        "command": " ".join([PROG, *(argv if argv is not None else sys.argv[1:])]),
        "settings": {
            **settings,
            "quick": args.quick,
            "seed": args.seed,
            "demo_data": str(demo),
            "config": str(CONFIG.relative_to(REPO)),
            "brainseg_mirror": bool(load_config(CONFIG).infer.mirror),
            "nnunet": {"dataset_id": args.dataset_id, "configuration": CONFIGURATION, "fold": FOLD, "trainer": TRAINER},
            "cases": cases,
        },
        "machine": machine_info(),
        "git": git_state(),
        "peers_env": {"path": str(venv), **versions},
        "workers": {"cores": cores, **limits},
        "training": training,
        "predict_seconds": {k: {s: v[0] for s, v in by_set.items()} for k, by_set in predict_seconds.items()},
        "predict_cpu_seconds": {k: {s: v[1] for s, v in by_set.items()} for k, by_set in predict_seconds.items()},
        "seconds_per_case": {
            k: {s: v[0] / max(1, cases[s]) for s, v in by_set.items()} for k, by_set in predict_seconds.items()
        },
        "cpu_seconds_per_case": {
            k: {s: v[1] / max(1, cases[s]) for s, v in by_set.items()} for k, by_set in predict_seconds.items()
        },
        "results": results,
        "shifted_cases": manifest["cases"],
        "timings_s": timings,
        "load_1min": {"start": load_start, "end": load1()},  # the machine may be shared
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    text = report_mod.tables(report)
    for path in [out / "report.json", *([args.json] if args.json else [])]:
        Path(path).write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(f"# nnU-Net v2 side by side\n\n{report_mod.header(report)}\n\n{text}\n")
    print(text)
    print(f"\n(total {report['total_seconds']:.0f} s; report in {out / 'report.md'} and {out / 'report.json'})")
    off_grid = [f"{k}/{s}" for k, r in results.items() for s, v in r.items() if not v["geometry"]["ok"]]
    if off_grid:
        print(f"peers: masks not on their scans' grids: {', '.join(off_grid)}", file=sys.stderr)
        return 1
    return 0
