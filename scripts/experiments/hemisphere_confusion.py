"""Left/right confusion of predicted masks: per case, the fraction of the reference's
left/right-labelled voxels that the prediction gives the other side's label, and per
pair the Dice of the left and the right label.

    python -m scripts.experiments.hemisphere_confusion --pred MASKS/ --ref LABELS/ [--pairs 2,3 4,5]

The pairs default to 2,3 4,5 (the hemispheres demo's left/right grey and white matter).
Prints a table, the means and the left/right Dice gaps; ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from brainseg.evaluate.metrics import dice, side_confusion
from brainseg.io.images import read_label
from brainseg.io.naming import strip_suffix


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m scripts.experiments.hemisphere_confusion",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--pred", type=Path, required=True)
    p.add_argument("--ref", type=Path, required=True)
    p.add_argument("--pairs", nargs="*", default=["2,3", "4,5"], help="left,right label pairs (default 2,3 4,5)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    pairs = [tuple(int(v) for v in s.split(",")) for s in args.pairs]
    rows = {}
    for ref_path in sorted(args.ref.glob("*.nii.gz")):
        pred_path = args.pred / ref_path.name
        if not pred_path.is_file():
            continue
        pred, _ = read_label(pred_path)
        ref, _ = read_label(ref_path)
        rows[strip_suffix(ref_path)] = {
            "confusion": side_confusion(pred, ref, pairs),
            **{f"dice_{a}": dice(pred == a, ref == a) for pair in pairs for a in pair},
        }
    if not rows:
        raise SystemExit(f"no prediction in {args.pred} has a reference in {args.ref}")
    cols = list(next(iter(rows.values())))
    print("case".ljust(16) + "".join(c.rjust(11) for c in cols))
    for case, r in rows.items():
        print(case.ljust(16) + "".join(f"{r[c]:11.4f}" for c in cols))
    means = {c: float(np.mean([r[c] for r in rows.values()])) for c in cols}
    print("mean".ljust(16) + "".join(f"{means[c]:11.4f}" for c in cols))
    gaps = {f"{a}-{b}": abs(means[f"dice_{a}"] - means[f"dice_{b}"]) for a, b in pairs}
    print("left/right Dice gaps: " + ", ".join(f"{k} {v:.4f}" for k, v in gaps.items()))
    if args.json:
        args.json.write_text(json.dumps({"cases": rows, "mean": means, "gaps": gaps}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
