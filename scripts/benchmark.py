#!/usr/bin/env python
"""brainseg against a MONAI reference pipeline, side by side, on one machine.

One run, the same inputs and the same weights for both sides::

    python scripts/benchmark.py --json benchmark.json          # full run (< 15 min on 2 cores)
    python scripts/benchmark.py --quick --json quick.json      # smoke-sized run (< 3 min)
    python scripts/benchmark.py --model runs/tissue            # reuse a trained run folder

What is measured (every pipeline in its own fresh child process, warmed up once
before timing, several cases or patches timed):

* **inference**: input megavoxels per second from reading the file to the written
  mask. brainseg = :class:`~brainseg.infer.predict.Predictor` + ``write_image``
  through :func:`~brainseg.infer.predict.predict_cases` (what ``brainseg predict``
  does). MONAI reference = LoadImaged, EnsureChannelFirstd, Orientationd("RAS"),
  Spacingd(card spacing), a z-score per channel with brainseg's foreground statistics
  (:func:`foreground_zscore`: the non-zero voxels of an exact-zero-background scan,
  the threshold mask of a noisy one; every voxel normalised, as brainseg does, where
  NormalizeIntensityd(nonzero) would leave the zeros at 0 and average a noisy
  background in), ``sliding_window_inference`` (roi = card patch, overlap 0.5,
  gaussian, sw_batch_size 4, padded with the background value), softmax, Invertd to the original grid, argmax, SaveImage,
  driving the same network with the same weights (``brainseg.load_model``). When
  the model card's ``postprocess.input_mask`` is ``fill``/``restrict`` the MONAI side
  applies the same rule after its argmax (one ``torch.where``), so both produce the
  same kind of mask; the masks are then compared voxel for voxel (fraction equal,
  Dice between them per label) and each is scored against the reference labels
  (Dice per label; ``dice_diff_max`` is the largest difference of mean Dice).
* **the reference's own placement noise**: after its timed run the MONAI reference
  is rerun (untimed) with its window lattice moved by half its step (as far as a
  lattice can be from itself): the same pipeline, weights and preprocessing, only
  the windows elsewhere. ``reference_placement`` gives MONAI's Dice range over the
  two placements, how many voxels change, and how far brainseg's Dice lies outside
  that range. With the few-minute demo models placement alone moves MONAI's CSF
  Dice by 0.01-0.02; brainseg tiles the non-zero box (plus ``infer.margin``), so
  its windows sit elsewhere than MONAI's.
* **targets**: each target of the benchmark issue, as measured (``targets`` in the
  JSON, and the line under the table).
* **loader**: augmented training patches per second at 64³ and 128³ with
  nnU-Net-like augmentation: brainseg's ``PatchDataset`` (``AugmentConfig``
  defaults) against a MONAI ``CacheDataset`` over the same preprocessed cases with
  RandCropByPosNegLabeld(pos=1, neg=2), RandRotated, RandZoomd, RandFlipd x3,
  RandGaussianNoised, RandGaussianSmoothd, RandScaleIntensityd,
  RandScaleIntensityFixedMeand (contrast), RandAdjustContrastd (gamma) and
  RandBiasFieldd at the probabilities of our config. Both in the main process
  (0 workers) with one torch thread: the work, not the parallelism.
* **training**: ``data_wait_fraction`` (share of an epoch's wall time spent waiting
  for the next batch) of a short ``configs/demo.yaml`` training run; the same run
  provides the weights benchmarked above.
* **scaling**: brainseg inference time and peak memory against volume size (one
  demo subject resampled to N³ voxels, LPS, voxels 0.9 x the card spacing, so every
  step runs: reorientation, resampling, cropping, windows, inversion).
* **memory**: peak resident set size of each child process
  (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, includes the interpreter, torch
  and the model).
* **GPU** (only when ``torch.cuda.is_available()``): inference fp32 against bf16,
  channels-last on and off, ``torch.compile``, and MONAI on the GPU.

The machine is shared: the 1-minute load average and the CPU time other processes
took during each measurement (``other_cpu``, in cores) are recorded beside every
figure. ``--max-load`` waits (up to ``--max-wait`` s) for a quiet machine first.
"""

from __future__ import annotations

import argparse
import functools
import csv
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# --------------------------------------------------------------------------- settings

QUICK = dict(
    n_subjects=6, n_test=2, train_minutes=0.6, loader_patches={64: 24, 128: 6}, loader_warmup=3,
    scaling_sizes=[96, 128, 160], inference_cases=2, repeats=1, compile_variant=False, reference_shifts=[0.5],
    norm="batch",
)
FULL = dict(
    n_subjects=12, n_test=6, train_minutes=5.0, loader_patches={64: 150, 128: 40}, loader_warmup=5,
    scaling_sizes=[128, 192, 256, 320], inference_cases=6, repeats=2, compile_variant=True, reference_shifts=[0.5],
    norm="batch",
)
MONAI_SW_BATCH = 4
MONAI_OVERLAP = 0.5
SCALING_SPACING_FACTOR = 0.9


# --------------------------------------------------------------------------- small pure helpers (tested)


def dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    """Dice of ``a == value`` and ``b == value`` (1.0 when both are empty)."""
    pa, pb = a == value, b == value
    denom = int(pa.sum()) + int(pb.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.logical_and(pa, pb).sum()) / denom


