"""What every ``brainseg`` command shares: config arguments, logging, error reporting."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from brainseg.errors import one_line


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML config file (see configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.lr=0.003 (repeatable)",
    )


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def add_verbosity_args(p: argparse.ArgumentParser, top_level: bool) -> None:
    """``--quiet``/``--verbose``, before or after the command name."""
    default: dict[str, Any] = {} if top_level else {"default": argparse.SUPPRESS}
    group = p.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only", **default)
    group.add_argument("-v", "--verbose", action="store_true", help="also debugging messages", **default)


class _LineFormatter(logging.Formatter):
    """Warnings and errors as ``brainseg: <level>: <message>``, one line; info as it is."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            text = f"brainseg: {record.levelname.lower()}: {text}"
        text = one_line(text)
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _TqdmHandler(logging.Handler):
    """Writes to stderr above any progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def configure_logging(quiet: bool = False, verbose: bool = False) -> None:
    """The ``brainseg`` logger's one handler and level for this command."""
    logger = logging.getLogger("brainseg")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = _TqdmHandler()
    handler.setFormatter(_LineFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
