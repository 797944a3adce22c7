"""Post hoc: the removal of core-less components (``postprocess.drop_coreless``) on masks a tumour model
already wrote, scored as predicted and with the rule applied, region and lesion-wise (BraTS 2021 labels).

    python -m scripts.experiments.tumour_family.components --labels OUT/heldout_labels OUT/masks/demo_s0 OUT/masks/demo_s1

One trained model per mask folder, so the comparison is paired: the same predictions, with and without
the rule (as :func:`brainseg.postprocess.components.postprocess_labels` applies it at prediction). Cases
are split by family as the tumour-family check names them (the independent generator's ids start at
``BraTS2021_5``). Prints one markdown table (a row per rule and mask folder) and each case's change.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from brainseg.config import PostprocessConfig
from brainseg.evaluate.lesions import region_lesion_scores
from brainseg.evaluate.metrics import dice
from brainseg.labels.regions import BRATS_2021
from brainseg.postprocess.components import postprocess_labels
from scripts.common import markdown_table
from scripts.experiments.tumour_family.family import TRAIN_BASE

CORE = BRATS_2021.class_order[1:]  # necrosis and enhancing tumour: the labels inside the whole tumour
RULES = {"as predicted": PostprocessConfig(), "core-less components removed": PostprocessConfig(drop_coreless=True)}


def family_of(case: str) -> str:
    return "independent" if int(case.rsplit("_", 1)[-1]) >= TRAIN_BASE else "demo"


def case_scores(mask: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Voxel-wise Dice of WT, TC and ET, their mean, and the lesion-wise WT Dice."""
    out = {n: dice(p, r) for n, p, r in zip(BRATS_2021.names, BRATS_2021.masks(mask), BRATS_2021.masks(ref))}
    out["mean"] = float(np.mean([out[n] for n in BRATS_2021.names]))
    out["lesion WT"] = region_lesion_scores(mask, ref, BRATS_2021, spacing)["WT"].dice
    return out


def score_folder(masks: Path, labels: Path) -> dict[str, dict[str, dict[str, float]]]:
    """rule -> case -> scores of every ``*.nii.gz`` mask in ``masks`` against ``labels/<case>.nii.gz``."""
    out: dict[str, dict[str, dict[str, float]]] = {rule: {} for rule in RULES}
    for path in sorted(masks.glob("*.nii.gz")):
        case = path.name.removesuffix(".nii.gz")
        img = nib.load(str(path))
        mask = np.asarray(img.dataobj).astype(np.int16)
        ref = np.asarray(nib.load(str(labels / path.name)).dataobj).astype(np.int16)
        spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
        for rule, cfg in RULES.items():
            out[rule][case] = case_scores(postprocess_labels(mask, spacing, cfg, CORE), ref, spacing)
    return out


def table(results: dict[str, dict[str, dict[str, dict[str, float]]]]) -> str:
    """One row per rule and mask folder: per family WT / TC / ET, the mean, the lesion-wise WT Dice."""
    rows: list[list[Any]] = []
    for rule in RULES:
        for folder, by_rule in results.items():
            row: list[Any] = [rule, folder]
            for family in ("demo", "independent"):
                cases = [s for c, s in by_rule[rule].items() if family_of(c) == family]
                if not cases:
                    row += ["-", "-"]
                    continue
                mean = {k: float(np.mean([s[k] for s in cases])) for k in cases[0]}
                row.append(" / ".join(f"{mean[n]:.3f}" for n in BRATS_2021.names) + f", **{mean['mean']:.3f}**")
                row.append(f"{mean['lesion WT']:.3f}")
            rows.append(row)
    header = ["rule", "masks", "demo: WT / TC / ET, mean", "lesion-wise WT", "independent: WT / TC / ET, mean"]
    return markdown_table(rows, [*header, "lesion-wise WT"])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("masks", type=Path, nargs="+", help="mask folders, one trained model each")
    p.add_argument("--labels", type=Path, required=True, help="reference labels (<case>.nii.gz)")
    args = p.parse_args(argv)
    results = {str(m): score_folder(m, args.labels) for m in args.masks}
    print(table(results))
    changes = [
        by_rule["core-less components removed"][c]["mean"] - s["mean"]
        for by_rule in results.values()
        for c, s in by_rule["as predicted"].items()
    ]
    print(f"\nchange of the mean region Dice per case: {' '.join(f'{d:+.3f}' for d in changes)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
