"""The ``brainseg`` command line: thin wrappers over the library's jobs.

Each subcommand parses its arguments and calls one function; user errors
(:class:`~brainseg.errors.BrainsegError`) are printed as one line and exit 1, with
the traceback only under ``--debug``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import BrainsegError, one_line


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML config file (see configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.lr=0.003 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brainseg",
        description="3D brain MRI segmentation: train, predict, evaluate.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo-data", help="write the demo tissue data set (MSD layout) from the MNI template")
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--n", type=int, default=10, help="number of subjects (default 10)")
    p.add_argument("--n-test", type=int, default=None, help="how many of them go to imagesTs (default: a quarter, at least 1)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("train", help="train a model on a scan directory")
    p.add_argument("--data", type=Path, required=True, help="data set folder (MSD, BraTS or images/labels layout)")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, logs, curves)")
    _add_config_args(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--max-minutes", type=float, default=None, help="stop cleanly after this wall-clock budget")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR's last checkpoint")
    p.add_argument("--epochs", type=int, default=None, help="shortcut for --set train.epochs=N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("predict", help="segment scans with a trained model")
    p.add_argument("--model", type=Path, required=True, help="run folder or checkpoint file")
    p.add_argument("--input", type=Path, nargs="+", required=True, help="folders and/or scan files")
    p.add_argument("--output", type=Path, required=True, help="output folder for ID.nii.gz masks")
    p.add_argument("--overwrite", action="store_true", help="redo cases whose output exists (default: skip)")
    p.add_argument("--save-probabilities", action="store_true", help="also write ID_probabilities.nii.gz (4D float)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    _add_config_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("evaluate", help="Dice, HD95 and volumes of predictions against references")
    p.add_argument("--pred", type=Path, required=True, help="folder of predicted masks")
    p.add_argument("--ref", type=Path, required=True, help="folder of reference masks")
    p.add_argument("--out", type=Path, required=True, help="folder for metrics.csv and summary.json")
    p.add_argument("--labels", default=None, help="comma-separated labels to score (default: all non-zero in the references)")

    p = sub.add_parser("demo", help="demo data -> train -> predict -> evaluate, end to end")
    p.add_argument("--out", type=Path, default=Path("demo_output"), help="where everything is written")
    p.add_argument("--n", type=int, default=10, help="number of demo subjects")
    p.add_argument("--config", type=Path, default=None, help="config (default: configs/demo.yaml settings)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--max-minutes", type=float, default=10.0, help="training budget in minutes")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo-data":
        from .data.demo import make_demo_dataset

        out = make_demo_dataset(args.out, n=args.n, n_test=args.n_test, seed=args.seed)
        print(f"demo data set written to {out}")
        return 0
    if args.command == "train":
        from .train.trainer import train_from_cli

        return train_from_cli(args)
    if args.command == "predict":
        from .infer.predict import predict_from_cli

        return predict_from_cli(args)
    if args.command == "evaluate":
        from .evaluate import evaluate_from_cli

        return evaluate_from_cli(args)
    if args.command == "demo":
        from .pipeline import demo_from_cli

        return demo_from_cli(args)
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except BrainsegError as exc:
        if args.debug:
            raise
        print(f"brainseg: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("brainseg: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # Disk full, permission denied, ... : one line naming the file.
        if args.debug:
            raise
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(one_line(f"brainseg: error: {where}{exc.strerror or exc}"), file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
