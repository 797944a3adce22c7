"""Are a U-Net's skip connections a regulariser, or do they carry fine spatial detail?

Trains the same network (``configs/demo.yaml``) in several arms that differ only in
what the skips are (``model.skip_mode``, see :mod:`brainseg.model.unet`), with the same
time budget and the same seeds, then scores every arm on held-out subjects::

    python -m scripts.experiments.skip_ablation --out ablation/                  # 3 arms x 2 seeds x 2.5 min
    python -m scripts.experiments.skip_ablation --quick --out ablation_quick/    # 3 arms x 1 seed x 2 min
    python -m scripts.experiments.skip_ablation --minutes 5 --seeds 3 --out DIR  # more budget, more seeds
    python -m scripts.experiments.skip_ablation --data MSD_ROOT --out DIR        # own data (imagesTs + labelsTs held out)

Arms (``--arms``, default ``concat,none,lowpass``):

* ``concat``: the U-Net as configured (encoder features concatenated at every level);
* ``none``: ``model.skip_mode=none``, every path runs through the bottleneck;
* ``lowpass``: ``model.skip_mode=lowpass``, the skips stay (the same short gradient path
  from the loss to every encoder stage, the same extra decoder input) but each is
  average-pooled to the bottleneck's grid and upsampled back, so it carries no detail
  finer than what a cut network sees. If skips mainly regularised or eased the
  optimisation, ``lowpass`` would behave like ``concat``; if they carry detail, like
  ``none``;
* ``add`` (optional): skips added instead of concatenated.

Per arm and seed, on the held-out subjects (each in its own voxel grid): Dice, HD95,
surface Dice at 1 mm (and 2 mm) tolerance, Dice per distance-to-boundary bin
(:mod:`~scripts.experiments.skip_ablation.metrics`; pooled over the tissues and the held-out subjects: all tissue
voxels at that distance, so a tissue absent from a bin does not move the curve), and
the same network's Dice on its own training subjects
(the train - held-out gap tests the regulariser hypothesis). Everything goes to
``OUT/report.json``, ``OUT/report.md`` and ``OUT/*.png`` (:mod:`~scripts.experiments.skip_ablation.report`);
runs, masks and data stay under ``OUT/work/`` (a finished run is reused on a rerun).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from scripts.common import REPO, git_state, logger
from scripts.experiments.skip_ablation.metrics import DISTANCE_EDGES_MM, bin_names, case_scores, dice_by_distance

#: arm -> (overrides of configs/demo.yaml, what it is)
ARMS = {
    "concat": ([], "U-Net skips: encoder features concatenated at full resolution (the config as is)"),
    "none": (["model.skip_mode=none"], "no skips: every path runs through the bottleneck"),
    "lowpass": (
        ["model.skip_mode=lowpass"],
        "low-pass skips: concatenated after average pooling to the bottleneck grid and trilinear upsampling",
    ),
    "add": (["model.skip_mode=add"], "additive skips: encoder features added to the upsampled ones"),
}
QUICK = {"minutes": 2.0, "seeds": 1, "n": 8}
FULL = {"minutes": 2.5, "seeds": 2, "n": 10}
TOLERANCES_MM = (1.0, 2.0)
SCALARS = (
    "dice",
    "heldout_dice",
    "train_dice",
    "gap",
    "hd95",
    "hd95_n_inf",
    "surface_dice",
    "surface_dice_2mm",
    "far_false_positives",
    "steps",
)


PROG = "python -m scripts.experiments.skip_ablation"
log = logger("skip-ablation")


# ----------------------------------------------------------------------------- data


def prepare_data(args, work: Path):
    """The data set folder and its (training, held-out) cases; demo data unless ``--data``."""
    from brainseg.data.layouts import discover_dataset
    from brainseg.demo.tissue import make_demo_dataset

    if args.data is not None:
        data = Path(args.data)
    else:
        data = work / "data"
        if not (data / "dataset.json").is_file():
            log(f"demo data: {args.n} subjects (seed {args.data_seed}) -> {data}")
            make_demo_dataset(data, n=args.n, seed=args.data_seed, verbose=False)
    ds = discover_dataset(data)
    heldout = [c for c in ds.test if c.label is not None]
    if not heldout:
        raise SystemExit(f"{data}: no labelled held-out cases (imagesTs + labelsTs)")
    return data, ds.train, heldout, {v: n for v, n in sorted(ds.labels.items()) if v != 0}


# ----------------------------------------------------------------------------- one run


def train_arm(arm: str, seed: int, data: Path, work: Path, minutes: float, device: str, config: Path) -> dict:
    from brainseg.config import load_config
    from brainseg.train.trainer import train

    run_dir = work / "runs" / f"{arm}_seed{seed}"
    overrides = ARMS[arm][0] + [f"train.seed={seed}", f"data.cache_dir={work / 'cache'}"]
    cfg = load_config(config, overrides)
    info_path = run_dir / "ablation_run.json"
    if (run_dir / "checkpoint_final.pt").is_file() and info_path.is_file():
        log(f"{arm} seed {seed}: finished run found in {run_dir}, reused")
        return {**json.loads(info_path.read_text()), "reused": True}
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished run of this experiment: start it again
    log(f"{arm} seed {seed}: training {minutes:g} min ({' '.join(overrides[:-1])})")
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    summary = train(data, run_dir, cfg, device=device, max_minutes=minutes, progress=False)
    info = {
        "run_dir": str(run_dir),
        "overrides": overrides[:-1],  # the shared cache folder changes nothing in the training
        "steps": int(summary["steps"]),
        "train_minutes": float(summary["minutes"]),
        "seconds_per_step": 60.0 * float(summary["minutes"]) / max(int(summary["steps"]), 1),
        "load_1min_before": load_before,
        "load_1min_after": os.getloadavg()[0],
        "train_wall_seconds": time.perf_counter() - started,
    }
    info_path.write_text(json.dumps(info, indent=1))
    info["reused"] = False
    log(f"{arm} seed {seed}: {info['steps']} steps ({info['seconds_per_step']:.2f} s/step)")
    return info


def evaluate_arm(run_dir: Path, train_cases, heldout, labels, device: str) -> dict:
    """Predict held-out and training subjects with the run's model; score them."""
    from brainseg.infer.loading import inference_config
    from brainseg.infer.predictor import Predictor
    from brainseg.io.images import read_label, write_image
    from brainseg.model.checkpoint import load_model

    model, card = load_model(run_dir, device)
    # scored without test-time mirroring (8x the time; the arms are compared as the network decides alone)
    cfg = inference_config(card, None, ["infer.mirror=false"])
    predictor = Predictor(model, card, cfg.infer, cfg.postprocess, device, max_voxels=cfg.data.max_voxels)
    trained_ids = set(json.loads((run_dir / "split.json").read_text())["train"])
    masks = run_dir / "heldout_masks"
    masks.mkdir(exist_ok=True)

    def score(case, boundaries: bool) -> dict:
        pred, _, geometry = predictor.predict_case(case.images)
        ref, ref_geometry = read_label(case.label)
        if boundaries:
            write_image(masks / f"{case.case_id}.nii.gz", pred, geometry)
        return case_scores(pred, ref, ref_geometry.spacing, labels, TOLERANCES_MM, DISTANCE_EDGES_MM, boundaries)

    held = {c.case_id: score(c, True) for c in heldout}
    trained = [score(c, False) for c in train_cases if c.case_id in trained_ids]
    return summarise_run(held, trained, labels)


