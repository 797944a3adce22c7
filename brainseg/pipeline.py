"""``brainseg demo``: demo data -> train -> predict -> evaluate, end to end.

Each step is the same code path a user runs from the command line; the demo only
chains them and prints where everything is::

    OUT/data/           demo data set (MSD layout)
    OUT/run/            training run (checkpoints, metrics.csv, curves.png)
    OUT/predictions/    masks for the held-out subjects, volumes.csv
    OUT/evaluation/     metrics.csv, summary.json
    OUT/overlay.png     one prediction over its scan, three orthogonal slices
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .errors import BrainsegError

DEMO_CONFIG_NAME = "demo.yaml"


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
) -> dict:
    from .cli import main as cli_main
    from .config import load_config
    from .data.demo import make_demo_dataset
    from .train.trainer import train
    from .viz import overlay_png

    out = Path(out)
    data, run, preds, evaluation = out / "data", out / "run", out / "predictions", out / "evaluation"
    t0 = time.perf_counter()

    print(f"[1/4] demo data: {n} subjects from the MNI ICBM152 template -> {data}")
    if not (data / "dataset.json").is_file():
        make_demo_dataset(data, n=n, seed=seed)
    else:
        print("      (already there, reused)")

    cfg = load_config(config or find_demo_config(), overrides or [])
    print(f"[2/4] training for up to {max_minutes:g} min -> {run}")
    resume = (run / "checkpoint_last.pt").is_file() and not (run / "checkpoint_final.pt").is_file()
    if (run / "checkpoint_final.pt").is_file():
        print("      (finished run found, reused; delete it to train again)")
    else:
        train(data, run, cfg, device=device, max_minutes=max_minutes, resume=resume)

    print(f"[3/4] predicting the held-out subjects -> {preds}")
    code = cli_main(["predict", "--model", str(run), "--input", str(data / "imagesTs"), "--output", str(preds), "--device", device])
    if code != 0:
        raise BrainsegError("prediction failed for some demo subjects (see above)")

    print(f"[4/4] evaluating against labelsTs -> {evaluation}")
    code = cli_main(["evaluate", "--pred", str(preds), "--ref", str(data / "labelsTs"), "--out", str(evaluation)])
    if code != 0:
        raise BrainsegError("evaluation failed (see above)")
    summary = json.loads((evaluation / "summary.json").read_text())

    dataset = json.loads((data / "dataset.json").read_text())
    names = {int(v): k for k, v in dataset["labels"].items()}
    first = sorted(preds.glob("*.nii.gz"))[0]
    case_id = first.name[: -len(".nii.gz")]
    overlay = overlay_png(
        data / "imagesTs" / f"{case_id}_0000.nii.gz",
        first,
        out / "overlay.png",
        label_names=names,
        title=f"{case_id}: prediction over the scan",
    )
    minutes = (time.perf_counter() - t0) / 60
    _print_table(summary, names)
    print(f"\nfinished in {minutes:.1f} min. Everything is in {out}/:")
    print(f"  training curves   {run / 'curves.png'}")
    print(f"  model             {run}  (brainseg predict --model {run} ...)")
    print(f"  masks + volumes   {preds}")
    print(f"  Dice per case     {evaluation / 'metrics.csv'}")
    print(f"  overlay           {overlay}")
    return summary


def _print_table(summary: dict, names: dict[int, str]) -> None:
    print("\nDice on the held-out demo subjects")
    print(f"  {'label':<16}{'mean':>8}{'std':>8}")
    for key, stats in summary["labels"].items():
        d = stats["dice"]
        print(f"  {names.get(int(key), key):<16}{d['mean']:>8.3f}{d['std']:>8.3f}")
    overall = summary["overall"]["dice"]
    print(f"  {'mean foreground':<16}{overall['mean']:>8.3f}")


def demo_from_cli(args) -> int:
    run_demo(
        args.out,
        n=args.n,
        config=args.config,
        overrides=args.overrides,
        max_minutes=args.max_minutes,
        device=args.device,
        seed=args.seed,
    )
    return 0
