"""``brainseg demo``: demo data -> train -> predict -> evaluate, end to end.

Each step is the library function a user's command runs; the demo only chains them::

    OUT/data/           demo data set (MSD layout)
    OUT/run/            training run (checkpoints, metrics.csv, curves.png)
    OUT/predictions/    masks for the held-out subjects, volumes.csv
    OUT/evaluation/     metrics.csv, summary.json
    OUT/overlay.png     one prediction over its scan, three orthogonal slices
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from .config import load_config
from .data.demo import make_demo_dataset
from .errors import BrainsegError
from .evaluate import evaluate_folders
from .infer.batch import MASK_SUFFIX, PROBABILITIES_SUFFIX, predict
from .naming import NIFTI_GZ, channel_stem
from .train.trainer import train
from .viz import overlay_png

log = logging.getLogger(__name__)

DEMO_CONFIG_NAME = "demo.yaml"


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


def find_demo_config() -> Path:
    """configs/demo.yaml of the working directory or of the source checkout."""
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        candidate = base / "configs" / DEMO_CONFIG_NAME
        if candidate.is_file():
            return candidate
    raise BrainsegError("configs/demo.yaml not found: run from the repository root or pass --config")


def run_demo(
    out: Path,
    n: int = 10,
    config: Path | None = None,
    overrides: list[str] | None = None,
    max_minutes: float = 10.0,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> DemoResult:
    out = Path(out)
    data, run, preds, evaluation = out / "data", out / "run", out / "predictions", out / "evaluation"
    t0 = time.perf_counter()

    log.info(f"[1/4] demo data: {n} subjects from the MNI ICBM152 template -> {data}")
    if not (data / "dataset.json").is_file():
        make_demo_dataset(data, n=n, seed=seed)
    else:
        log.info("      (already there, reused)")

    cfg = load_config(config or find_demo_config(), overrides or [])
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

    dataset = json.loads((data / "dataset.json").read_text())
    names = {int(v): k for k, v in dataset["labels"].items()}
    first = sorted(p for p in preds.glob(f"*{MASK_SUFFIX}") if not p.name.endswith(PROBABILITIES_SUFFIX))[0]
    case_id = first.name[: -len(MASK_SUFFIX)]
    overlay = overlay_png(
        data / "imagesTs" / f"{channel_stem(case_id, 0)}{NIFTI_GZ}",
        first,
        out / "overlay.png",
        label_names=names,
        title=f"{case_id}: prediction over the scan",
    )
    return DemoResult(summary, names, out, run, preds, evaluation, overlay, (time.perf_counter() - t0) / 60)