def _case_mean(scores: list[dict], key: str, tolerance: float | None = None) -> float:
    values = []
    for s in scores:
        per_label = s[key][tolerance] if tolerance is not None else s[key]
        values.append(float(np.mean(list(per_label.values()))))
    return float(np.mean(values))


def summarise_run(by_case: dict[str, dict], trained: list[dict], labels) -> dict:
    """One run's numbers: means over cases of the mean over foreground labels, and each held-out case's."""
    held = list(by_case.values())
    heldout_dice = _case_mean(held, "dice")
    train_dice = _case_mean(trained, "dice") if trained else float("nan")
    hd = [v for s in held for v in s["hd95"].values()]
    finite = [v for v in hd if math.isfinite(v)]
    counts = sum(s["counts"] for s in held)
    by_bin = dice_by_distance(counts)  # (labels, bins), pooled over the held-out cases
    voxels = sum(s["voxels_per_bin"] for s in held)
    return {
        "dice": heldout_dice,
        "heldout_dice": heldout_dice,
        "train_dice": train_dice,
        "gap": train_dice - heldout_dice,
        "hd95": float(np.mean(finite)) if finite else None,
        "hd95_n_inf": len(hd) - len(finite),
        "surface_dice": _case_mean(held, "surface_dice", 1.0),
        "surface_dice_2mm": _case_mean(held, "surface_dice", 2.0),
        "dice_per_label": {str(v): float(np.mean([s["dice"][v] for s in held])) for v in labels},
        "train_dice_per_label": {str(v): float(np.mean([s["dice"][v] for s in trained])) for v in labels}
        if trained
        else {},
        "boundary_dice": [float(x) for x in dice_by_distance(counts.sum(axis=0))],  # pooled over tissues too
        "boundary_dice_per_label": {str(v): [float(x) for x in row] for v, row in zip(labels, by_bin)},
        "boundary_voxel_share": [float(x) for x in voxels / max(voxels.sum(), 1)],
        "far_false_positives": float(np.mean([s["far_false_positives"] for s in held])),
        "cases": {
            cid: {
                "dice": {str(v): s["dice"][v] for v in labels},
                "hd95": {str(v): s["hd95"][v] for v in labels},
                "surface_dice": {str(v): s["surface_dice"][1.0][v] for v in labels},
                "far_false_positives": s["far_false_positives"],
            }
            for cid, s in by_case.items()
        },
        "n_heldout": len(held),
        "n_train": len(trained),
    }


