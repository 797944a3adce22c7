"""Measuring for scripts/benchmark.py: the machine and its load, child processes, peak memory.

Importing it puts the repository on ``sys.path`` (the scripts import ``brainseg`` from there).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
#: The command every child process runs (``benchmark.py --child KIND SPEC OUT``).
BENCHMARK = SCRIPTS / "benchmark.py"


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    import monai
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


def load1() -> float:
    return round(os.getloadavg()[0], 2)


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


def log(msg: str) -> None:
    print(f"[benchmark {time.strftime('%H:%M:%S')} load {load1():.2f}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- child processes


def run_child(kind: str, spec: dict, workdir: Path, timeout: float = 1800, env: dict | None = None) -> dict:
    """Run ``kind`` in a fresh Python process; return its result dict plus load figures."""
    spec_path = workdir / f"spec_{kind}_{time.monotonic_ns()}.json"
    out_path = spec_path.with_name(spec_path.name.replace("spec_", "result_"))
    spec_path.write_text(json.dumps(spec))
    full_env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    full_env.setdefault("PYTHONWARNINGS", "ignore")
    full_env.update(env or {})
    load_before = load1()
    busy0 = _busy_jiffies()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(BENCHMARK), "--child", kind, str(spec_path), str(out_path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=REPO,
    )
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy1 = _busy_jiffies()
    if proc.returncode != 0 or not out_path.is_file():
        raise RuntimeError(f"benchmark child {kind} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(out_path.read_text())
    own = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    result["load_1min_before"] = load_before
    result["child_wall_s"] = round(wall, 2)
    if busy0 is not None and busy1 is not None:
        # CPU the rest of the machine used meanwhile, in cores (0 = we had it alone).
        result["other_cpu"] = round(max(0.0, (busy1 - busy0) - own) / max(wall, 1e-9), 2)
    return result


def _proc_status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _maxrss_mb() -> float:
    """Peak resident set size of this process (MB).

    Linux: ``VmHWM`` from /proc/self/status, the high-water mark of this process image.
    (``getrusage(RUSAGE_SELF).ru_maxrss`` would do, but Linux carries it across
    fork+exec, so every child would report at least the benchmark parent's own peak.)
    Elsewhere ``ru_maxrss``.
    """
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _reset_peak_rss() -> float | None:
    """Reset the peak-RSS mark to the current RSS (Linux >= 4.0); return the current RSS (MB)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _proc_status_mb("VmRSS")


def _spatial_voxels(path: str | Path) -> int:
    from brainseg.io.images import read_geometry

    return int(np.prod(read_geometry(path).shape))


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
