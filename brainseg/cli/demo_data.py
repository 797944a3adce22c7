"""``brainseg demo-data``: the demo data sets from the MNI template (tissue, hemispheres, tumour)."""

from __future__ import annotations

import argparse
from pathlib import Path

from brainseg.demo.tissue import KINDS, make_demo_dataset
from brainseg.demo.tumour import DEFAULT_SPACING_MM, LAYOUTS, make_tumour_dataset
from brainseg.errors import BrainsegError


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("demo-data", help="write a demo data set (tissue or tumour) made from the MNI template")
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--n", type=int, default=None, help="number of subjects (default 10; 12 for --kind tumour)")
    p.add_argument(
        "--n-test",
        type=int,
        default=None,
        help="how many of them are held out (imagesTs, or test/ for BraTS; default: a quarter, at least 1)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--kind",
        choices=KINDS,
        default="tissue",
        help="tissue: CSF, grey, white matter; hemispheres: grey and white matter split into left and right; "
        "tumour: BraTS-like four-contrast cases with oedema, enhancing tumour and necrosis",
    )
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default=None,
        help="--kind tumour only: brats2021 (default; train/ID/ID_t1.nii.gz ...), brats2023 (ID-t1n ...) "
        "or msd (nnU-Net v2 dataset.json with regions, Task01 channels and labels)",
    )
    p.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        default=None,
        metavar=("X", "Y", "Z"),
        help="every subject's voxel size in mm along its left-right, posterior-anterior, inferior-superior axes "
        "(e.g. 0.9 0.9 4: 4 mm axial slices, whatever the file's axis order), instead of random 1-2.2 mm "
        f"(tumour: {DEFAULT_SPACING_MM:g} mm isotropic)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    spacing = tuple(args.spacing) if args.spacing else None
    if args.kind == "tumour":
        out = make_tumour_dataset(
            args.out,
            n=12 if args.n is None else args.n,
            n_test=args.n_test,
            seed=args.seed,
            layout=args.layout or "brats2021",
            spacing=spacing,
        )
    elif args.layout is not None:
        raise BrainsegError(
            f"--layout {args.layout}: only --kind tumour has layouts (the {args.kind} kind is written as nnU-Net / MSD)"
        )
    else:
        out = make_demo_dataset(
            args.out,
            n=10 if args.n is None else args.n,
            n_test=args.n_test,
            seed=args.seed,
            kind=args.kind,
            spacing=spacing,
        )
    print(f"demo data set written to {out}")
    return 0