def mask_agreement(a: np.ndarray, b: np.ndarray, labels: Sequence[int]) -> dict[str, Any]:
    """How far two label maps of one grid agree.

    ``agreement``: fraction of voxels with the same label; ``agreement_foreground``:
    the same over the voxels that are foreground in either map; ``dice``: per label,
    Dice between the two maps.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"masks of different shapes {a.shape} and {b.shape}")
    equal = a == b
    fg = (a != 0) | (b != 0)
    return {
        "agreement": float(equal.mean()) if equal.size else 1.0,
        "agreement_foreground": float(equal[fg].mean()) if fg.any() else 1.0,
        "dice": {int(v): dice(a, b, int(v)) for v in labels},
    }


def dice_difference(scores_a: dict[int, list[float]], scores_b: dict[int, list[float]]) -> dict[str, Any]:
    """Mean Dice per label of two pipelines against the same references, and the largest gap."""
    mean_a = {k: float(np.mean(v)) for k, v in scores_a.items()}
    mean_b = {k: float(np.mean(v)) for k, v in scores_b.items()}
    diff = {k: mean_a[k] - mean_b[k] for k in mean_a}  # signed: a - b
    per_case = [abs(x - y) for k in scores_a for x, y in zip(scores_a[k], scores_b[k])]
    return {
        "mean_a": mean_a,
        "mean_b": mean_b,
        "diff": diff,
        "max": max(abs(v) for v in diff.values()) if diff else 0.0,
        "max_per_case": max(per_case) if per_case else 0.0,
    }


def placement_range(dice_by_placement: dict[int, list[float]]) -> dict[str, Any]:
    """Per label, the lowest and highest mean Dice of one pipeline over several window placements."""
    rng = {k: [float(min(v)), float(max(v))] for k, v in dice_by_placement.items()}
    return {"range": rng, "spread_max": max((b - a for a, b in rng.values()), default=0.0)}


def outside_range(values: dict[int, float], ranges: dict[int, Sequence[float]]) -> dict[int, float]:
    """Per label, how far a value lies outside its [low, high] range (0.0 inside)."""
    return {k: float(max(ranges[k][0] - v, v - ranges[k][1], 0.0)) for k, v in values.items()}


def linearity(sizes_mvox: Sequence[float], values: Sequence[float]) -> dict[str, Any]:
    """Per-megavoxel figures and the ratio of the largest to the smallest (1.0 = perfectly linear)."""
    per = [v / s for v, s in zip(values, sizes_mvox)]
    x, y = np.asarray(sizes_mvox, dtype=float), np.asarray(values, dtype=float)
    slope, intercept = np.polyfit(x, y, 1) if len(per) > 1 else (per[0], 0.0)
    residual = y - (slope * x + intercept)
    total = float(((y - y.mean()) ** 2).sum())
    return {
        "per_mvox": per,
        "ratio_max_min_per_mvox": max(per) / min(per) if min(per) > 0 else math.inf,
        "fit_slope_per_mvox": float(slope),
        "fit_intercept": float(intercept),
        "fit_r2": 1.0 - float((residual**2).sum()) / total if total > 0 else 1.0,  # of value = slope * size + intercept
    }


def markdown_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    import monai
    import torch

    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": str(torch.__version__),
        "monai": monai.__version__,
        "numpy": np.__version__,
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def _busy_jiffies() -> float | None:
    """Total non-idle CPU time of the machine (seconds) from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    v = [int(x) for x in fields]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_load: float | None, max_wait: float) -> float:
    """Wait until the 1-minute load is below ``max_load`` (or ``max_wait`` s passed); return the load."""
    if max_load is None:
        return load1()
    start = time.time()
    while load1() >= max_load and time.time() - start < max_wait:
        time.sleep(5)
    return load1()


# --------------------------------------------------------------------------- child processes


