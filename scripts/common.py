"""What every experiment in ``scripts/`` shares: logging, the machine and its load, git state,
subprocesses, case ids and markdown tables.

Everything here is a plain function without state of its own; experiments run from the
repository root (``python -m scripts.<name>``), and so do the subprocesses started here.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from brainseg.io.naming import split_channel, strip_suffix

#: The repository root: the working folder of every subprocess started here.
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- logging


def load1() -> float:
    """The machine's 1-minute load average (the machine may be shared)."""
    return round(os.getloadavg()[0], 2)


def log(msg: str, tag: str = "scripts") -> None:
    """``[tag HH:MM:SS load L] msg`` on stderr."""
    print(f"[{tag} {time.strftime('%H:%M:%S')} load {load1():.2f}] {msg}", file=sys.stderr, flush=True)


def logger(tag: str) -> Callable[[str], None]:
    """:func:`log` with ``tag`` fixed: ``log = logger("benchmark")``."""

    def tagged(msg: str) -> None:
        log(msg, tag)

    return tagged


# --------------------------------------------------------------------------- machine and repository


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, library versions and the GPU if there is one."""
    import monai
    import numpy as np
    import torch

    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": str(torch.__version__),
        "monai": monai.__version__,
        "numpy": np.__version__,
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def git_state(repo: Path = REPO) -> dict[str, Any]:
    """The commit checked out, how many files differ from it, and which of them are library or config files."""

    def git(*args: str) -> str:
        try:
            res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return res.stdout.strip() if res.returncode == 0 else ""

    status = git("status", "--porcelain").splitlines()
    library = [line[3:] for line in git("status", "--porcelain", "--", "brainseg", "configs").splitlines()]
    return {"commit": git("rev-parse", "HEAD") or None, "dirty_files": len(status), "modified_library_files": library}


# --------------------------------------------------------------------------- subprocesses


class CommandFailed(RuntimeError):
    """A subprocess exited with a non-zero status (the message ends with its last output lines)."""


def python_module(module: str, *args: Any) -> list[str]:
    """``python -m module args...`` with this interpreter."""
    return [sys.executable, "-m", module, *[str(a) for a in args]]


def brainseg_cmd(*args: Any) -> list[str]:
    """The ``brainseg`` command line, as ``python -m brainseg``."""
    return python_module("brainseg", *args)


def run(
    cmd: Sequence[Any],
    log_file: Path,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    tail_lines: int = 25,
) -> None:
    """Run ``cmd`` from the repository root, stdout and stderr into ``log_file``.

    ``env`` adds to (or replaces entries of) this process's environment; Python warnings
    are off unless ``PYTHONWARNINGS`` says otherwise. A non-zero exit raises
    :class:`CommandFailed` with the log's last ``tail_lines`` lines.
    """
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ, PYTHONWARNINGS=os.environ.get("PYTHONWARNINGS", "ignore"))
    full_env.update(env or {})
    with open(log_file, "w") as fh:
        code = subprocess.run(
            [str(c) for c in cmd], stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=full_env, timeout=timeout
        ).returncode
    if code != 0:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-tail_lines:])
        raise CommandFailed(f"command failed (exit {code}): {' '.join(str(c) for c in cmd)}\nsee {log_file}:\n{tail}")


# --------------------------------------------------------------------------- names and tables


def fresh(folder: Path) -> Path:
    """An empty ``folder`` (what an earlier run of an experiment left there is removed)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def case_id(path: str | os.PathLike) -> str:
    """The case id of a scan file, by the library's naming rules: ``dir/c7_0000.nii.gz`` -> ``c7``."""
    stem = strip_suffix(path)
    parts = split_channel(stem)
    return parts[0] if parts and parts[0] else stem


def markdown_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