# ----------------------------------------------------------------------------- across seeds


def _std(values: list[float]) -> float | None:
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def across_seeds(per_seed: list[dict]) -> tuple[dict, dict]:
    """Mean and sample std (ddof=1; null with one seed) of every scalar and of the boundary curve."""
    mean, std = {}, {}
    for key in SCALARS:
        values = [float(r[key]) for r in per_seed if r.get(key) is not None]
        mean[key] = float(np.mean(values)) if values else None
        std[key] = _std(values) if values else None
    curves = np.array([r["boundary_dice"] for r in per_seed], dtype=float)
    mean["boundary_dice"] = [float(x) for x in curves.mean(axis=0)]
    std["boundary_dice"] = [float(x) for x in curves.std(axis=0, ddof=1)] if len(curves) > 1 else None
    return mean, std


def paired_differences(arms: dict, base: str = "concat") -> None:
    """Per seed, arm minus ``base`` (same seed: same split, same data order): ``vs_concat`` in each arm."""
    if base not in arms:
        return
    ref = {r["seed"]: r for r in arms[base]["per_seed"]}
    for name, arm in arms.items():
        if name == base:
            continue
        diffs: dict[str, list] = {k: [] for k in SCALARS if k != "steps"}
        diffs["boundary_dice"] = []
        for r in arm["per_seed"]:
            b = ref.get(r["seed"])
            if b is None:
                continue
            for k in diffs:
                if k == "boundary_dice":
                    diffs[k].append([x - y for x, y in zip(r[k], b[k])])
                elif r.get(k) is not None and b.get(k) is not None:
                    diffs[k].append(float(r[k]) - float(b[k]))
        arm["vs_concat"] = diffs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for report.json, report.md, figures, work/")
    p.add_argument("--quick", action="store_true", help=f"smaller run: {QUICK}")
    p.add_argument(
        "--minutes",
        type=float,
        help=f"training budget per arm and seed (default {FULL['minutes']}, quick {QUICK['minutes']})",
    )
    p.add_argument("--seeds", type=int, help=f"seeds per arm (default {FULL['seeds']}, quick {QUICK['seeds']})")
    p.add_argument("--n", type=int, help=f"demo subjects (default {FULL['n']}, quick {QUICK['n']}; a quarter held out)")
    p.add_argument("--data", type=Path, help="an MSD/nnU-Net data set instead of demo data (labelsTs needed)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the demo data set")
    p.add_argument("--arms", default="concat,none,lowpass", help=f"comma-separated, of {', '.join(ARMS)}")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml")
    p.add_argument("--device", default="cpu", help="cpu (default), auto or cuda")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key in ("minutes", "seeds", "n"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        p.error(f"--arms: unknown {unknown}; choose from {', '.join(ARMS)}")
    if args.seeds < 1 or args.minutes <= 0:
        p.error("--seeds must be >= 1 and --minutes > 0")

    import matplotlib

    matplotlib.use("Agg")  # the figures are files; set here, not in the library
    import torch

    from scripts.experiments.skip_ablation.report import write_figures, write_markdown

    started = time.perf_counter()
    out = args.out
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    data, train_cases, heldout, names = prepare_data(args, work)
    labels = list(names)
    log(f"data {data}: {len(train_cases)} training, {len(heldout)} held-out subjects; labels {names}")

    results: dict[str, dict] = {a: {"description": ARMS[a][1], "overrides": ARMS[a][0], "per_seed": []} for a in arms}
    for seed in range(args.seeds):  # arms interleaved per seed: a change of machine load hits them alike
        for arm in arms:
            info = train_arm(arm, seed, data, work, args.minutes, args.device, args.config)
            t0 = time.perf_counter()
            scores = evaluate_arm(Path(info["run_dir"]), train_cases, heldout, labels, args.device)
            log(
                f"{arm} seed {seed}: held-out Dice {scores['dice']:.4f}, train Dice {scores['train_dice']:.4f} "
                f"({time.perf_counter() - t0:.0f} s to predict and score)"
            )
            results[arm]["per_seed"].append({"seed": seed, **info, **scores})
    for arm in results.values():
        arm["mean"], arm["std"] = across_seeds(arm["per_seed"])
    paired_differences(results)

    report = {
        "question": "are skip connections mainly a regulariser, or do they carry fine spatial detail?",
        "settings": {
            "quick": args.quick,
            "minutes_per_run": args.minutes,
            "seeds": list(range(args.seeds)),
            "arms": arms,
            "config": str(args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config),
            "data": str(data),
            "demo_subjects": None if args.data else args.n,
            "data_seed": None if args.data else args.data_seed,
            "heldout_cases": [c.case_id for c in heldout],
            "labels": {str(v): n for v, n in names.items()},
            "device": args.device,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "surface_dice_tolerances_mm": list(TOLERANCES_MM),
            "distance_bins_mm": list(DISTANCE_EDGES_MM),
            "distance_bin_names": bin_names(DISTANCE_EDGES_MM),
            "std": "sample std across seeds (ddof=1); null with one seed",
        },
        "git": git_state(),
        "arms": results,
    }
    report["figures"] = write_figures(report, out, heldout[0])
    report["wall_seconds"] = time.perf_counter() - started  # this invocation (reused runs were trained before)
    report["runs_reused"] = sum(r["reused"] for a in results.values() for r in a["per_seed"])
    report = _finite(report)
    (out / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    write_markdown(report, out / "report.md")
    log(f"done in {report['wall_seconds'] / 60:.1f} min: {out / 'report.md'}")
    return 0


def _finite(value):
    """The report with numpy scalars made Python ones and NaN/inf made null (strict JSON)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
