"""The MONAI-tutorial reference of the generalisation check: trained on the demo data, then segmenting.

Run by :mod:`scripts.experiments.generalisation.run` in its own process::

    python -m scripts.experiments.generalisation.monai_reference train --data DEMO_DIR --out RUN --minutes 10
    python -m scripts.experiments.generalisation.monai_reference predict --model RUN --job IMAGES_DIR OUT_DIR

Training (MONAI's 3D segmentation tutorials): every case of the data set's training list
(``imagesTr``; no validation split, the last weights are kept) through LoadImaged,
EnsureChannelFirstd, Orientationd("RAS"), Spacingd to a fixed **2 mm** isotropic grid
(``--spacing``; bilinear / nearest), NormalizeIntensityd(nonzero=True, channel_wise=True),
SpatialPadd to the patch, FgBgToIndicesd (so the crops need not search the label each
time), all cached in a CacheDataset; then per draw RandCropByPosNegLabeld 64³ (pos 1,
neg 1, 2 samples: a batch of two patches per step), RandFlipd on each axis (p 0.5),
RandScaleIntensityd (0.1, p 1) and RandShiftIntensityd (0.1, p 1). Network
``BasicUNet(spatial_dims=3, in_channels=1, out_channels=4, features=(16, 16, 32, 64, 128, 16))``,
DiceCELoss(to_onehot_y=True, softmax=True), AdamW (lr 1e-3, weight decay 1e-5), as many
steps as fit in ``--minutes`` of the training loop's wall clock (caching excluded, as
``brainseg train --max-minutes`` excludes its preprocessing). Torch threads:
``OMP_NUM_THREADS`` when set, else ``os.cpu_count()``.

Inference is the benchmark's :class:`~scripts.benchmark.reference.MonaiReference` with ``normalization="monai"``
(the same pre-transforms as training, without randomness: NormalizeIntensityd(nonzero), ``sliding_window_inference`` roi 64³, overlap 0.5, gaussian, softmax,
Invertd back to the scan's own grid, argmax, SaveImage): ``OUT_DIR/ID.nii.gz`` per
``IMAGES_DIR/ID_0000.nii.gz``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from scripts.benchmark.reference import MonaiReference, ReferenceSpec
from scripts.common import case_id

FEATURES = (16, 16, 32, 64, 128, 16)
PATCH = (64, 64, 64)
SPACING_MM = 2.0
SAMPLES = 2
LR = 1e-3
WEIGHT_DECAY = 1e-5


def threads() -> int:
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else (os.cpu_count() or 1)


def network(features: Sequence[int], n_classes: int):
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=3, in_channels=1, out_channels=n_classes, features=tuple(features))


def train_transforms(spacing: Sequence[float], patch: Sequence[int], samples: int):
    from monai import transforms as T

    keys = ["image", "label"]
    return T.Compose(
        [
            T.LoadImaged(keys=keys, image_only=True),
            T.EnsureChannelFirstd(keys=keys),
            T.Orientationd(keys=keys, axcodes="RAS"),
            T.Spacingd(keys=keys, pixdim=spacing, mode=("bilinear", "nearest")),
            T.NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
            T.SpatialPadd(keys=keys, spatial_size=patch),
            T.FgBgToIndicesd(keys="label"),
            # -- cached up to here; random from here on
            T.RandCropByPosNegLabeld(
                keys=keys,
                label_key="label",
                spatial_size=patch,
                pos=1,
                neg=1,
                num_samples=samples,
                fg_indices_key="label_fg_indices",
                bg_indices_key="label_bg_indices",
            ),
            T.RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
            T.RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
            T.RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
            T.RandScaleIntensityd(keys="image", factors=0.1, prob=1.0),
            T.RandShiftIntensityd(keys="image", offsets=0.1, prob=1.0),
        ]
    )


def train(
    data: Path, out: Path, minutes: float, seed: int, spacing_mm: float, features: Sequence[int], samples: int
) -> dict:
    import torch
    from monai.data import CacheDataset, DataLoader
    from monai.losses import DiceCELoss
    from monai.utils import set_determinism

    from brainseg.data.layouts import discover_dataset

    torch.set_num_threads(threads())
    set_determinism(seed=seed)
    ds = discover_dataset(data)
    labels = {str(k): v for k, v in sorted(ds.labels.items())}
    items = [{"image": str(c.images[0]), "label": str(c.label)} for c in ds.train]
    spacing = [spacing_mm] * 3
    t0 = time.perf_counter()
    dataset = CacheDataset(
        items, transform=train_transforms(spacing, PATCH, samples), cache_rate=1.0, num_workers=0, progress=False
    )
    cache_seconds = time.perf_counter() - t0
    loader = DataLoader(dataset, batch_size=1, shuffle=True, num_workers=0)
    net = network(features, len(labels))
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    budget = minutes * 60.0
    steps, epochs, losses = 0, 0, []
    net.train()
    started = time.perf_counter()
    done = False
    while not done:
        for batch in loader:
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(net(batch["image"]), batch["label"])
            loss.backward()
            optimiser.step()
            losses.append(float(loss))
            steps += 1
            if time.perf_counter() - started >= budget:
                done = True
                break
        else:
            epochs += 1
    seconds = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out / "model.pt")
    meta = {
        "pipeline": "MONAI tutorial reference (scripts.experiments.generalisation.monai_reference)",
        "steps": steps,
        "epochs": epochs,
        "minutes": seconds / 60.0,
        "budget_minutes": minutes,
        "cache_seconds": cache_seconds,
        "cases": len(items),
        "patches_per_step": samples,
        "final_loss_mean_last_10": sum(losses[-10:]) / max(1, len(losses[-10:])),
        "labels": labels,
        "spacing": spacing,
        "spacing_rule": f"fixed {spacing_mm:g} mm isotropic",
        "patch_size": list(PATCH),
        "features": list(features),
        "threads": torch.get_num_threads(),
        "lr": LR,
        "weight_decay": WEIGHT_DECAY,
        "seed": seed,
    }
    (out / "train.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def predict(model_dir: Path, jobs: Sequence[tuple[Path, Path]]) -> dict:
    import torch

    torch.set_num_threads(threads())
    meta = json.loads((model_dir / "train.json").read_text())
    net = network(meta["features"], len(meta["labels"]))
    net.load_state_dict(torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True))
    net.eval()
    spec = ReferenceSpec(
        tuple(sorted(int(k) for k in meta["labels"])), tuple(meta["spacing"]), tuple(meta["patch_size"])
    )
    result = {}
    for images, out in jobs:
        t0 = time.perf_counter()
        ref = MonaiReference(net, spec, "none", Path(out), "cpu", normalization="monai")
        cases = sorted(Path(images).glob("*_0000.nii.gz"))
        for image in cases:
            ref(str(image), case_id(image))
        result[str(out)] = {"cases": len(cases), "seconds": time.perf_counter() - t0}
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m scripts.experiments.generalisation.monai_reference", description=__doc__.split("\n\n")[0]
    )
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train on a data set's training cases for a wall-clock budget")
    t.add_argument("--data", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--minutes", type=float, required=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--spacing", type=float, default=SPACING_MM, help="isotropic training/inference grid, mm")
    t.add_argument("--features", default=",".join(str(f) for f in FEATURES), help="BasicUNet features (6 values)")
    t.add_argument("--samples", type=int, default=SAMPLES, help="patches per image per step")
    r = sub.add_parser("predict", help="segment every IMAGES_DIR/ID_0000.nii.gz into OUT_DIR/ID.nii.gz")
    r.add_argument("--model", type=Path, required=True)
    r.add_argument("--job", nargs=2, type=Path, action="append", required=True, metavar=("IMAGES_DIR", "OUT_DIR"))
    args = p.parse_args(argv)
    if args.command == "train":
        features = [int(v) for v in args.features.split(",")]
        meta = train(args.data, args.out, args.minutes, args.seed, args.spacing, features, args.samples)
        print(
            f"MONAI reference: {meta['steps']} steps ({meta['epochs']} epochs) in {meta['minutes']:.2f} min, "
            f"{meta['threads']} threads; wrote {args.out / 'model.pt'}"
        )
    else:
        for out, r in predict(args.model, args.job).items():
            print(f"MONAI reference: {r['cases']} masks in {out} ({r['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
