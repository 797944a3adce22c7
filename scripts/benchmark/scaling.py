"""Time and memory against volume size: the parent's section (:func:`scaling_section`: one demo
subject resampled to N³ per size) and its child (:func:`child_scale`: one warm prediction per size,
its peak RSS set against the windows and the full-volume class maps it aggregates into)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from scripts.benchmark.compare import linearity
from scripts.benchmark.harness import log, maxrss_mb, reset_peak_rss, run_child, spatial_voxels

SCALING_SPACING_FACTOR = 0.9


def make_scaled_volume(src: Path, size: int, spacing: Sequence[float], dst: Path) -> Path:
    """``src`` resampled to size³ voxels, stored LPS with voxels SCALING_SPACING_FACTOR x ``spacing``."""
    import torch
    import torch.nn.functional as F

    from brainseg.io.images import Geometry, read_image, write_image
    from brainseg.preprocessing.preprocess import ras_orientation, reorient_array

    data, geom = read_image(src)
    ras = reorient_array(data, ras_orientation(geom))
    t = torch.from_numpy(np.ascontiguousarray(ras, dtype=np.float32))[None, None]
    vol = F.interpolate(t, size=(size,) * 3, mode="trilinear", align_corners=False)[0, 0].numpy()
    vol = np.ascontiguousarray(vol[::-1, ::-1, :])  # LPS voxel order
    s = [float(v) * SCALING_SPACING_FACTOR for v in spacing]
    affine = np.diag([-s[0], -s[1], s[2], 1.0])
    write_image(dst, vol, Geometry(shape=vol.shape, affine=affine), dtype=np.float32)
    return dst


def scaling_section(model: Path, data: Path, workdir: Path, sizes: Sequence[int]) -> dict:
    from brainseg.model.checkpoint import load_card

    card = load_card(model)
    src = sorted((data / "imagesTs").glob("*_0000.nii.gz"))[0]
    folder = workdir / "scaling"
    folder.mkdir(exist_ok=True)
    warm = make_scaled_volume(src, 64, card.spacing, folder / "warm_0000.nii.gz")
    rows = []
    for size in sizes:
        path = make_scaled_volume(src, size, card.spacing, folder / f"size{size}_0000.nii.gz")
        log(f"scaling: {size}^3")
        r = run_child(
            "scale",
            {"model": str(model), "image": str(path), "warmup": str(warm), "out": str(workdir / "scaling_out")},
            workdir,
        )
        r["size"] = size
        r["mvox"] = r["voxels"] / 1e6
        r["delta_rss_mb"] = r["maxrss_mb"] - r["maxrss_base_mb"]
        rows.append(r)
        path.unlink()
    mvox = [r["mvox"] for r in rows]
    windows = [r["windows"] for r in rows]
    return {
        "rows": rows,
        "time": linearity(mvox, [r["seconds"] for r in rows]),
        "time_per_window": linearity(windows, [r["seconds"] for r in rows]),
        "memory": linearity(mvox, [max(r["delta_rss_mb"], 1e-3) for r in rows]),
        "note": "memory: peak RSS during the case minus the RSS just before it (peak mark reset after a 64^3 "
        "warm-up), VmHWM, fresh process per size. Windows per MVox grow with size toward 8x the cropped "
        "volume (overlap 0.5 per axis), so s/MVox rises toward a constant; s/window stays flat.",
    }


def child_scale(spec: dict) -> dict:
    import torch

    from brainseg.data.inputs import discover_inputs
    from brainseg.infer.loading import inference_config
    from brainseg.infer.outputs import output_paths, predict_one
    from brainseg.infer.predictor import Predictor
    from brainseg.model.checkpoint import load_model

    model, card = load_model(spec["model"], "cpu")
    config = inference_config(card, None, spec.get("overrides", []))
    predictor = Predictor(model, card, config.infer, config.postprocess, "cpu", max_voxels=config.data.max_voxels)
    out = Path(spec["out"])
    warm = discover_inputs([Path(spec["warmup"])], n_channels=1)[0]
    predict_one(predictor, warm, output_paths(out / "warmup", warm.case_id, False))
    peak_warm = maxrss_mb()
    import gc

    gc.collect()
    rss_base = reset_peak_rss()  # from here on, the peak is this case's
    if rss_base is None:
        rss_base = peak_warm
    case = discover_inputs([Path(spec["image"])], n_channels=1)[0]
    t0 = time.perf_counter()
    predict_one(predictor, case, output_paths(out, case.case_id, False))
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "voxels": spatial_voxels(spec["image"]),
        "maxrss_mb": maxrss_mb(),
        "maxrss_base_mb": rss_base,
        "maxrss_warmup_mb": peak_warm,
        "torch_threads": torch.get_num_threads(),
        **window_accounting(predictor, predictor.prepare(list(case.images))),
    }


def window_accounting(predictor, case) -> dict:
    """The windows a prepared case (its cropped image) takes, and the size of the full-volume float32
    maps its sliding window aggregates into (one per class, plus the summed weights, over the padded box):
    what the scaling section sets the peak memory against."""
    import math

    window, shape = predictor.window(case.record), case.image.shape[1:]
    padded = window.padded_shape(shape)
    return {
        "windows": len(window.locations(shape)),
        "preprocessed_voxels": int(math.prod(shape)),
        "class_maps_mb": (window.num_outputs + 1) * math.prod(padded) * 4 / 2**20,
        "classes": predictor.num_classes,
    }