def run_child(kind: str, spec: dict, workdir: Path, timeout: float = 1800, env: dict | None = None) -> dict:
    """Run ``kind`` in a fresh Python process; return its result dict plus load figures."""
    spec_path = workdir / f"spec_{kind}_{time.monotonic_ns()}.json"
    out_path = spec_path.with_name(spec_path.name.replace("spec_", "result_"))
    spec_path.write_text(json.dumps(spec))
    full_env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    full_env.setdefault("PYTHONWARNINGS", "ignore")
    full_env.update(env or {})
    load_before = load1()
    busy0 = _busy_jiffies()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(spec_path), str(out_path)],
        capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO,
    )
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy1 = _busy_jiffies()
    if proc.returncode != 0 or not out_path.is_file():
        raise RuntimeError(f"benchmark child {kind} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(out_path.read_text())
    own = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    result["load_1min_before"] = load_before
    result["child_wall_s"] = round(wall, 2)
    if busy0 is not None and busy1 is not None:
        # CPU the rest of the machine used meanwhile, in cores (0 = we had it alone).
        result["other_cpu"] = round(max(0.0, (busy1 - busy0) - own) / max(wall, 1e-9), 2)
    return result


def _proc_status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _maxrss_mb() -> float:
    """Peak resident set size of this process (MB).

    Linux: ``VmHWM`` from /proc/self/status, the high-water mark of this process image.
    (``getrusage(RUSAGE_SELF).ru_maxrss`` would do, but Linux carries it across
    fork+exec, so every child would report at least the benchmark parent's own peak.)
    Elsewhere ``ru_maxrss``.
    """
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _reset_peak_rss() -> float | None:
    """Reset the peak-RSS mark to the current RSS (Linux >= 4.0); return the current RSS (MB)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _proc_status_mb("VmRSS")


def _spatial_voxels(path: str | Path) -> int:
    from brainseg.io import read_geometry

    return int(np.prod(read_geometry(path).shape))


# ----- training


def child_train(spec: dict) -> dict:
    """A demo-config training run; the metrics.csv rows come back."""
    from brainseg.config import load_config
    from brainseg.train import trainer as trainer_mod

    config = load_config(spec["config"], spec.get("overrides", []))
    summary = trainer_mod.train(
        Path(spec["data"]), Path(spec["run_dir"]), config, device=spec.get("device", "cpu"),
        max_minutes=spec["minutes"], progress=False,
    )
    with open(Path(spec["run_dir"]) / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    return {"summary": summary, "metrics": rows, "maxrss_mb": _maxrss_mb()}


# ----- inference


def child_infer_brainseg(spec: dict) -> dict:
    import torch

    from brainseg.data.inputs import discover_inputs
    from brainseg.infer.predict import Predictor, inference_config, predict_cases
    from brainseg.model.checkpoint import load_model

    device = torch.device(spec.get("device", "cpu"))
    model, card = load_model(spec["model"], device)
    config = inference_config(card, None, spec.get("overrides", []))
    if spec.get("crop") is False:  # windows over the whole resampled volume (for the comparison only)
        card = dict(card, normalization=dict(card["normalization"], crop_to_nonzero=False))
    predictor = Predictor(model, card, config.infer, config.postprocess, device, max_voxels=config.data.max_voxels)
    if spec.get("compile"):  # what the windows go through (with its CPU instance-norm fusion)
        predictor.window.net = torch.compile(predictor.window.net)
    n_ch = len(card["channels"])
    out = Path(spec["out"])
    warm = discover_inputs([Path(spec["warmup"])], n_channels=n_ch)
    t_warm = time.perf_counter()
    predict_cases(predictor, warm, out / "warmup", overwrite=True)
    _sync(device)
    warmup_seconds = time.perf_counter() - t_warm
    rss_warm = _maxrss_mb()
    cases = discover_inputs([Path(p) for p in spec["images"]], n_channels=n_ch)
    t0 = time.perf_counter()
    summary = predict_cases(predictor, cases, out, overwrite=True)
    _sync(device)
    seconds = time.perf_counter() - t0
    if summary.failed:
        raise RuntimeError(f"cases failed: {summary.failed}")
    voxels = sum(_spatial_voxels(c.images[0]) for c in cases)
    return {
        "seconds": seconds, "voxels": voxels, "cases": len(cases), "mvox_per_s": voxels / 1e6 / seconds,
        "maxrss_mb": _maxrss_mb(), "maxrss_after_warmup_mb": rss_warm, "warmup_seconds": warmup_seconds,
        "config": {"infer": config.infer.__dict__, "postprocess": config.postprocess.__dict__},
        "torch_threads": torch.get_num_threads(),
    }


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def foreground_zscore(data: dict, scheme: str = "zscore") -> dict:
    """The MONAI pipeline's normalisation step: brainseg's rule (background kind decided on the
    raw scan, statistics over the foreground, every voxel normalised), in place on the MetaTensor
    so Invertd still sees every spatial transform. Adds ``zero_background`` and ``background``
    (the value of a raw 0 after normalisation, or the noisy background's median)."""
    import torch

    from brainseg.data.foreground import background_values, has_zero_background, normalise, threshold_mask

    image = data["image"]
    arr = image.detach().cpu().numpy().astype(np.float32, copy=False)
    zero_bg = has_zero_background(data["raw"].detach().cpu().numpy())
    fg = np.any(arr != 0, axis=0) if zero_bg else threshold_mask(arr)
    out, _, _, raw_zero = normalise(arr, fg, scheme)
    image[...] = torch.from_numpy(out)
    data["zero_background"] = zero_bg
    data["background"] = background_values(out, raw_zero, fg, zero_bg)[0]  # sliding_window_inference takes one cval
    return data


class MonaiReference:
    """The MONAI reference inference pipeline for one model card (see the module docstring)."""

    def __init__(
        self, model, card: dict, input_mask: str, out_dir: Path, device, shift: Sequence[int] = (0, 0, 0),
        normalization: str = "brainseg",
    ):
        import torch
        from monai import transforms as T

        self.model, self.card, self.device = model, card, torch.device(device)
        # Windows moved by ``shift`` voxels per axis (the volume is zero-padded in front by
        # that much for the windows, and the padding cut off again): the same pipeline with
        # its window lattice elsewhere, to measure how much placement alone changes the masks.
        self.shift = [int(v) for v in shift]
        self.input_mask = input_mask
        self.values = sorted(int(k) for k in card["labels"])
        steps = [T.LoadImaged(keys="image", image_only=True), T.EnsureChannelFirstd(keys="image")]
        steps.append(T.CopyItemsd(keys="image", times=1, names="raw"))
        steps += [
            T.Orientationd(keys="image", axcodes="RAS"),
            T.Spacingd(keys="image", pixdim=card["spacing"], mode="bilinear"),
            # "monai": the tutorials' NormalizeIntensityd(nonzero) for a network trained with it
            # (scripts/_generalisation_monai.py); "brainseg": the rule brainseg's networks learnt
            functools.partial(foreground_zscore, scheme=card.get("normalization", {}).get("scheme", "zscore"))
            if normalization == "brainseg" else T.NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
        ]
        self.pre = T.Compose(steps)
        self.post = T.Compose([
            T.Activationsd(keys="pred", softmax=True),
            T.Invertd(keys="pred", transform=self.pre, orig_keys="image", nearest_interp=False, to_tensor=True),
        ])
        self.argmax = T.AsDiscrete(argmax=True)
        self.out_dir = Path(out_dir)
        self.saver = T.SaveImage(
            output_dir=str(self.out_dir), output_postfix="", output_ext=".nii.gz", separate_folder=False,
            output_dtype=np.uint8 if max(self.values) <= 255 else np.int16, resample=False, print_log=False,
        )

    def __call__(self, image_path: str, case_id: str) -> Path:
        import torch
        from monai.data import MetaTensor
        from monai.inferers import sliding_window_inference

        data = self.pre({"image": image_path})
        image = data["image"][None].to(self.device)
        if any(self.shift):
            image = torch.nn.functional.pad(image.as_tensor(), [v for k in reversed(self.shift) for v in (k, 0)])
        with torch.no_grad():
            logits = sliding_window_inference(
                image, roi_size=self.card["patch_size"], sw_batch_size=MONAI_SW_BATCH,
                predictor=self.model, overlap=MONAI_OVERLAP, mode="gaussian", cval=data.get("background", 0.0),
            )
        if any(self.shift):
            logits = logits[(Ellipsis,) + tuple(slice(k, None) for k in self.shift)]
        data["pred"] = logits[0].cpu()
        data = self.post(data)
        pred = data["pred"]
        if not data.get("zero_background", True):  # brainseg applies the input-mask rule only there
            cls = self.argmax(pred)
        elif self.input_mask == "fill":  # the same rule as brainseg.postprocess.labels_within_input
            nonzero = (data["raw"] != 0).any(0, keepdim=True)
            cls = torch.where(nonzero, pred[1:].argmax(0, keepdim=True) + 1, 0)
        elif self.input_mask == "restrict":
            nonzero = (data["raw"] != 0).any(0, keepdim=True)
            cls = torch.where(nonzero, pred.argmax(0, keepdim=True), 0)
        else:
            cls = self.argmax(pred)
        if self.values != list(range(len(self.values))):
            cls = torch.as_tensor(self.values)[cls.long()]
        meta = dict(pred.meta)
        meta["filename_or_obj"] = str(self.out_dir / f"{case_id}.nii.gz")
        self.saver(MetaTensor(torch.as_tensor(cls).as_tensor(), meta=meta))
        return self.out_dir / f"{case_id}.nii.gz"


def _case_id(image: str | Path) -> str:
    from brainseg.naming import strip_suffix

    name = strip_suffix(image)
    return name[:-5] if len(name) > 5 and name[-5] == "_" and name[-4:].isdigit() else name


def child_infer_monai(spec: dict) -> dict:
    import torch

    from brainseg.infer.predict import inference_config
    from brainseg.model.checkpoint import load_model

    device = torch.device(spec.get("device", "cpu"))
    model, card = load_model(spec["model"], device)
    config = inference_config(card, None, spec.get("overrides", []))
    out = Path(spec["out"])
    ref = MonaiReference(model, card, config.postprocess.input_mask, out / "warmup", device)
    ref(spec["warmup"], _case_id(spec["warmup"]))
    _sync(device)
    rss_warm = _maxrss_mb()
    ref = MonaiReference(model, card, config.postprocess.input_mask, out, device)
    t0 = time.perf_counter()
    for image in spec["images"]:
        ref(image, _case_id(image))
    _sync(device)
    seconds = time.perf_counter() - t0
    voxels = sum(_spatial_voxels(p) for p in spec["images"])
    result = {
        "seconds": seconds, "voxels": voxels, "cases": len(spec["images"]), "mvox_per_s": voxels / 1e6 / seconds,
        "maxrss_mb": _maxrss_mb(), "maxrss_after_warmup_mb": rss_warm, "torch_threads": torch.get_num_threads(),
        "input_mask": config.postprocess.input_mask,
    }
    shifted = {}
    for shift in spec.get("shifts", []):  # after the timing: the reference's own placement noise
        folder = out / ("shift_" + "_".join(str(v) for v in shift))
        ref = MonaiReference(model, card, config.postprocess.input_mask, folder, device, shift=shift)
        for image in spec["images"]:
            ref(image, _case_id(image))
        shifted[str(folder)] = list(shift)
    result["shifted"] = shifted
    return result


# ----- loader


def _cached_cases(cache_dir: Path):
    from brainseg.data.cache import CachedCase
    from brainseg.data.preprocess import PreprocessRecord

    out = []
    for meta_path in sorted(cache_dir.glob("*.json")):
        meta = json.loads(meta_path.read_text())
        cid = meta_path.stem
        out.append(CachedCase(
            cid, cache_dir / f"{cid}.npy", cache_dir / f"{cid}_seg.npy", cache_dir / f"{cid}_locs.npz",
            PreprocessRecord.from_dict(meta["record"]), meta["classes"],
        ))
    return out


def child_loader_brainseg(spec: dict) -> dict:
    import torch

    from brainseg.config import AugmentConfig
    from brainseg.data.loader import PatchDataset

    torch.set_num_threads(spec.get("threads", 1))
    cases = _cached_cases(Path(spec["cache"]))
    patch = [spec["patch"]] * 3
    # batch of 3 with one foreground-centred patch = MONAI's pos=1, neg=2
    from brainseg.data import loader as loader_mod

    ds = PatchDataset(cases, patch, batch_size=3, foreground_fraction=1 / 3, augment_cfg=AugmentConfig(), seed=0)
    for i in range(spec["warmup"]):
        ds[i]
    rss_warm = _maxrss_mb()
    n = spec["n"]
    spatial = _count_spatial(loader_mod)
    times, flags = [], []
    t0 = time.perf_counter()
    for i in range(spec["warmup"], spec["warmup"] + n):
        before, t = spatial["n"], time.perf_counter()
        img, lab = ds[i]
        times.append(time.perf_counter() - t)
        flags.append(spatial["n"] > before)
    seconds = time.perf_counter() - t0
    assert tuple(img.shape[1:]) == tuple(patch) and tuple(lab.shape) == tuple(patch)
    return {"seconds": seconds, "patches": n, "patches_per_s": n / seconds, "maxrss_mb": _maxrss_mb(),
            "maxrss_after_warmup_mb": rss_warm, "spatially_augmented": spatial["n"] / n,
            **mix_corrected(times, flags, _p_spatial())}


def _p_spatial() -> float:
    """Probability that a patch is rotated and/or scaled (our config; the MONAI chain uses the same two)."""
    from brainseg.config import AugmentConfig

    a = AugmentConfig()
    return 1.0 - (1.0 - a.p_rotate) * (1.0 - a.p_scale)


def mix_corrected(times: Sequence[float], spatial: Sequence[bool], p: float) -> dict:
    """Patches/s at the configured share ``p`` of rotated/scaled patches.

    A few dozen patches draw that share only roughly (and a spatially transformed patch
    costs several plain ones), so each pipeline's mean time per plain and per spatially
    transformed patch is weighted by ``p`` instead of by what its sample happened to draw.
    """
    t_s = [t for t, s in zip(times, spatial) if s]
    t_n = [t for t, s in zip(times, spatial) if not s]
    if not t_s or not t_n:
        return {"patches_per_s_at_config_mix": None}
    mean_s, mean_n = float(np.mean(t_s)), float(np.mean(t_n))
    return {"patches_per_s_at_config_mix": 1.0 / (p * mean_s + (1 - p) * mean_n),
            "seconds_spatial_patch": mean_s, "seconds_plain_patch": mean_n, "p_spatial": p}


def _count_spatial(loader_mod) -> dict:
    """Count the patches that get a rotation/scaling (the costly part) from here on."""
    counter = {"n": 0}
    original = loader_mod.augment.spatial_matrix

    def counted(rng, cfg):
        m = original(rng, cfg)
        counter["n"] += m is not None
        return m

    loader_mod.augment.spatial_matrix = counted
    return counter


def _load_npy_image(path):
    import torch

    return torch.from_numpy(np.load(path))


def _load_npy_label(path):
    import torch

    return torch.from_numpy(np.load(path).astype(np.float32))[None]


def monai_train_transforms(patch: Sequence[int]):
    """MONAI's (cached, random) transforms at our AugmentConfig's probabilities and ranges."""
    from monai import transforms as T

    from brainseg.config import AugmentConfig

    a = AugmentConfig()
    keys = ["image", "label"]
    rot = math.radians(a.rotate_degrees)
    cached = T.Compose([
        T.Lambdad(keys="image", func=_load_npy_image),
        T.Lambdad(keys="label", func=_load_npy_label),
        T.SpatialPadd(keys=keys, spatial_size=patch),  # our loader zero-pads too
        T.FgBgToIndicesd(keys="label"),
    ])
    rand = T.Compose([
        T.RandCropByPosNegLabeld(
            keys=keys, label_key="label", spatial_size=patch, pos=1, neg=2, num_samples=1,
            fg_indices_key="label_fg_indices", bg_indices_key="label_bg_indices",
        ),
        T.RandRotated(keys=keys, range_x=rot, range_y=rot, range_z=rot, prob=a.p_rotate,
                      mode=("bilinear", "nearest"), padding_mode="zeros"),
        T.RandZoomd(keys=keys, prob=a.p_scale, min_zoom=a.scale_range[0], max_zoom=a.scale_range[1],
                    mode=("trilinear", "nearest"), padding_mode="constant"),
        T.RandFlipd(keys=keys, spatial_axis=0, prob=a.p_flip),
        T.RandFlipd(keys=keys, spatial_axis=1, prob=a.p_flip),
        T.RandFlipd(keys=keys, spatial_axis=2, prob=a.p_flip),
        T.RandGaussianNoised(keys="image", prob=a.p_noise, std=a.noise_std),
        T.RandGaussianSmoothd(keys="image", sigma_x=tuple(a.blur_sigma), sigma_y=tuple(a.blur_sigma),
                              sigma_z=tuple(a.blur_sigma), prob=a.p_blur),
        T.RandScaleIntensityd(keys="image", factors=a.brightness_range[1] - 1.0, prob=a.p_brightness),
        T.RandScaleIntensityFixedMeand(keys="image", factors=a.contrast_range[1] - 1.0, prob=a.p_contrast,
                                       preserve_range=True),
        T.RandAdjustContrastd(keys="image", gamma=tuple(a.gamma_range), prob=a.p_gamma, retain_stats=True),
        T.RandBiasFieldd(keys="image", degree=2, coeff_range=(0.0, a.bias_strength / 3), prob=a.p_bias),
    ])
    return cached, rand


def child_loader_monai(spec: dict) -> dict:
    import torch
    from monai.data import CacheDataset
    from monai.transforms import Compose
    from monai.utils import set_determinism

    torch.set_num_threads(spec.get("threads", 1))
    set_determinism(seed=0)
    cases = _cached_cases(Path(spec["cache"]))
    patch = [spec["patch"]] * 3
    cached, rand = monai_train_transforms(patch)
    items = [{"image": str(c.data_path), "label": str(c.seg_path)} for c in cases]
    ds = CacheDataset(items, transform=Compose([*cached.transforms, *rand.transforms]), cache_rate=1.0,
                      num_workers=0, progress=False)
    for i in range(spec["warmup"]):
        ds[i % len(ds)]
    rss_warm = _maxrss_mb()
    n = spec["n"]
    spatial_transforms = [t for t in ds.transform.transforms if type(t).__name__ in ("RandRotated", "RandZoomd")]
    times, flags = [], []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        sample = ds[i % len(ds)][0]
        times.append(time.perf_counter() - t)
        flags.append(any(t._do_transform for t in spatial_transforms))  # (bookkeeping, negligible)
    seconds = time.perf_counter() - t0
    assert tuple(sample["image"].shape[1:]) == tuple(patch)
    return {"seconds": seconds, "patches": n, "patches_per_s": n / seconds, "maxrss_mb": _maxrss_mb(),
            "maxrss_after_warmup_mb": rss_warm, "spatially_augmented": sum(flags) / n,
            **mix_corrected(times, flags, _p_spatial())}


# ----- scaling


def child_scale(spec: dict) -> dict:
    import torch

    from brainseg.data.inputs import discover_inputs
    from brainseg.infer.predict import Predictor, inference_config, output_paths, predict_one
    from brainseg.model.checkpoint import load_model

    model, card = load_model(spec["model"], "cpu")
    config = inference_config(card, None, spec.get("overrides", []))
    predictor = Predictor(model, card, config.infer, config.postprocess, "cpu", max_voxels=config.data.max_voxels)
    out = Path(spec["out"])
    warm = discover_inputs([Path(spec["warmup"])], n_channels=1)[0]
    predict_one(predictor, warm, output_paths(out / "warmup", warm.case_id, False))
    peak_warm = _maxrss_mb()
    import gc

    gc.collect()
    rss_base = _reset_peak_rss()  # from here on, the peak is this case's
    if rss_base is None:
        rss_base = peak_warm
    case = discover_inputs([Path(spec["image"])], n_channels=1)[0]
    t0 = time.perf_counter()
    predict_one(predictor, case, output_paths(out, case.case_id, False))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "voxels": _spatial_voxels(spec["image"]), "maxrss_mb": _maxrss_mb(),
            "maxrss_base_mb": rss_base, "maxrss_warmup_mb": peak_warm, "torch_threads": torch.get_num_threads(),
            "windows": predictor_windows(predictor, case)}


def predictor_windows(predictor, case) -> int:
    """How many sliding windows a case takes (its preprocessed, cropped shape; header + data read again)."""
    from brainseg.data.preprocess import preprocess
    from brainseg.io import read_channels

    data, geom = read_channels(list(case.images))
    norm = predictor.card["normalization"]
    image, _, _ = preprocess(data, geom, predictor.card["spacing"], normalization=norm["scheme"],
                             crop_to_nonzero=bool(norm.get("crop_to_nonzero", True)))
    return len(predictor.window.locations(image.shape[1:]))


CHILDREN = {
    "train": child_train,
    "infer_brainseg": child_infer_brainseg,
    "infer_monai": child_infer_monai,
    "loader_brainseg": child_loader_brainseg,
    "loader_monai": child_loader_monai,
    "scale": child_scale,
}


# --------------------------------------------------------------------------- parent steps


def network_info(model: Path) -> dict:
    """The benchmarked network as its model card describes it (architecture and patch size)."""
    from brainseg.model.checkpoint import load_checkpoint

    card = load_checkpoint(model)["card"]
    return dict(card["model"], patch_size=list(card["patch_size"]))


def log(msg: str) -> None:
    print(f"[benchmark {time.strftime('%H:%M:%S')} load {load1():.2f}] {msg}", file=sys.stderr, flush=True)


def make_data(root: Path, n: int, n_test: int) -> Path:
    from brainseg.data.demo import make_demo_dataset

    return make_demo_dataset(root / "data", n=n, n_test=n_test, seed=0, verbose=False)


def train_section(data: Path, workdir: Path, minutes: float, norm: str) -> dict:
    run_dir = workdir / "run"
    overrides = [f"model.norm={norm}"]
    res = run_child("train", {"config": str(REPO / "configs" / "demo.yaml"), "data": str(data), "overrides": overrides,
                              "run_dir": str(run_dir), "minutes": minutes}, workdir)
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


def inference_section(model: Path, data: Path, workdir: Path, n_cases: int, repeats: int = 1,
                      compile_variant: bool = False, device: str = "cpu",
                      shift_fractions: Sequence[float] = ()) -> dict:
    from brainseg.model.checkpoint import load_checkpoint

    images = sorted(str(p) for p in (data / "imagesTs").glob("*_0000.nii.gz"))[:n_cases]
    warmup = sorted(str(p) for p in (data / "imagesTr").glob("*_0000.nii.gz"))[0]
    common = {"model": str(model), "images": images, "warmup": warmup, "device": device}
    out_b, out_m = workdir / f"pred_brainseg_{device}", workdir / f"pred_monai_{device}"
    card = load_checkpoint(model)["card"]
    # MONAI's window step; the reference is rerun (untimed) with its lattice moved by these fractions of it.
    steps = [max(1, int(p * (1 - MONAI_OVERLAP))) for p in card["patch_size"]]
    shifts = [[int(round(f * st)) for st in steps] for f in shift_fractions]
    runs_b, runs_m = [], []
    for r in range(repeats):  # interleaved, so both sides see the machine's ups and downs
        log(f"inference: brainseg on {len(images)} cases ({device}), run {r + 1}/{repeats}")
        runs_b.append(run_child("infer_brainseg", dict(common, out=str(out_b)), workdir))
        log(f"inference: MONAI reference on {len(images)} cases ({device}), run {r + 1}/{repeats}"
            + (f", then (untimed) with its windows shifted by {shifts}" if r == 0 and shifts else ""))
        runs_m.append(run_child("infer_monai", dict(common, out=str(out_m), shifts=shifts if r == 0 else []), workdir))
    b, m = _best(runs_b, "mvox_per_s"), _best(runs_m, "mvox_per_s")
    compiled = None
    if compile_variant:
        log("inference: brainseg with torch.compile (opt-in; compile time in warmup_seconds)")
        try:
            compiled = run_child("infer_brainseg", dict(common, out=str(workdir / "pred_compiled"), compile=True), workdir)
        except RuntimeError as exc:
            compiled = {"error": str(exc)[-600:]}

    values = sorted(int(k) for k in card["labels"])
    cmp = compare_masks(images, out_b, out_m, data, values)
    placement = None
    if runs_m[0].get("shifted"):
        per_label = {v: [cmp["dice_vs_reference_monai"][v]] for v in cmp["dice_vs_reference_monai"]}
        agreements = []
        for folder, shift in runs_m[0]["shifted"].items():
            c = compare_masks(images, Path(folder), out_m, data, values)
            for v in per_label:
                per_label[v].append(c["dice_vs_reference_brainseg"][v])
            agreements.append({"shift": shift, "agreement": c["agreement"], "agreement_min": c["agreement_min"],
                               "dice": c["dice_vs_reference_brainseg"], "dice_diff": c["dice_diff"]})
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
        nm = run_child("infer_brainseg", dict(common, out=str(workdir / "pred_margin0"), overrides=["infer.margin=0"]),
                       workdir)
        c = compare_masks(images, workdir / "pred_margin0", out_m, data, values)
        no_margin = {"mvox_per_s": nm["mvox_per_s"], "ratio_vs_monai": nm["mvox_per_s"] / m["mvox_per_s"],
                     **{k: c[k] for k in ("agreement", "agreement_foreground", "dice_diff", "dice_diff_max")}}
    no_crop = None
    if compile_variant:  # the full run: how much of the difference the crop box makes
        log("inference: brainseg without the crop box and margin (windows over the whole volume, like MONAI)")
        nc = run_child("infer_brainseg", dict(common, out=str(workdir / "pred_nocrop"), crop=False,
                                              overrides=["infer.margin=0"]), workdir)
        c = compare_masks(images, workdir / "pred_nocrop", out_m, data, values)
        no_crop = {"mvox_per_s": nc["mvox_per_s"], "ratio_vs_monai": nc["mvox_per_s"] / m["mvox_per_s"],
                   **{k: c[k] for k in ("agreement", "agreement_foreground", "dice_diff", "dice_diff_max")}}
    ratio = b["mvox_per_s"] / m["mvox_per_s"]
    worst_deficit = max((-d for d in cmp["dice_diff"].values()), default=0.0)
    return {
        "brainseg": b,
        "monai": m,
        "reference_placement": placement,
        "criteria": {  # the targets, each as measured in this run
            "ratio_at_least_2": ratio >= 2.0,
            "agreement_at_least_98pct": cmp["agreement"] >= 0.98,
            "dice_diff_max_at_most_0.005": cmp["dice_diff_max"] <= 0.005,
            "dice_not_lower_by_more_than_0.005": worst_deficit <= 0.005,
            "dice_within_0.005_of_monai_placement_range": (
                placement["brainseg_outside_range_max"] <= 0.005 if placement else None),
        },
        "brainseg_compiled": compiled,
        "brainseg_no_crop": no_crop,
        "brainseg_margin_0": no_margin,
        "ratio_vs_monai": ratio,
        "ratio_vs_monai_median_runs": float(np.median(b["mvox_per_s_runs"]) / np.median(m["mvox_per_s_runs"])),
        **cmp,
        "cases": [_case_id(i) for i in images],
    }


def compare_masks(images: Sequence[str], out_a: Path, out_b: Path, data: Path, values: Sequence[int]) -> dict:
    """Masks of pipeline a (brainseg) against pipeline b (MONAI): agreement, Dice between them and vs the labels."""
    import nibabel as nib

    from brainseg.io import read_image

    fg = [v for v in values if v != 0]
    agreements, per_a, per_b = [], {v: [] for v in fg}, {v: [] for v in fg}
    geometry_ok = True
    for image in images:
        cid = _case_id(image)
        src = nib.load(image)
        pa, pb = nib.load(Path(out_a) / f"{cid}.nii.gz"), nib.load(Path(out_b) / f"{cid}.nii.gz")
        geometry_ok &= pa.shape == src.shape[:3] == pb.shape and np.allclose(pa.affine, src.affine, atol=1e-4) \
            and np.allclose(pb.affine, src.affine, atol=1e-4)
        a, bb = np.asarray(pa.dataobj), np.asarray(pb.dataobj)
        agreements.append(mask_agreement(a, bb, values))
        ref_path = data / "labelsTs" / f"{cid}.nii.gz"
        if ref_path.is_file():
            ref, _ = read_image(ref_path)
            for v in fg:
                per_a[v].append(dice(a, ref, v))
                per_b[v].append(dice(bb, ref, v))
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


def loader_section(data: Path, model: Path, workdir: Path, sizes: dict[int, int], warmup: int,
                   repeats: int = 1) -> dict:
    from brainseg.data.cache import cache_cases
    from brainseg.data.layouts import discover_dataset
    from brainseg.model.checkpoint import load_checkpoint

    card = load_checkpoint(model)["card"]
    ds = discover_dataset(data)
    cache = workdir / "loader_cache"
    cache_cases(ds.train, cache, card["spacing"], sorted(int(k) for k in card["labels"]), progress=False)
    out: dict[str, Any] = {"threads": 1, "workers": 0, "cases": len(ds.train), "spacing": card["spacing"]}
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


def make_scaled_volume(src: Path, size: int, spacing: Sequence[float], dst: Path) -> Path:
    """``src`` resampled to size³ voxels, stored LPS with voxels SCALING_SPACING_FACTOR x ``spacing``."""
    import torch
    import torch.nn.functional as F

    from brainseg.data.preprocess import ras_orientation, reorient_array
    from brainseg.io import Geometry, read_image, write_image

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
    from brainseg.model.checkpoint import load_checkpoint

    card = load_checkpoint(model)["card"]
    src = sorted((data / "imagesTs").glob("*_0000.nii.gz"))[0]
    folder = workdir / "scaling"
    folder.mkdir(exist_ok=True)
    warm = make_scaled_volume(src, 64, card["spacing"], folder / "warm_0000.nii.gz")
    rows = []
    for size in sizes:
        path = make_scaled_volume(src, size, card["spacing"], folder / f"size{size}_0000.nii.gz")
        log(f"scaling: {size}^3")
        r = run_child("scale", {"model": str(model), "image": str(path), "warmup": str(warm),
                                "out": str(workdir / "scaling_out")}, workdir)
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
    best = max((v["mvox_per_s"] for k, v in out.items() if isinstance(v, dict) and "mvox_per_s" in v and k != "monai"),
               default=None)
    if best is not None:
        out["ratio_best_vs_monai"] = best / out["monai"]["mvox_per_s"]
    return out


# --------------------------------------------------------------------------- report


def _f(v: float, nd: int = 2) -> str:
    return f"{v:.{nd}f}"


def targets(res: dict) -> dict[str, bool | None]:
    """The issue's targets, each as measured in ``res`` (``None``: not measurable in this run)."""
    crit: dict[str, bool | None] = {}
    inf, ld, tr = res.get("inference"), res.get("loader"), res.get("training")
    if inf:
        crit.update({f"inference_{k}": v for k, v in (inf.get("criteria") or {}).items()})
    for p in (k for k in (ld or {}) if k.isdigit()):
        crit[f"loader_{p}_ratio_at_least_2"] = ld[p]["ratio_vs_monai"] >= 2.0
    if tr:
        crit["data_wait_at_most_5pct"] = tr["data_wait_fraction"] <= 0.05
    return crit


def report_tables(res: dict) -> str:
    parts = []
    m = res["machine"]
    net = res.get("network") or {}
    net_text = (f"; network: U-Net {net.get('levels')} levels, {net.get('base_features')}-{net.get('max_features')} "
                f"features, {net.get('norm')} norm, patch {net.get('patch_size')}") if net else ""
    parts.append(
        f"Machine: {m['cpu']}, {m['cores_usable']} cores, {m['memory_gb']} GB; torch {m['torch']}, "
        f"MONAI {m['monai']}; mode {'quick' if res['quick'] else 'full'}{net_text}; 1-min load at start "
        f"{res['load_1min_start']}, at the end {res.get('load_1min_end', '?')} (our own runs included)."
    )
    rows = []
    inf = res.get("inference")
    if inf:
        b, mo = inf["brainseg"], inf["monai"]
        rows.append([f"inference, file to written mask (MVox/s, {len(inf['cases'])} cases)", _f(b["mvox_per_s"]),
                     _f(mo["mvox_per_s"]), f"**{inf['ratio_vs_monai']:.2f}x**"])
        comp = inf.get("brainseg_compiled")
        if comp and "mvox_per_s" in comp:
            rows.append(["  same, brainseg windows through torch.compile (opt-in)", _f(comp["mvox_per_s"]), "",
                         f"{comp['mvox_per_s'] / mo['mvox_per_s']:.2f}x (compile + warm-up {comp['warmup_seconds']:.0f} s)"])
        nm = inf.get("brainseg_margin_0")
        if nm:
            rows.append(["  same, brainseg with infer.margin=0 (fewest windows)", _f(nm["mvox_per_s"]), "",
                         f"{nm['ratio_vs_monai']:.2f}x; voxels equal {nm['agreement'] * 100:.2f}%; Dice diff "
                         + " / ".join(f"{v:+.4f}" for v in nm["dice_diff"].values())])
        nc = inf.get("brainseg_no_crop")
        if nc:
            rows.append(["  same, brainseg without the crop box, margin 0 (windows over the whole volume, like MONAI)", _f(nc["mvox_per_s"]), "",
                         f"{nc['ratio_vs_monai']:.2f}x; voxels equal {nc['agreement'] * 100:.2f}%; Dice diff "
                         + " / ".join(f"{v:+.4f}" for v in nc["dice_diff"].values())])
        rows.append(["inference peak RSS (MB, whole process)", f"{b['maxrss_mb']:.0f}", f"{mo['maxrss_mb']:.0f}", ""])
        rows.append(["masks: voxels equal (all / foreground of either)",
                     f"{inf['agreement'] * 100:.2f}% / {inf['agreement_foreground'] * 100:.2f}%", "",
                     f"min case {inf['agreement_min'] * 100:.2f}%"])
        db, dm = inf["dice_vs_reference_brainseg"], inf["dice_vs_reference_monai"]
        rows.append(["Dice vs reference labels (" + ", ".join(f"label {k}" for k in db) + ")",
                     " / ".join(_f(db[k], 3) for k in db), " / ".join(_f(dm[k], 3) for k in dm),
                     "brainseg - MONAI: " + " / ".join(f"{inf['dice_diff'][k]:+.4f}" for k in db)])
        pl = inf.get("reference_placement")
        if pl:
            fr = ", ".join(str(s) for s in pl["shifts"])
            rows.append([f"MONAI with its windows moved (shifts {fr} voxels): Dice range per label", "",
                         " / ".join(f"{a:.3f}-{b:.3f}" for a, b in pl["dice_range"].values()),
                         f"spread up to {pl['dice_spread_max']:.4f}; voxels equal to default MONAI "
                         f"{pl['agreement_with_default_min'] * 100:.2f}% (min); brainseg outside the range by "
                         f"{pl['brainseg_outside_range_max']:.4f} at most"])
    ld = res.get("loader")
    if ld:
        for p in (k for k in ld if k.isdigit()):
            e = ld[p]
            key = "patches_per_s_at_config_mix" if e["ratio_basis"] == "config mix" else "patches_per_s"
            rows.append([f"training patches/s, {p}³, augmented (0 workers, 1 thread)",
                         _f(e["brainseg"][key], 1), _f(e["monai"][key], 1),
                         f"**{e['ratio_vs_monai']:.2f}x** ({e['ratio_basis']}; raw {e['ratio_vs_monai_raw']:.2f}x, "
                         f"rotated/scaled {e['brainseg']['spatially_augmented']:.0%} / {e['monai']['spatially_augmented']:.0%})"])
    tr = res.get("training")
    if tr:
        extra = " ".join(f"--set {o}" for o in tr.get("overrides", []))
        rows.append([f"data wait, configs/demo.yaml {extra + ' ' if extra else ''}training (share of epoch time)",
                     f"{tr['data_wait_fraction'] * 100:.1f}% (first epoch {tr['data_wait_fraction_first_epoch'] * 100:.1f}%)",
                     "", f"{tr['steps']} steps, {tr['seconds_per_step']:.2f} s/step"])
    parts.append(markdown_table(rows, ["measurement", "brainseg", "MONAI reference", "ratio / note"]))
    crit = targets(res)
    if crit:
        parts.append("Targets: " + "; ".join(
            f"{k} {'yes' if v else ('n/a' if v is None else 'NO')}" for k, v in crit.items()) + ".")
    sc = res.get("scaling")
    if sc:
        srows = [[f"{r['size']}³", _f(r["mvox"], 1), r["windows"], _f(r["seconds"]), _f(r["seconds"] / r["mvox"], 3),
                  _f(r["seconds"] / r["windows"] * 1000, 0), f"{r['delta_rss_mb']:.0f}",
                  _f(r["delta_rss_mb"] / r["mvox"], 1)] for r in sc["rows"]]
        parts.append(markdown_table(srows, ["volume", "MVox", "windows", "seconds", "s/MVox", "ms/window",
                                            "peak extra RSS MB", "MB/MVox"]))
        t, mem = sc["time"], sc["memory"]
        parts.append(
            "Linearity, largest/smallest: s/MVox "
            f"{t['ratio_max_min_per_mvox']:.2f}, s/window {sc['time_per_window']['ratio_max_min_per_mvox']:.2f}, "
            f"MB/MVox {mem['ratio_max_min_per_mvox']:.2f}. Straight-line fits: time = "
            f"{t['fit_slope_per_mvox']:.3f} s/MVox x size {t['fit_intercept']:+.2f} s (R² {t.get('fit_r2', float('nan')):.3f}), "
            f"memory = {mem['fit_slope_per_mvox']:.1f} MB/MVox x size {mem['fit_intercept']:+.0f} MB "
            f"(R² {mem.get('fit_r2', float('nan')):.3f})."
        )
    gpu = res.get("gpu", {})
    if not gpu.get("available"):
        parts.append(f"GPU: {gpu.get('note', 'not run')}.")
    else:
        grows = [[k, _f(v["mvox_per_s"])] for k, v in gpu.items() if isinstance(v, dict) and "mvox_per_s" in v]
        parts.append(markdown_table(grows, ["GPU variant", "MVox/s"]))
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small run (< 3 min on 2 cores)")
    p.add_argument("--json", type=Path, default=None, help="write all figures to this JSON file")
    p.add_argument("--model", type=Path, default=None, help="reuse this run folder / checkpoint instead of training")
    p.add_argument("--workdir", type=Path, default=None, help="keep inputs and outputs here (default: a temp folder)")
    p.add_argument("--only", default="training,inference,loader,scaling,gpu",
                   help="comma-separated sections to run (default: all)")
    p.add_argument("--max-load", type=float, default=None, help="wait for the 1-min load to drop below this first")
    p.add_argument("--max-wait", type=float, default=600.0, help="seconds to wait for --max-load at most")
    from brainseg.model.unet import NORMS

    p.add_argument("--norm", choices=NORMS, default=None,
                   help="normalisation of the benchmarked network (default batch: its output does not depend on "
                        "where the windows fall; instance = configs/demo.yaml as it is)")
    p.add_argument("--report", type=Path, default=None, help="print the tables of a saved --json file and exit")
    p.add_argument("--child", nargs=3, metavar=("KIND", "SPEC", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.report is not None:
        print(report_tables(json.loads(args.report.read_text())))
        return 0

    if args.child:
        kind, spec_path, out_path = args.child
        result = CHILDREN[kind](json.loads(Path(spec_path).read_text()))
        Path(out_path).write_text(json.dumps(result, default=str))
        return 0

    settings = dict(QUICK if args.quick else FULL)
    if args.norm is not None:
        settings["norm"] = args.norm
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    started = time.perf_counter()
    load_start = wait_for_quiet(args.max_load, args.max_wait)
    tmp = None
    if args.workdir is None:
        tmp = tempfile.mkdtemp(prefix="brainseg_bench_")
        workdir = Path(tmp)
    else:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"quick": args.quick, "machine": machine_info(), "load_1min_start": load_start,
                           "settings": {k: v for k, v in settings.items()}}
    try:
        log(f"demo data: {settings['n_subjects']} subjects in {workdir}")
        data = make_data(workdir, settings["n_subjects"], settings["n_test"])
        model = args.model
        if "training" in sections or model is None:
            log(f"training configs/demo.yaml (model.norm={settings['norm']}) for {settings['train_minutes']} min")
            res["training"] = train_section(data, workdir, settings["train_minutes"], settings["norm"])
            if model is None:
                model = Path(res["training"]["run_dir"])
        res["network"] = network_info(model)
        if "inference" in sections:
            res["inference"] = inference_section(model, data, workdir, settings["inference_cases"],
                                                 settings["repeats"], settings["compile_variant"],
                                                 shift_fractions=settings["reference_shifts"])
        if "loader" in sections:
            res["loader"] = loader_section(data, model, workdir, settings["loader_patches"], settings["loader_warmup"],
                                           settings["repeats"])
        if "scaling" in sections:
            res["scaling"] = scaling_section(model, data, workdir, settings["scaling_sizes"])
        if "gpu" in sections:
            res["gpu"] = gpu_section(model, data, workdir, settings["inference_cases"])
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    res["targets"] = targets(res)
    res["load_1min_end"] = load1()
    res["total_seconds"] = time.perf_counter() - started
    text = report_tables(res)
    print(text)
    print(f"\n(total {res['total_seconds']:.0f} s)")
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
