"""What each child process of the benchmark measures (``python -m scripts.benchmark --child KIND``).

One function per kind in :data:`CHILDREN`: a spec dict in, a result dict out (JSON).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from pathlib import Path

from scripts.benchmark.compare import mix_corrected
from scripts.benchmark.harness import maxrss_mb, spatial_voxels, sync
from scripts.benchmark.reference import MonaiReference, ReferenceSpec, monai_train_transforms
from scripts.benchmark.scaling import child_scale
from scripts.common import case_id

# ----- training


def child_train(spec: dict) -> dict:
    """A demo-config training run; the metrics.csv rows come back."""
    from brainseg.config import load_config
    from brainseg.train import trainer as trainer_mod

    config = load_config(spec["config"], spec.get("overrides", []))
    summary = trainer_mod.train(
        Path(spec["data"]),
        Path(spec["run_dir"]),
        config,
        device=spec.get("device", "cpu"),
        max_minutes=spec["minutes"],
        progress=False,
    )
    with open(Path(spec["run_dir"]) / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    return {"summary": summary, "metrics": rows, "maxrss_mb": maxrss_mb()}


# ----- inference


def child_infer_brainseg(spec: dict) -> dict:
    import torch

    from brainseg.data.inputs import discover_inputs
    from brainseg.infer.batch import predict_cases
    from brainseg.infer.loading import inference_config
    from brainseg.infer.predictor import Predictor
    from brainseg.model.checkpoint import load_model
    from brainseg.runtime import effective_amp

    device = torch.device(spec.get("device", "cpu"))
    model, card = load_model(spec["model"], device)
    config = inference_config(card, None, spec.get("overrides", []))
    if spec.get("crop") is False:  # windows over the whole resampled volume (for the comparison only)
        card = dataclasses.replace(card, normalization=dataclasses.replace(card.normalization, crop_to_nonzero=False))
    predictor = Predictor(
        model,
        card,
        config.infer,
        config.postprocess,
        device,
        max_voxels=config.data.max_voxels,
        compile_network=bool(spec.get("compile")),  # the inference network, after its CPU fusions
    )
    n_ch = len(card.channels)
    out = Path(spec["out"])
    warm = discover_inputs([Path(spec["warmup"])], n_channels=n_ch)
    t_warm = time.perf_counter()
    predict_cases(predictor, warm, out / "warmup", overwrite=True)
    sync(device)
    warmup_seconds = time.perf_counter() - t_warm
    rss_warm = maxrss_mb()
    cases = discover_inputs([Path(p) for p in spec["images"]], n_channels=n_ch)
    t0 = time.perf_counter()
    summary = predict_cases(predictor, cases, out, overwrite=True)
    sync(device)
    seconds = time.perf_counter() - t0
    if summary.failed:
        raise RuntimeError(f"cases failed: {summary.failed}")
    voxels = sum(spatial_voxels(c.images[0]) for c in cases)
    result = {
        "seconds": seconds,
        "voxels": voxels,
        "cases": len(cases),
        "mvox_per_s": voxels / 1e6 / seconds,
        "maxrss_mb": maxrss_mb(),
        "maxrss_after_warmup_mb": rss_warm,
        "warmup_seconds": warmup_seconds,
        "config": {"infer": config.infer.__dict__, "postprocess": config.postprocess.__dict__},
        "precision": effective_amp(device, config.infer.amp),  # what infer.amp gives on this device
        "torch_threads": torch.get_num_threads(),
    }
    if spec.get("floor"):  # after the timing (and its peak memory): the windows, and the network alone
        result.update(network_floor(predictor, [predictor.prepare(list(c.images)) for c in cases]))
    return result


def network_floor(predictor, prepared) -> dict:
    """What the network alone costs on these cases: one no-overlap pass over each one's region.

    The region is what brainseg's windows cover, the preprocessed (cropped) volume; the pass is the
    fewest patch-size windows that cover it (overlap 0, margin 0), in the batches the sliding window
    uses, through the same network call without mirroring: no reading, preprocessing, aggregation or
    inversion. ``floor_seconds`` times one such pass (the timed run before it warmed the network up);
    ``windows``: how many windows the configured sliding window lays on the same cases."""
    import torch

    from brainseg.infer.mirroring import NetworkForward
    from brainseg.infer.sliding_window import SlidingWindow, window_batches

    infer, device = predictor.infer, predictor.device
    forward = NetworkForward(predictor.network, device, infer.amp, infer.channels_last)
    one_pass = SlidingWindow(tuple(predictor.card.patch_size), predictor.num_classes, overlap=0.0, margin=0.0)
    images, locations = [], []
    for case in prepared:
        image = torch.from_numpy(case.image)
        pad = one_pass.padding(image.shape[1:])  # only where an axis is shorter than the patch
        image = torch.nn.functional.pad(image, [v for d in reversed(pad) for v in (d // 2, d - d // 2)])
        images.append(image.to(device))
        locations.append(one_pass.locations(case.image.shape[1:]))
    with torch.inference_mode():
        t0 = time.perf_counter()
        for image, locs in zip(images, locations):
            for _, batch in window_batches(image, locs, one_pass.patch, infer.batch_windows, device):
                forward(batch)
        sync(device)
        seconds = time.perf_counter() - t0
    return {
        "floor_seconds": seconds,
        "floor_windows": sum(len(locs) for locs in locations),
        "windows": sum(len(predictor.window(case.record).locations(case.image.shape[1:])) for case in prepared),
    }


def child_infer_monai(spec: dict) -> dict:
    import torch

    from brainseg.infer.loading import inference_config
    from brainseg.model.checkpoint import load_model

    device = torch.device(spec.get("device", "cpu"))
    model, card = load_model(spec["model"], device)
    config = inference_config(card, None, spec.get("overrides", []))
    out = Path(spec["out"])
    ref = MonaiReference(model, ReferenceSpec.from_card(card), config.postprocess.input_mask, out / "warmup", device)
    ref(spec["warmup"], case_id(spec["warmup"]))
    sync(device)
    rss_warm = maxrss_mb()
    ref = MonaiReference(model, ReferenceSpec.from_card(card), config.postprocess.input_mask, out, device)
    t0 = time.perf_counter()
    for image in spec["images"]:
        ref(image, case_id(image))
    sync(device)
    seconds = time.perf_counter() - t0
    voxels = sum(spatial_voxels(p) for p in spec["images"])
    result = {
        "seconds": seconds,
        "voxels": voxels,
        "cases": len(spec["images"]),
        "mvox_per_s": voxels / 1e6 / seconds,
        "maxrss_mb": maxrss_mb(),
        "maxrss_after_warmup_mb": rss_warm,
        "torch_threads": torch.get_num_threads(),
        "input_mask": config.postprocess.input_mask,
    }
    shifted = {}
    for shift in spec.get("shifts", []):  # after the timing: the reference's own placement noise
        folder = out / ("shift_" + "_".join(str(v) for v in shift))
        ref = MonaiReference(
            model, ReferenceSpec.from_card(card), config.postprocess.input_mask, folder, device, shift=shift
        )
        for image in spec["images"]:
            ref(image, case_id(image))
        shifted[str(folder)] = list(shift)
    result["shifted"] = shifted
    return result


# ----- loader


def _cached_cases(cache_dir: Path):
    from brainseg.preprocessing.cache import CachedCase
    from brainseg.preprocessing.preprocess import PreprocessRecord

    out = []
    for meta_path in sorted(cache_dir.glob("*.json")):
        meta = json.loads(meta_path.read_text())
        cid = meta_path.stem
        out.append(
            CachedCase(
                cid,
                cache_dir / f"{cid}.npy",
                cache_dir / f"{cid}_seg.npy",
                cache_dir / f"{cid}_locs.npz",
                PreprocessRecord.from_dict(meta["record"]),
                meta["classes"],
            )
        )
    return out


def child_loader_brainseg(spec: dict) -> dict:
    import torch

    from brainseg.config import AugmentConfig
    from brainseg.train.sampling.loader import PatchDataset

    torch.set_num_threads(spec.get("threads", 1))
    cases = _cached_cases(Path(spec["cache"]))
    patch = [spec["patch"]] * 3
    # batch of 3 with one foreground-centred patch = MONAI's pos=1, neg=2
    ds = PatchDataset(cases, patch, batch_size=3, foreground_fraction=1 / 3, augment_cfg=AugmentConfig(), seed=0)
    for i in range(spec["warmup"]):
        ds[i]
    rss_warm = maxrss_mb()
    n = spec["n"]
    spatial = _count_spatial()
    times, flags = [], []
    t0 = time.perf_counter()
    for i in range(spec["warmup"], spec["warmup"] + n):
        before, t = spatial["n"], time.perf_counter()
        img, lab = ds[i]
        times.append(time.perf_counter() - t)
        flags.append(spatial["n"] > before)
    seconds = time.perf_counter() - t0
    assert tuple(img.shape[1:]) == tuple(patch) and tuple(lab.shape) == tuple(patch)
    return {
        "seconds": seconds,
        "patches": n,
        "patches_per_s": n / seconds,
        "maxrss_mb": maxrss_mb(),
        "maxrss_after_warmup_mb": rss_warm,
        "spatially_augmented": spatial["n"] / n,
        **mix_corrected(times, flags, _p_spatial()),
    }


def _p_spatial() -> float:
    """Probability that a patch is rotated and/or scaled (our config; the MONAI chain uses the same two)."""
    from brainseg.config import AugmentConfig

    a = AugmentConfig()
    return 1.0 - (1.0 - a.p_rotate) * (1.0 - a.p_scale)


def _count_spatial() -> dict:
    """Count the patches that get a rotation/scaling (the costly part) from here on.

    The loader draws each patch's spatial matrix through ``augment.spatial_matrix``; this
    child process (and only it: it measures, then exits) wraps that function with a counter.
    """
    from brainseg.train.sampling import augment

    counter = {"n": 0}
    original = augment.spatial_matrix

    def counted(rng, cfg):
        m = original(rng, cfg)
        counter["n"] += m is not None
        return m

    augment.spatial_matrix = counted
    return counter


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
    ds = CacheDataset(
        items, transform=Compose([*cached.transforms, *rand.transforms]), cache_rate=1.0, num_workers=0, progress=False
    )
    for i in range(spec["warmup"]):
        ds[i % len(ds)]
    rss_warm = maxrss_mb()
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
    return {
        "seconds": seconds,
        "patches": n,
        "patches_per_s": n / seconds,
        "maxrss_mb": maxrss_mb(),
        "maxrss_after_warmup_mb": rss_warm,
        "spatially_augmented": sum(flags) / n,
        **mix_corrected(times, flags, _p_spatial()),
    }


# ----- ensembles


def child_ensemble(spec: dict) -> dict:
    """A K-member ensemble (``brainseg predict --model A B C``) against K single-model predictions of the
    same cases, each end to end as :func:`~brainseg.infer.batch.predict_cases` runs it (read, preprocess,
    windows, inversion, write). The members are the same weights loaded K times: what a member costs does
    not depend on its weights."""
    import torch

    from brainseg.data.inputs import discover_inputs
    from brainseg.infer.batch import predict_cases
    from brainseg.infer.loading import inference_config
    from brainseg.infer.predictor import Predictor
    from brainseg.model.checkpoint import load_model

    k = int(spec["members"])
    members = [load_model(spec["model"], "cpu") for _ in range(k)]
    (model, card), others = members[0], members[1:]
    config = inference_config(card, None, spec.get("overrides", []))
    settings = (config.infer, config.postprocess, "cpu")
    single = Predictor(model, card, *settings, max_voxels=config.data.max_voxels)
    ensemble = Predictor(model, card, *settings, max_voxels=config.data.max_voxels, ensemble_with=others)
    out = Path(spec["out"])
    warm = discover_inputs([Path(spec["warmup"])], n_channels=len(card.channels))
    cases = discover_inputs([Path(p) for p in spec["images"]], n_channels=len(card.channels))
    for predictor in (single, ensemble):
        predict_cases(predictor, warm, out / "warmup", overwrite=True)
    singles = []
    for i in range(k):  # K separate predictions, as K runs of brainseg predict would make them
        t0 = time.perf_counter()
        predict_cases(single, cases, out / f"single_{i}", overwrite=True)
        singles.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    predict_cases(ensemble, cases, out / "ensemble", overwrite=True)
    seconds = time.perf_counter() - t0
    return {
        "members": k,
        "cases": len(cases),
        "ensemble_seconds": seconds,
        "single_seconds": singles,
        "ratio_vs_k_singles": seconds / sum(singles),
        "ratio_vs_one_single": seconds / min(singles),
        "torch_threads": torch.get_num_threads(),
        "maxrss_mb": maxrss_mb(),
    }


CHILDREN = {
    "train": child_train,
    "infer_brainseg": child_infer_brainseg,
    "infer_monai": child_infer_monai,
    "loader_brainseg": child_loader_brainseg,
    "loader_monai": child_loader_monai,
    "scale": child_scale,
    "ensemble": child_ensemble,
}
