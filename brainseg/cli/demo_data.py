"""``brainseg demo-data``: the demo tissue data set from the MNI template."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.demo import make_demo_dataset


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("demo-data", help="write the demo tissue data set (MSD layout) from the MNI template")
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--n", type=int, default=10, help="number of subjects (default 10)")
    p.add_argument("--n-test", type=int, default=None, help="how many of them go to imagesTs (default: a quarter, at least 1)")
    p.add_argument("--seed", type=int, default=0)
    return p


def run(args: argparse.Namespace) -> int:
    out = make_demo_dataset(args.out, n=args.n, n_test=args.n_test, seed=args.seed)
    print(f"demo data set written to {out}")
    return 0
