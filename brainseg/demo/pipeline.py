"""``brainseg demo``: demo data -> train -> predict -> evaluate, end to end.

Each step is the library function a user's command runs; the demo only chains them::

    OUT/data/           demo data set (MSD layout)
    OUT/run/            training run (checkpoints, metrics.csv, curves.png)
    OUT/predictions/    masks for the held-out subjects, volumes.csv
    OUT/evaluation/     metrics.csv, summary.json
    OUT/overlay.png     one prediction over its scan, three orthogonal slices

``kind`` "tumour" runs the same chain on the tumour demo data (``brainseg demo-data
--kind tumour``) with ``configs/brats_cpu.yaml``: a region model (WT, TC, ET) whose
held-out Dice is reported per region as well (:func:`~brainseg.evaluate.per_region.evaluate_region_folders`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from brainseg.config import load_config
from brainseg.demo.tissue import make_demo_dataset
from brainseg.demo.tumour import make_tumour_dataset
from brainseg.errors import BrainsegError
from brainseg.evaluate.per_label import evaluate_folders
from brainseg.evaluate.per_region import evaluate_region_folders
from brainseg.infer.batch import predict
from brainseg.infer.outputs import MASK_SUFFIX, PROBABILITIES_SUFFIX
from brainseg.io.naming import NIFTI_GZ, channel_stem
from brainseg.io.pictures import overlay_png
from brainseg.model.checkpoint import load_card
from brainseg.train.trainer import train

log = logging.getLogger(__name__)

DEMO_CONFIG_NAME = "demo.yaml"
#: The demo's kinds of data and the config each trains with.
DEMO_CONFIGS = {"tissue": "demo.yaml", "hemispheres": "demo.yaml", "tumour": "brats_cpu.yaml"}


@dataclass(frozen=True)
class DemoResult:
    summary: dict
    label_names: dict[int, str]
    out: Path
    run_dir: Path
    predictions: Path
    evaluation: Path
    overlay: Path
    minutes: float
    #: Region models: region name -> {"mean", "std"} Dice over the held-out cases.
    regions: dict[str, dict[str, float]] = field(default_factory=dict)


def find_demo_config(name: str = DEMO_CONFIG_NAME) -> Path:
    """configs/NAME (demo.yaml) of the working directory or of the source checkout."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base / "configs" / name
        if candidate.is_file():
            return candidate
    raise BrainsegError(f"configs/{name} not found: run from the repository root or pass --config")


def region_dice(summary: dict) -> dict[str, dict[str, float]]:
    """Region name -> {"mean", "std"} Dice from :func:`~brainseg.evaluate.per_region.evaluate_region_folders`' summary."""
    return {name: {"mean": r["dice"]["mean"], "std": r["dice"]["std"]} for name, r in summary["regions"].items()}


#: The tumour demo: 12 training and 4 held-out cases unless ``n`` says otherwise.
TUMOUR_CASES, TUMOUR_TEST = 16, 4


def run_demo(
    out: Path,
    n: int = 10,
    config: Path | None = None,
    overrides: list[str] | None = None,
    max_minutes: float = 10.0,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
    kind: str = "tissue",
) -> DemoResult:
    if kind not in DEMO_CONFIGS:
        raise BrainsegError(f"demo --kind {kind!r}: expected one of {', '.join(DEMO_CONFIGS)}")
    out = Path(out)
    data, run, preds, evaluation = out / "data", out / "run", out / "predictions", out / "evaluation"
    t0 = time.perf_counter()

    log.info(f"[1/4] demo data ({kind}): {n} subjects from the MNI ICBM152 template -> {data}")
    if not (data / "dataset.json").is_file():
        if kind == "tumour":  # nnU-Net v2 layout (its dataset.json names the regions): imagesTs/labelsTs
            make_tumour_dataset(data, n=n, n_test=TUMOUR_TEST if n == TUMOUR_CASES else None, seed=seed, layout="msd")
        else:
            make_demo_dataset(data, n=n, seed=seed, kind=kind)
    else:
        log.info("      (already there, reused)")

    cfg = load_config(config or find_demo_config(DEMO_CONFIGS[kind]), overrides or [])
    log.info(f"[2/4] training for up to {max_minutes:g} min -> {run}")
    resume = (run / "checkpoint_last.pt").is_file() and not (run / "checkpoint_final.pt").is_file()
    if (run / "checkpoint_final.pt").is_file():
        log.info("      (finished run found, reused; delete it to train again)")
    else:
        train(data, run, cfg, device=device, max_minutes=max_minutes, resume=resume, progress=progress)

    log.info(f"[3/4] predicting the held-out subjects -> {preds}")
    result = predict(run, [data / "imagesTs"], preds, device=device, progress=progress)
    if result.summary.failed:
        raise BrainsegError("prediction failed for some demo subjects (see above)")

    log.info(f"[4/4] evaluating against labelsTs -> {evaluation}")
    summary = evaluate_folders(preds, data / "labelsTs", evaluation, progress=progress)
    if summary["failed"] or not summary["labels"]:
        raise BrainsegError("evaluation failed (see above)")

    card = load_card(run)
    names = dict(card.labels)
    regions = {}
    if card.regions is not None:
        regions = region_dice(
            evaluate_region_folders(preds, data / "labelsTs", evaluation / "regions", card.regions, progress=progress)
        )
    first = sorted(p for p in preds.glob(f"*{MASK_SUFFIX}") if not p.name.endswith(PROBABILITIES_SUFFIX))[0]
    case_id = first.name[: -len(MASK_SUFFIX)]
    overlay = overlay_png(
        data / "imagesTs" / f"{channel_stem(case_id, 0)}{NIFTI_GZ}",
        first,
        out / "overlay.png",
        label_names=names,
        title=f"{case_id}: prediction over the scan",
    )
    minutes = (time.perf_counter() - t0) / 60
    return DemoResult(summary, names, out, run, preds, evaluation, overlay, minutes, regions)
