"""``brainseg demo``: demo data -> train -> predict -> evaluate, end to end."""

from __future__ import annotations

import argparse
from pathlib import Path

from brainseg.demo.tissue import KINDS


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="demo data -> train -> predict -> evaluate, end to end")
    p.add_argument("--out", type=Path, default=Path("demo_output"), help="where everything is written")
    p.add_argument("--n", type=int, default=None, help="number of demo subjects (default 10; tumour: 16, 4 held out)")
    p.add_argument("--config", type=Path, default=None, help="config (default: configs/demo.yaml settings)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--max-minutes", type=float, default=10.0, help="training budget in minutes")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--kind",
        choices=KINDS,
        default="tissue",
        help="tissue (default), hemispheres, or tumour: BraTS-like tumours, a region model "
        "(WT, TC, ET) trained with configs/brats_cpu.yaml",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from brainseg.demo.pipeline import TUMOUR_CASES, run_demo
    from brainseg.runtime import check_device_spec

    result = run_demo(
        args.out,
        n=args.n if args.n is not None else (TUMOUR_CASES if args.kind == "tumour" else 10),
        config=args.config,
        overrides=args.overrides,
        max_minutes=args.max_minutes,
        device=check_device_spec(args.device),
        seed=args.seed,
        progress=not args.quiet,
        kind=args.kind,
    )
    summary, names = result.summary, result.label_names
    print("\nDice on the held-out demo subjects")
    print(f"  {'label':<16}{'mean':>8}{'std':>8}")
    for key, stats in summary["labels"].items():
        d = stats["dice"]
        print(f"  {names.get(int(key), key):<16}{d['mean']:>8.3f}{d['std']:>8.3f}")
    print(f"  {'mean foreground':<16}{summary['overall']['dice']['mean']:>8.3f}")
    if result.regions:
        print("\nDice per tumour region (BraTS: WT whole tumour, TC tumour core, ET enhancing tumour)")
        print(f"  {'region':<16}{'mean':>8}{'std':>8}")
        for name, stats in result.regions.items():
            print(f"  {name:<16}{stats['mean']:>8.3f}{stats['std']:>8.3f}")
    out, run_dir = result.out, result.run_dir
    print(f"\nfinished in {result.minutes:.1f} min. Everything is in {out}/:")
    print(f"  training curves   {run_dir / 'curves.png'}")
    print(f"  model             {run_dir}  (brainseg predict --model {run_dir} ...)")
    print(f"  masks + volumes   {result.predictions}")
    print(f"  Dice per case     {result.evaluation / 'metrics.csv'}")
    print(f"  overlay           {result.overlay}")
    return 0
