"""The command line of the benchmark (:mod:`scripts.benchmark`): settings, sections, report."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import scripts.benchmark as package
from scripts.benchmark.children import CHILDREN
from scripts.benchmark.harness import log, wait_for_quiet
from scripts.benchmark.report import headline, report_tables, targets
from scripts.benchmark.scaling import scaling_section
from scripts.benchmark.sections import (
    ensemble_section,
    gpu_section,
    inference_section,
    loader_section,
    make_data,
    network_info,
    train_section,
)
from scripts.common import load1, machine_info

# --------------------------------------------------------------------------- settings

QUICK = dict(
    n_subjects=6,
    n_test=2,
    train_minutes=0.6,
    loader_patches={64: 24, 128: 6},
    loader_warmup=3,
    scaling_sizes=[96, 128, 160],
    inference_cases=2,
    repeats=1,
    compile_variant=False,
    reference_shifts=[0.5],
    norm=None,
    ensemble_members=3,
)
FULL = dict(
    n_subjects=12,
    n_test=6,
    train_minutes=5.0,
    loader_patches={64: 150, 128: 40},
    loader_warmup=5,
    scaling_sizes=[128, 192, 256, 320],
    inference_cases=6,
    repeats=2,
    compile_variant=True,
    reference_shifts=[0.5],
    norm=None,
    ensemble_members=3,
)


# --------------------------------------------------------------------------- main


SECTIONS = ("training", "inference", "loader", "scaling", "gpu", "ensemble")
#: What runs without ``--only``: the ensemble section is asked for by name.
DEFAULT_SECTIONS = ("training", "inference", "loader", "scaling", "gpu")


def parser() -> argparse.ArgumentParser:
    from brainseg.model.unet import NORMS

    p = argparse.ArgumentParser(
        prog="python -m scripts.benchmark",
        description=package.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small run: fewer subjects, cases, patches and sizes")
    p.add_argument("--json", type=Path, default=None, help="write all figures to this JSON file")
    p.add_argument("--model", type=Path, default=None, help="reuse this run folder / checkpoint instead of training")
    p.add_argument(
        "--data", type=Path, default=None, help="benchmark on this demo data set (read only) instead of making one"
    )
    p.add_argument("--train-minutes", type=float, default=None, help="training budget (default 5; 0.6 with --quick)")
    p.add_argument("--workdir", type=Path, default=None, help="keep inputs and outputs here (default: a temp folder)")
    p.add_argument(
        "--only",
        default=",".join(DEFAULT_SECTIONS),
        help=f"comma-separated sections to run, of {', '.join(SECTIONS)} (default: all but ensemble)",
    )
    p.add_argument("--max-load", type=float, default=None, help="wait for the 1-min load to drop below this first")
    p.add_argument("--max-wait", type=float, default=600.0, help="seconds to wait for --max-load at most")
    p.add_argument(
        "--norm",
        choices=NORMS,
        default=None,
        help="normalisation of the benchmarked network (default: configs/demo.yaml's own, instance, the "
        "network make demo trains and ships; batch: a variant whose output does not depend on where the "
        "windows fall)",
    )
    p.add_argument("--report", type=Path, default=None, help="print the tables of a saved --json file and exit")
    p.add_argument("--child", nargs=3, metavar=("KIND", "SPEC", "OUT"), help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)

    if args.report is not None:
        print(report_tables(json.loads(args.report.read_text())))
        return 0

    if args.child:
        kind, spec_path, out_path = args.child
        result = CHILDREN[kind](json.loads(Path(spec_path).read_text()))
        Path(out_path).write_text(json.dumps(result, default=str))
        return 0

    settings: dict[str, Any] = dict(QUICK if args.quick else FULL)
    if args.norm is not None:
        settings["norm"] = args.norm
    if args.train_minutes is not None:
        if args.train_minutes <= 0:
            p.error("--train-minutes must be > 0")
        settings["train_minutes"] = args.train_minutes
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    if sections - set(SECTIONS):
        p.error(f"--only: unknown {sorted(sections - set(SECTIONS))}; choose from {', '.join(SECTIONS)}")
    if args.data is not None and not (args.data / "dataset.json").is_file():
        p.error(f"--data {args.data}: no dataset.json (make one with brainseg demo-data)")
    started = time.perf_counter()
    load_start = wait_for_quiet(args.max_load, args.max_wait)
    tmp = None
    if args.workdir is None:
        tmp = tempfile.mkdtemp(prefix="brainseg_bench_")
        workdir = Path(tmp)
    else:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {
        "quick": args.quick,
        "machine": machine_info(),
        "load_1min_start": load_start,
        "settings": dict(settings),
        "sections": [s for s in SECTIONS if s in sections],
    }
    try:
        if args.data is not None:
            data = args.data.resolve()
            log(f"demo data: {data} (given)")
        else:
            log(f"demo data: {settings['n_subjects']} subjects in {workdir}")
            data = make_data(workdir, settings["n_subjects"], settings["n_test"])
        res["data"] = str(data)
        model = args.model
        if "training" in sections or model is None:
            norm = "as configured" if settings["norm"] is None else settings["norm"]
            log(f"training configs/demo.yaml (model.norm {norm}) for {settings['train_minutes']} min")
            res["training"] = train_section(data, workdir, settings["train_minutes"], settings["norm"])
            if model is None:
                model = Path(res["training"]["run_dir"])
        res["network"] = network_info(model, res.get("training"))
        if "inference" in sections:
            res["inference"] = inference_section(
                model,
                data,
                workdir,
                settings["inference_cases"],
                settings["repeats"],
                settings["compile_variant"],
                shift_fractions=settings["reference_shifts"],
            )
        if "loader" in sections:
            res["loader"] = loader_section(
                data, model, workdir, settings["loader_patches"], settings["loader_warmup"], settings["repeats"]
            )
        if "scaling" in sections:
            res["scaling"] = scaling_section(model, data, workdir, settings["scaling_sizes"])
        if "gpu" in sections:
            res["gpu"] = gpu_section(model, data, workdir, settings["inference_cases"])
        if "ensemble" in sections:
            res["ensemble"] = ensemble_section(
                model, data, workdir, settings["ensemble_members"], settings["inference_cases"]
            )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    res["targets"] = targets(res)
    res["summary"] = headline(res)
    res["load_1min_end"] = load1()
    res["total_seconds"] = time.perf_counter() - started
    text = report_tables(res)
    print(text)
    print(f"\n(total {res['total_seconds']:.0f} s)")
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=1, default=str) + "\n")
    return 0
