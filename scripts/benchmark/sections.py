"""The benchmark's sections, run in the parent process: each prepares its inputs, runs
the measuring children (:func:`~scripts.benchmark.harness.run_child`) and condenses what
they return."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scripts.benchmark.compare import dice_difference, mask_agreement, outside_range, placement_range
from scripts.benchmark.harness import log, run_child
from scripts.benchmark.reference import MONAI_MIRROR, MONAI_OVERLAP
from scripts.common import REPO, case_id


def network_info(model: Path, training: dict | None = None) -> dict:
    """The benchmarked network as its model card describes it (architecture and patch size), and which it
    is: ``source`` (the config and overrides it was trained here with, or the model given) and ``shipped``
    (``configs/demo.yaml`` as it is, the network ``make demo`` trains)."""
    from brainseg.model.checkpoint import load_card

    card = load_card(model)
    if training is not None:
        overrides = list(training["overrides"])
        source = " ".join([training["config"], *(f"--set {o}" for o in overrides)])
    else:
        overrides, source = [], str(model)
    shipped = training is not None and training["config"] == "configs/demo.yaml" and not overrides
    return dict(card.network.kwargs(), patch_size=list(card.patch_size), source=source, shipped=shipped)


def make_data(root: Path, n: int, n_test: int) -> Path:
    from brainseg.demo.tissue import make_demo_dataset

    return make_demo_dataset(root / "data", n=n, n_test=n_test, seed=0, verbose=False)


def train_section(data: Path, workdir: Path, minutes: float, norm: str | None) -> dict:
    """``configs/demo.yaml`` trained for ``minutes`` (``norm``: another ``model.norm``; None: the config's own)."""
    run_dir = workdir / "run"
    overrides = [] if norm is None else [f"model.norm={norm}"]
    res = run_child(
        "train",
        {
            "config": str(REPO / "configs" / "demo.yaml"),
            "data": str(data),
            "overrides": overrides,
            "run_dir": str(run_dir),
            "minutes": minutes,
        },
        workdir,
    )
    rows = res["metrics"]
    waits = [float(r["data_wait_fraction"]) for r in rows]
    secs = [float(r["epoch_seconds"]) for r in rows]
    steady = (sum(w * s for w, s in zip(waits[1:], secs[1:])) / sum(secs[1:])) if len(rows) > 1 else waits[0]
    overall = sum(w * s for w, s in zip(waits, secs)) / max(sum(secs), 1e-9)
    steps = int(rows[-1]["step"]) if rows else 0
    return {
        "run_dir": str(run_dir),
        "config": "configs/demo.yaml",
        "overrides": overrides,
        "minutes": minutes,
        "steps": steps,
        "seconds_per_step": sum(secs) / max(steps, 1),
        "data_wait_fraction": steady,
        "data_wait_fraction_first_epoch": waits[0] if waits else None,
        "data_wait_fraction_all_epochs": overall,
        "data_wait_per_epoch": waits,
        "epoch_seconds": secs,
        "val_dice_mean": res["summary"].get("val_dice_mean"),
        "maxrss_mb": res["maxrss_mb"],
        "load_1min_before": res["load_1min_before"],
        "other_cpu": res.get("other_cpu"),
        "note": "data_wait_fraction: time-weighted over epochs after the first (the first includes starting the "
        "loader worker); configs/demo.yaml (num_workers=1), CPU",
    }


def _best(runs: list[dict], key: str) -> dict:
    """The fastest of repeated runs, with every run's figure kept beside it."""
    best = dict(max(runs, key=lambda r: r[key]))
    best[f"{key}_runs"] = [r[key] for r in runs]
    return best


def inference_section(
    model: Path,
    data: Path,
    workdir: Path,
    n_cases: int,
    repeats: int = 1,
    compile_variant: bool = False,
    device: str = "cpu",
    shift_fractions: Sequence[float] = (),
) -> dict:
    from brainseg.infer.loading import preset_overrides
    from brainseg.model.checkpoint import load_card

    images = sorted(str(p) for p in (data / "imagesTs").glob("*_0000.nii.gz"))[:n_cases]
    warmup = sorted(str(p) for p in (data / "imagesTr").glob("*_0000.nii.gz"))[0]
    common = {"model": str(model), "images": images, "warmup": warmup, "device": device}
    out_b, out_m = workdir / f"pred_brainseg_{device}", workdir / f"pred_monai_{device}"
    card = load_card(model)
    # MONAI's window step; the reference is rerun (untimed) with its lattice moved by these fractions of it.
    steps = [max(1, int(p * (1 - MONAI_OVERLAP))) for p in card.patch_size]
    shifts = [[int(round(f * st)) for st in steps] for f in shift_fractions]
    fast_overrides = preset_overrides("fast")  # what brainseg predict --fast sets
    out_f = workdir / f"pred_brainseg_fast_{device}"
    runs_b, runs_f, runs_m = [], [], []
    for r in range(repeats):  # interleaved, so all sides see the machine's ups and downs
        log(f"inference: brainseg on {len(images)} cases ({device}), run {r + 1}/{repeats}, then its floor")
        runs_b.append(run_child("infer_brainseg", dict(common, out=str(out_b), floor=True), workdir))
        log(f"inference: brainseg --fast on {len(images)} cases ({device}), run {r + 1}/{repeats}, then its floor")
        spec_f = dict(common, out=str(out_f), overrides=fast_overrides, floor=True)
        runs_f.append(run_child("infer_brainseg", spec_f, workdir))
        log(
            f"inference: MONAI reference on {len(images)} cases ({device}), run {r + 1}/{repeats}"
            + (f", then (untimed) with its windows shifted by {shifts}" if r == 0 and shifts else "")
        )
        runs_m.append(run_child("infer_monai", dict(common, out=str(out_m), shifts=shifts if r == 0 else []), workdir))
    b, f, m = _best(runs_b, "mvox_per_s"), _best(runs_f, "mvox_per_s"), _best(runs_m, "mvox_per_s")
    compiled = None
    if compile_variant:
        log("inference: brainseg with torch.compile (opt-in; compile time in warmup_seconds)")
        try:
            compiled = run_child(
                "infer_brainseg", dict(common, out=str(workdir / "pred_compiled"), compile=True), workdir
            )
        except RuntimeError as exc:
            compiled = {"error": str(exc)[-600:]}

    values = card.label_values
    cmp = compare_masks(images, out_b, out_m, data, values)
    placement = None
    if runs_m[0].get("shifted"):
        per_label = {v: [cmp["dice_vs_reference_monai"][v]] for v in cmp["dice_vs_reference_monai"]}
        agreements = []
        for folder, shift in runs_m[0]["shifted"].items():
            c = compare_masks(images, Path(folder), out_m, data, values)
            for v in per_label:
                per_label[v].append(c["dice_vs_reference_brainseg"][v])
            agreements.append(
                {
                    "shift": shift,
                    "agreement": c["agreement"],
                    "agreement_min": c["agreement_min"],
                    "dice": c["dice_vs_reference_brainseg"],
                    "dice_diff": c["dice_diff"],
                }
            )
        spread = placement_range(per_label)
        gap = outside_range(cmp["dice_vs_reference_brainseg"], spread["range"])
        placement = {
            "shifts": [a["shift"] for a in agreements],
            "shifted_runs": agreements,  # each shifted MONAI run against the default one
            "dice_range": spread["range"],  # per label: [min, max] mean Dice over MONAI's placements
            "dice_spread_max": spread["spread_max"],
            "agreement_with_default_min": min(a["agreement"] for a in agreements),
            "brainseg_outside_range": gap,  # per label: how far brainseg's Dice lies outside that range
            "brainseg_outside_range_max": max(gap.values(), default=0.0),
        }
    no_margin = None
    if compile_variant:  # the full run: what infer.margin costs and buys
        log("inference: brainseg with infer.margin=0 (outer windows flush on the non-zero box)")
        nm = run_child(
            "infer_brainseg", dict(common, out=str(workdir / "pred_margin0"), overrides=["infer.margin=0"]), workdir
        )
        c = compare_masks(images, workdir / "pred_margin0", out_m, data, values)
        no_margin = {
            "mvox_per_s": nm["mvox_per_s"],
            "ratio_vs_monai": nm["mvox_per_s"] / m["mvox_per_s"],
            **{k: c[k] for k in ("agreement", "agreement_foreground", "dice_diff", "dice_diff_max")},
        }
    no_crop = None
    if compile_variant:  # the full run: how much of the difference the crop box makes
        log("inference: brainseg without the crop box and margin (windows over the whole volume, like MONAI)")
        nc = run_child(
            "infer_brainseg",
            dict(common, out=str(workdir / "pred_nocrop"), crop=False, overrides=["infer.margin=0"]),
            workdir,
        )
        c = compare_masks(images, workdir / "pred_nocrop", out_m, data, values)
        no_crop = {
            "mvox_per_s": nc["mvox_per_s"],
            "ratio_vs_monai": nc["mvox_per_s"] / m["mvox_per_s"],
            **{k: c[k] for k in ("agreement", "agreement_foreground", "dice_diff", "dice_diff_max")},
        }
    fp32 = None
    if compile_variant:  # the full run: what CPU bf16 (infer.amp on a CPU with native bf16) buys and costs
        log("inference: brainseg in float32 (infer.amp=none)")
        f32 = run_child(
            "infer_brainseg", dict(common, out=str(workdir / "pred_fp32"), overrides=["infer.amp=none"]), workdir
        )
        c = compare_masks(images, out_b, workdir / "pred_fp32", data, values)  # the default (a) against float32 (b)
        fp32 = {
            "mvox_per_s": f32["mvox_per_s"],
            "ratio_vs_monai": f32["mvox_per_s"] / m["mvox_per_s"],
            "default_speedup": b["mvox_per_s"] / f32["mvox_per_s"],
            **{k: c[k] for k in ("agreement", "dice_diff", "dice_diff_max")},  # default - float32
        }
    ratio = b["mvox_per_s"] / m["mvox_per_s"]
    worst_deficit = max((-d for d in cmp["dice_diff"].values()), default=0.0)
    fast_cmp = compare_masks(images, out_f, out_b, data, values)  # --fast (a) against the default mode (b)
    fast_ratio = f["mvox_per_s"] / m["mvox_per_s"]
    mirroring = {
        "brainseg": bool(b["config"]["infer"]["mirror"]),
        "brainseg_fast": bool(f["config"]["infer"]["mirror"]),
        "monai": MONAI_MIRROR,
    }
    mirroring["equal_work"] = mirroring["brainseg"] == mirroring["monai"]
    return {
        "brainseg": b,
        "monai": m,
        "mirroring": mirroring,  # test-time mirroring on each side: equal work when the same
        "brainseg_fast": dict(f, preset="fast", overrides=fast_overrides),
        "fast_ratio_vs_monai": fast_ratio,
        "fast_speedup_vs_default": f["mvox_per_s"] / b["mvox_per_s"],
        # --fast's masks against the default mode's: Dice vs the reference labels, fast - default, per label
        "fast_dice_vs_reference": fast_cmp["dice_vs_reference_brainseg"],
        "fast_dice_diff_vs_default": fast_cmp["dice_diff"],
        "fast_dice_diff_vs_default_max": fast_cmp["dice_diff_max"],
        "fast_agreement_with_default": fast_cmp["agreement"],
        # end-to-end seconds / one no-overlap pass of the network over the same (cropped) region
        "floor_ratio": {"default": b["seconds"] / b["floor_seconds"], "fast": f["seconds"] / f["floor_seconds"]},
        "windows": {"default": b["windows"], "fast": f["windows"], "floor": b["floor_windows"]},
        "reference_placement": placement,
        "criteria": {  # the targets, each as measured in this run
            "ratio_at_least_5": ratio >= 5.0,
            "fast_ratio_at_least_10": fast_ratio >= 10.0,
            "fast_dice_within_0.01_of_default": fast_cmp["dice_diff_max"] <= 0.01,
            "equal_work": mirroring["equal_work"],
            "agreement_at_least_98pct": cmp["agreement"] >= 0.98,
            "dice_diff_max_at_most_0.005": cmp["dice_diff_max"] <= 0.005,
            "dice_not_lower_by_more_than_0.005": worst_deficit <= 0.005,
            "dice_within_0.005_of_monai_placement_range": (
                placement["brainseg_outside_range_max"] <= 0.005 if placement else None
            ),
        },
        "brainseg_compiled": compiled,
        "brainseg_no_crop": no_crop,
        "brainseg_margin_0": no_margin,
        "brainseg_fp32": fp32,
        "ratio_vs_monai": ratio,
        "ratio_vs_monai_median_runs": float(np.median(b["mvox_per_s_runs"]) / np.median(m["mvox_per_s_runs"])),
        **cmp,
        "cases": [case_id(i) for i in images],
    }


def compare_masks(images: Sequence[str], out_a: Path, out_b: Path, data: Path, values: Sequence[int]) -> dict:
    """Masks of pipeline a (brainseg) against pipeline b (MONAI): agreement, Dice between them and vs the labels."""
    import nibabel as nib

    from brainseg.evaluate.metrics import dice
    from brainseg.io.images import read_image

    fg = [v for v in values if v != 0]
    agreements, per_a, per_b = [], {v: [] for v in fg}, {v: [] for v in fg}
    geometry_ok = True
    for image in images:
        cid = case_id(image)
        src = nib.load(image)
        pa, pb = nib.load(Path(out_a) / f"{cid}.nii.gz"), nib.load(Path(out_b) / f"{cid}.nii.gz")
        geometry_ok &= (
            pa.shape == src.shape[:3] == pb.shape
            and np.allclose(pa.affine, src.affine, atol=1e-4)
            and np.allclose(pb.affine, src.affine, atol=1e-4)
        )
        a, bb = np.asarray(pa.dataobj), np.asarray(pb.dataobj)
        agreements.append(mask_agreement(a, bb, values))
        ref_path = data / "labelsTs" / f"{cid}.nii.gz"
        if ref_path.is_file():
            ref, _ = read_image(ref_path)
            for v in fg:
                per_a[v].append(dice(a == v, ref == v))
                per_b[v].append(dice(bb == v, ref == v))
    dd = dice_difference(per_a, per_b)
    return {
        "agreement": float(np.mean([a["agreement"] for a in agreements])),
        "agreement_min": float(np.min([a["agreement"] for a in agreements])),
        "agreement_foreground": float(np.mean([a["agreement_foreground"] for a in agreements])),
        "dice_between_masks": {v: float(np.mean([a["dice"][v] for a in agreements])) for v in fg},
        "dice_vs_reference_brainseg": dd["mean_a"],
        "dice_vs_reference_monai": dd["mean_b"],
        "dice_diff": dd["diff"],  # brainseg - MONAI, mean Dice per label
        "dice_diff_max": dd["max"],  # largest |difference|
        "dice_diff_max_per_case": dd["max_per_case"],
        "geometry_identical": bool(geometry_ok),
    }


def loader_section(
    data: Path, model: Path, workdir: Path, sizes: dict[int, int], warmup: int, repeats: int = 1
) -> dict:
    from brainseg.data.layouts import discover_dataset
    from brainseg.model.checkpoint import load_card
    from brainseg.preprocessing.cache import cache_cases

    card = load_card(model)
    ds = discover_dataset(data)
    cache = workdir / "loader_cache"
    cache_cases(ds.train, cache, card.spacing, card.label_values, progress=False)
    out: dict[str, Any] = {"threads": 1, "workers": 0, "cases": len(ds.train), "spacing": list(card.spacing)}
    for patch, n in sizes.items():
        spec = {"cache": str(cache), "patch": patch, "n": n, "warmup": warmup, "threads": 1}
        runs_b, runs_m = [], []
        for r in range(repeats):
            log(f"loader: brainseg {patch}^3 x {n}, run {r + 1}/{repeats}")
            runs_b.append(run_child("loader_brainseg", spec, workdir))
            log(f"loader: MONAI {patch}^3 x {n}, run {r + 1}/{repeats}")
            runs_m.append(run_child("loader_monai", spec, workdir))
        b, m = _best(runs_b, "patches_per_s"), _best(runs_m, "patches_per_s")
        entry = {"brainseg": b, "monai": m, "ratio_vs_monai_raw": b["patches_per_s"] / m["patches_per_s"]}
        if b.get("patches_per_s_at_config_mix") and m.get("patches_per_s_at_config_mix"):
            # headline: both at the configured share of rotated/scaled patches
            entry["ratio_vs_monai"] = b["patches_per_s_at_config_mix"] / m["patches_per_s_at_config_mix"]
            entry["ratio_basis"] = "config mix"
        else:
            entry["ratio_vs_monai"] = entry["ratio_vs_monai_raw"]
            entry["ratio_basis"] = "raw (a sample drew no spatial or no plain patch)"
        out[f"{patch}"] = entry
    # headline: the geometric mean over patch sizes
    ratios = [out[f"{p}"]["ratio_vs_monai"] for p in sizes]
    out["ratio_vs_monai"] = float(np.exp(np.mean(np.log(ratios))))
    out["ratio_vs_monai_min"] = float(min(ratios))
    return out


def ensemble_section(model: Path, data: Path, workdir: Path, members: int, n_cases: int) -> dict:
    """Optional (``--only ensemble``): a ``members``-model ensemble's time against that many single-model
    predictions of the same held-out cases (:func:`~scripts.benchmark.children.child_ensemble`)."""
    images = sorted(str(p) for p in (data / "imagesTs").glob("*_0000.nii.gz"))[:n_cases]
    warmup = sorted(str(p) for p in (data / "imagesTr").glob("*_0000.nii.gz"))[0]
    log(f"ensemble: {members} members against {members} single predictions of {len(images)} cases")
    spec = {"model": str(model), "images": images, "warmup": warmup, "members": members}
    return run_child("ensemble", dict(spec, out=str(workdir / "ensemble")), workdir)


def gpu_section(model: Path, data: Path, workdir: Path, n_cases: int) -> dict:
    """CUDA only: fp32 vs bf16, channels-last on/off, torch.compile, and MONAI on the GPU."""
    import torch

    if not torch.cuda.is_available():
        return {"available": False, "note": "not run: torch.cuda.is_available() is False on this machine"}
    images = sorted(str(p) for p in (data / "imagesTs").glob("*_0000.nii.gz"))[:n_cases]
    warmup = sorted(str(p) for p in (data / "imagesTr").glob("*_0000.nii.gz"))[0]
    common = {"model": str(model), "images": images, "warmup": warmup, "device": "cuda"}
    variants = {
        "fp32": {"overrides": ["infer.amp=none", "infer.channels_last=false"]},
        "fp32_channels_last": {"overrides": ["infer.amp=none", "infer.channels_last=true"]},
        "bf16": {"overrides": ["infer.amp=bf16", "infer.channels_last=false"]},
        "bf16_channels_last": {"overrides": ["infer.amp=bf16", "infer.channels_last=true"]},
        "bf16_channels_last_compile": {"overrides": ["infer.amp=bf16", "infer.channels_last=true"], "compile": True},
    }
    out: dict[str, Any] = {"available": True, "device": torch.cuda.get_device_name(0)}
    for name, extra in variants.items():
        log(f"gpu: brainseg {name}")
        try:
            out[name] = run_child("infer_brainseg", dict(common, out=str(workdir / f"gpu_{name}"), **extra), workdir)
        except RuntimeError as exc:  # e.g. torch.compile without a compiler: record, go on
            out[name] = {"error": str(exc)[-600:]}
    log("gpu: MONAI reference")
    out["monai"] = run_child("infer_monai", dict(common, out=str(workdir / "gpu_monai")), workdir)
    best = max(
        (v["mvox_per_s"] for k, v in out.items() if isinstance(v, dict) and "mvox_per_s" in v and k != "monai"),
        default=None,
    )
    if best is not None:
        out["ratio_best_vs_monai"] = best / out["monai"]["mvox_per_s"]
    return out
