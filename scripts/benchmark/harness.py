"""Measuring for the benchmark: the machine's load, child processes, peak memory.

Each measurement runs in a fresh ``python -m scripts.benchmark --child KIND SPEC OUT``
process, so no pipeline inherits another's caches, threads or memory peak.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

from scripts.common import REPO, load1, logger, python_module
from scripts.common import run as run_command

#: The module every child process runs (``python -m scripts.benchmark --child KIND SPEC OUT``).
BENCHMARK = "scripts.benchmark"
log = logger("benchmark")


# --------------------------------------------------------------------------- the machine's load


def _busy_jiffies() -> float | None:
    """Total non-idle CPU time of the machine (seconds) from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    v = [int(x) for x in fields]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_load: float | None, max_wait: float) -> float:
    """Wait until the 1-minute load is below ``max_load`` (or ``max_wait`` s passed); return the load."""
    if max_load is None:
        return load1()
    start = time.time()
    while load1() >= max_load and time.time() - start < max_wait:
        time.sleep(5)
    return load1()


# --------------------------------------------------------------------------- child processes


def run_child(kind: str, spec: dict, workdir: Path, timeout: float = 1800, env: dict | None = None) -> dict:
    """Run ``kind`` in a fresh Python process; return its result dict plus load figures."""
    spec_path = workdir / f"spec_{kind}_{time.monotonic_ns()}.json"
    out_path = spec_path.with_name(spec_path.name.replace("spec_", "result_"))
    spec_path.write_text(json.dumps(spec))
    # brainseg from this repository, whatever is installed
    full_env = {"PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    load_before = load1()
    busy0 = _busy_jiffies()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    cmd = python_module(BENCHMARK, "--child", kind, spec_path, out_path)
    run_command(cmd, spec_path.with_name(spec_path.stem.replace("spec_", "log_") + ".txt"), full_env, timeout, 60)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy1 = _busy_jiffies()
    if not out_path.is_file():
        raise RuntimeError(f"benchmark child {kind} wrote no result ({out_path})")
    result = json.loads(out_path.read_text())
    own = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    result["load_1min_before"] = load_before
    result["child_wall_s"] = round(wall, 2)
    if busy0 is not None and busy1 is not None:
        # CPU the rest of the machine used meanwhile, in cores (0 = we had it alone).
        result["other_cpu"] = round(max(0.0, (busy1 - busy0) - own) / max(wall, 1e-9), 2)
    return result


def proc_status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def maxrss_mb() -> float:
    """Peak resident set size of this process (MB).

    Linux: ``VmHWM`` from /proc/self/status, the high-water mark of this process image.
    (``getrusage(RUSAGE_SELF).ru_maxrss`` would do, but Linux carries it across
    fork+exec, so every child would report at least the benchmark parent's own peak.)
    Elsewhere ``ru_maxrss``.
    """
    hwm = proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def reset_peak_rss() -> float | None:
    """Reset the peak-RSS mark to the current RSS (Linux >= 4.0); return the current RSS (MB)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return proc_status_mb("VmRSS")


def spatial_voxels(path: str | Path) -> int:
    from brainseg.io.images import read_geometry

    return int(np.prod(read_geometry(path).shape))


def sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
