"""``brainseg demo-data``: the demo tissue data set from the MNI template."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.demo import KINDS, make_demo_dataset


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("demo-data", help="write the demo tissue data set (MSD layout) from the MNI template")
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--n", type=int, default=10, help="number of subjects (default 10)")
    p.add_argument("--n-test", type=int, default=None, help="how many of them go to imagesTs (default: a quarter, at least 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kind", choices=KINDS, default="tissue",
                   help="tissue: CSF, grey, white matter; hemispheres: grey and white matter split into left and right")
    p.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="every subject's voxel size per file axis in mm (e.g. 0.9 0.9 4), instead of random 1-2.2 mm")
    return p


def run(args: argparse.Namespace) -> int:
    out = make_demo_dataset(args.out, n=args.n, n_test=args.n_test, seed=args.seed, kind=args.kind,
                            spacing=tuple(args.spacing) if args.spacing else None)
    print(f"demo data set written to {out}")
    return 0
