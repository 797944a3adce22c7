"""The ``brainseg`` command line: argparse lives here and nowhere below.

One module per command (``demo_data``, ``check``, ``plan``, ``train``, ``predict``, ``evaluate``, ``info``,
``export``, ``demo``),
each with ``register(subparsers)`` and ``run(args) -> exit code``; ``run`` turns the
arguments into typed calls of library functions. User errors
(:class:`~brainseg.errors.BrainsegError`) are printed as one line and exit 1, with the
traceback only under ``--debug``.
"""

from __future__ import annotations

import argparse
import sys

from brainseg.cli import check, demo, demo_data, evaluate, export, info, plan, predict, train
from brainseg.cli.common import add_verbosity_args, configure_logging
from brainseg.errors import BrainsegError, one_line

COMMANDS = (demo_data, check, plan, train, predict, evaluate, info, export, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brainseg",
        description="3D brain MRI segmentation: train, predict, evaluate.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    add_verbosity_args(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        p = command.register(sub)
        add_verbosity_args(p, top_level=False)
        p.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = ["brainseg", *(sys.argv[1:] if argv is None else argv)]  # what the run records name
    configure_logging(quiet=args.quiet, verbose=args.verbose)
    try:
        return int(args.run(args))
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


__all__ = ["build_parser", "main"]
