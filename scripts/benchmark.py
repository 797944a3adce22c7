#!/usr/bin/env python
"""brainseg against a MONAI reference pipeline, side by side, on one machine.

One run, the same inputs and the same weights for both sides::

    python scripts/benchmark.py --json benchmark.json          # full run (< 15 min on 2 cores)
    python scripts/benchmark.py --quick --json quick.json      # smoke-sized run (< 3 min)
    python scripts/benchmark.py --model runs/tissue            # reuse a trained run folder

What is measured (every pipeline in its own fresh child process, warmed up once
before timing, several cases or patches timed):

* **inference**: input megavoxels per second from reading the file to the written
  mask. brainseg = :class:`~brainseg.infer.predictor.Predictor` + ``write_image``
  through :func:`~brainseg.infer.batch.predict_cases` (what ``brainseg predict``
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
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

# The parts, by job (importing _bench_harness puts the repo on sys.path). The pure
# arithmetic and the MONAI reference are importable from here too (tests, other scripts).
from _bench_children import CHILDREN  # noqa: E402
from _bench_compare import (  # noqa: E402,F401
    dice_difference,
    linearity,
    markdown_table,
    mask_agreement,
    mix_corrected,
    outside_range,
    placement_range,
)
from _bench_harness import load1, log, machine_info, wait_for_quiet  # noqa: E402
from _bench_monai import MonaiReference, ReferenceSpec  # noqa: E402,F401
from _bench_report import report_tables, targets  # noqa: E402
from _bench_sections import (  # noqa: E402
    gpu_section,
    inference_section,
    loader_section,
    make_data,
    network_info,
    scaling_section,
    train_section,
)

# --------------------------------------------------------------------------- settings

QUICK = dict(
    n_subjects=6,
    n_test=2,
    train_minutes=0.6,
    loader_patches={64: 24, 128: 6},
    loader_warmup=3,
    scaling_sizes=[96, 128, 160],
    inference_cases=2,
    repeats=1,
    compile_variant=False,
    reference_shifts=[0.5],
    norm="batch",
)
FULL = dict(
    n_subjects=12,
    n_test=6,
    train_minutes=5.0,
    loader_patches={64: 150, 128: 40},
    loader_warmup=5,
    scaling_sizes=[128, 192, 256, 320],
    inference_cases=6,
    repeats=2,
    compile_variant=True,
    reference_shifts=[0.5],
    norm="batch",
)


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small run (< 3 min on 2 cores)")
    p.add_argument("--json", type=Path, default=None, help="write all figures to this JSON file")
    p.add_argument("--model", type=Path, default=None, help="reuse this run folder / checkpoint instead of training")
    p.add_argument("--workdir", type=Path, default=None, help="keep inputs and outputs here (default: a temp folder)")
    p.add_argument(
        "--only", default="training,inference,loader,scaling,gpu", help="comma-separated sections to run (default: all)"
    )
    p.add_argument("--max-load", type=float, default=None, help="wait for the 1-min load to drop below this first")
    p.add_argument("--max-wait", type=float, default=600.0, help="seconds to wait for --max-load at most")
    from brainseg.model.unet import NORMS

    p.add_argument(
        "--norm",
        choices=NORMS,
        default=None,
        help="normalisation of the benchmarked network (default batch: its output does not depend on "
        "where the windows fall; instance = configs/demo.yaml as it is)",
    )
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
    res: dict[str, Any] = {
        "quick": args.quick,
        "machine": machine_info(),
        "load_1min_start": load_start,
        "settings": {k: v for k, v in settings.items()},
    }
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
            res["inference"] = inference_section(
                model,
                data,
                workdir,
                settings["inference_cases"],
                settings["repeats"],
                settings["compile_variant"],
                shift_fractions=settings["reference_shifts"],
            )
        if "loader" in sections:
            res["loader"] = loader_section(
                data, model, workdir, settings["loader_patches"], settings["loader_warmup"], settings["repeats"]
            )
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
