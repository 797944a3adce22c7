"""Self-configuration: a data set's fingerprint in, a commented config out (``brainseg plan``).

:mod:`.fingerprint` measures the training set (nnU-Net's fingerprint), :mod:`.check` checks it
(``brainseg check``), :mod:`.rules` decides (each decision with its reason), :mod:`.network`
sizes the U-Net (per-axis pooling and kernels, GPU memory, the CPU step time), :mod:`.render`
writes the plan as a YAML config that ``--config`` reads back.
"""

from __future__ import annotations

from pathlib import Path

from brainseg.data.layouts import discover_dataset
from brainseg.io.atomic import atomic_write_text
from brainseg.plan.fingerprint import FINGERPRINT_FILE, Fingerprint, fingerprint_dataset
from brainseg.plan.render import render_plan
from brainseg.plan.rules import Plan, plan_config

#: What ``brainseg train`` without ``--config`` writes into the run folder.
PLAN_FILE = "plan.yaml"


def plan_dataset(
    data_dir: Path,
    out: Path,
    fingerprint_cache: Path | None = None,
    device: str = "cpu",
    gpu_memory: float = 8.0,
    minutes: float | None = None,
    measure: bool = True,
    progress=None,
    write: bool = True,
) -> tuple[Plan, Fingerprint]:
    """Fingerprint ``data_dir`` (cached in ``fingerprint_cache``), plan, write the plan to ``out``."""
    ds = discover_dataset(Path(data_dir))
    fp = fingerprint_dataset(ds, fingerprint_cache, progress=progress)
    plan = plan_config(fp, device=device, gpu_memory=gpu_memory, minutes=minutes, measure=measure)
    if write:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(out), render_plan(plan, f"brainseg plan for {Path(data_dir).resolve()}"))
    return plan, fp


__all__ = ["FINGERPRINT_FILE", "PLAN_FILE", "Plan", "plan_config", "plan_dataset", "render_plan"]
