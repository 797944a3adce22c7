"""``brainseg plan --data DIR``: fingerprint a data set and write a complete, commented config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("plan", help="configure training for a data set (writes a commented YAML config)")
    p.add_argument("--data", type=Path, required=True, help="data set folder (MSD, BraTS or images/labels layout)")
    p.add_argument("--out", type=Path, default=Path("plan.yaml"), help="the config to write (default: plan.yaml)")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="what training will run on (auto: cuda when there is one)",
    )
    p.add_argument(
        "--gpu-memory",
        type=float,
        default=8.0,
        metavar="GB",
        help="GPU memory the training step may use (default 8, nnU-Net's reference)",
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="the training time to plan for (CPU: sizes the network and sets the steps)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def planned_device(spec: str) -> str:
    if spec == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if spec.startswith("cuda") else "cpu"


def fingerprint_bar(enabled: bool):
    def bar(cases):
        return tqdm(cases, desc="fingerprint", unit="case", disable=not enabled, file=sys.stderr)

    return bar


def run(args: argparse.Namespace) -> int:
    from brainseg.plan import plan_dataset

    plan, fp = plan_dataset(
        args.data,
        args.out,
        fingerprint_cache=args.out.with_suffix(".fingerprint.json"),
        device=planned_device(args.device),
        gpu_memory=args.gpu_memory,
        minutes=args.minutes,
        progress=fingerprint_bar(not args.no_progress),
    )
    print(plan.summary())
    print(f"wrote {args.out} (train with: brainseg train --data {args.data} --config {args.out} --out RUN)")
    return 0
