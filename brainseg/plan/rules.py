"""From a data set's fingerprint to a complete config, each decision with its reason.

nnU-Net's rules where they fit: the median voxel size (an anisotropic data set keeps its
coarse axis at its 10th percentile), a patch from the median shape at that voxel size
within a compute budget, pooling and kernels per axis (:mod:`.network`), batch size 2.
Ours where nnU-Net has none: on a CPU the budget is a step of the real network timed on
this machine, so that ``minutes`` of training gets enough steps and the learning-rate
schedule ends with the planned steps (a run then repeats itself exactly, rather than
following the clock); normalisation by modality; the input-mask rule from how the labels
sit against the scans' non-zero region; left/right label swaps on flips from the label names.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from brainseg.config import Config, InputMask, NormalizationScheme
from brainseg.plan.fingerprint import Fingerprint
from brainseg.plan.network import (
    Topology,
    gpu_memory_gb,
    measure_step_seconds,
    round_patch,
    topology,
)

log = logging.getLogger(__name__)

#: nnU-Net: an axis whose median voxel is over this many times the finest is anisotropic.
ANISOTROPY_RATIO = 3.0
#: On a CPU, the share of the time budget planned for training steps (the rest is validation)
#: and how much slower a step runs beside the patch-loading process than timed alone. A run
#: slower than planned anneals by the clock instead (recipe.schedule_progress).
CPU_STEP_SHARE = 0.95
LOADER_SLOWDOWN = 1.2
#: Under a time budget the planned epochs are this many times the steps timed to fill it:
#: the clock ends the run and the schedule follows the clock, so a run that steps faster
#: than its short timing said still uses its whole budget (a step timed beside other work runs
#: twice as fast later: 1.5x stopped a 10-minute tumour run after 6 minutes).
CPU_STEP_HEADROOM = 3.0
#: Planned steps on a CPU: the patch doubles while more than the upper bound fit and halves
#: (not below ``MIN_CPU_PATCH`` voxels) while fewer than the lower bound do.
CPU_STEPS = (600, 4000)
MIN_CPU_PATCH = 32**3
#: Iterations per epoch (CPU: short epochs, so validation and checkpoints come often enough).
ITERS_PER_EPOCH = {"cpu": 50, "cuda": 250}
#: Validations per run.
VALIDATIONS = 5
#: Fractions of voxels below which labels and the scan's non-zero region count as matching.
MASK_TOLERANCE = 1e-3
#: A label is kept as its largest component when it is one component in every training case.
ONE_COMPONENT = 1
#: Only the largest foreground component is kept when it holds this share of the labelled
#: volume in every training case (a brain, one tumour with satellites).
ONE_FOREGROUND = 0.95


@dataclass
class Plan:
    config: Config
    #: "section.field" -> why it has its value.
    reasons: dict[str, str] = field(default_factory=dict)
    #: Lines describing the data set and the budget (the plan file's header).
    notes: list[str] = field(default_factory=list)
    step_seconds: float | None = None
    planned_steps: int = 0

    def summary(self) -> str:
        c = self.config
        spacing = "x".join(f"{s:g}" for s in c.data.target_spacing or ())
        net = f"{c.model.levels} levels, {c.model.base_features}-{c.model.max_features} features"
        if c.model.strides is not None:
            net += ", anisotropic pooling"
        return (
            f"plan: {spacing} mm, patch {'x'.join(map(str, c.train.patch_size))}"
            f" x{c.train.batch_size}, {net}, {c.train.epochs} epochs x {c.train.iters_per_epoch} steps"
            + (f" (~{self.step_seconds:.2f} s/step)" if self.step_seconds else "")
            + f", {c.data.normalization}, input_mask {c.postprocess.input_mask}"
            + (f", left/right pairs {c.labels.mirror_pairs}" if c.labels.mirror_pairs else "")
        )


def _fmt(values) -> str:
    return "x".join(f"{v:.3g}" for v in values)


def spacing_rule(case_spacings: Sequence[Sequence[float]]) -> tuple[list[float], str]:
    """The target voxel size from the training cases' voxel sizes (RAS order), with its reason:
    the median per axis, except that an anisotropic axis (median over ``ANISOTROPY_RATIO``
    times the finest) takes its 10th percentile. The plan and the trainer (for a null
    ``data.target_spacing``) both use it."""
    spacings = np.array(case_spacings, dtype=float)
    median = np.median(spacings, axis=0)
    coarse = int(np.argmax(median))
    if median[coarse] > ANISOTROPY_RATIO * median.min():
        out = median.copy()
        out[coarse] = np.percentile(spacings[:, coarse], 10)
        return [round(float(v), 4) for v in out], (
            f"median {_fmt(median)} mm; anisotropic (axis {coarse} over {ANISOTROPY_RATIO:g}x the finest): "
            "its 10th percentile, the low-resolution axis kept (nnU-Net)"
        )
    return [
        round(float(v), 4) for v in median
    ], f"the training cases' median voxel size (range {_fmt(spacings.min(0))} to {_fmt(spacings.max(0))} mm)"


def median_shape(fp: Fingerprint, spacing) -> list[float]:
    """The median shape of the foreground (the crop) at ``spacing``, per RAS axis."""
    extents = np.array([c.extent_mm for c in fp.cases], dtype=float)
    return [float(v) for v in np.median(extents, axis=0) / np.asarray(spacing, dtype=float)]


def _scaled_patch(shape, voxels: float, spacing, max_levels: int) -> tuple[list[int], Topology]:
    """A patch of about ``voxels`` voxels shaped like ``shape`` (no side over it), and its topology."""
    k = (voxels / math.prod(shape)) ** (1 / 3)
    raw = [min(s, s * k) for s in shape]
    if min(k, 1.0) < 1.0:  # a side capped at the shape gives its share to the others
        free = [i for i in range(3) if raw[i] < shape[i]]
        rest = voxels / math.prod(raw[i] for i in range(3) if i not in free) if len(free) < 3 else voxels
        scale = (rest / math.prod(raw[i] for i in free)) ** (1 / max(1, len(free)))
        raw = [min(shape[i], raw[i] * scale) if i in free else raw[i] for i in range(3)]
    topo = topology(raw, spacing, max_levels)
    return round_patch(raw, topo.divisor, shape), topo


def plan_network(
    fp: Fingerprint, cfg: Config, reasons: dict, device: str, gpu_memory: float, minutes: float | None, measure: bool
) -> tuple[float | None, int]:
    spacing = cfg.data.target_spacing
    shape = median_shape(fp, spacing)
    n_in = len(fp.channels)
    n_out = len(fp.regions["names"]) if fp.regions else len(fp.label_values)
    if device == "cuda":
        base, top, max_levels, batch = 32, 320, 6, 2
        voxels = float(math.prod(shape))
        while True:
            patch, topo = _scaled_patch(shape, voxels, spacing, max_levels)
            mem = gpu_memory_gb(patch, topo, base, top, batch)
            if mem <= gpu_memory or voxels < 32**3:
                break
            voxels *= 0.9
        why = f"median foreground shape {_fmt(shape)} at the target spacing, within {gpu_memory:g} GB (estimate {mem:.1f} GB)"
        seconds = None
    else:
        small = minutes is not None and minutes <= 30
        base, top, max_levels, batch = (8, 64, 4, 2) if small else (16, 128, 5, 2)
        voxels = 48.0**3 if small else 64.0**3
        budget = (minutes if minutes else 60.0) * 60.0 * CPU_STEP_SHARE
        seconds = None
        for _ in range(4):
            patch, topo = _scaled_patch(shape, voxels, spacing, max_levels)
            if not measure:
                break
            seconds = measure_step_seconds(patch, topo, n_in, n_out, base, top, batch) * LOADER_SLOWDOWN
            steps = budget / seconds
            if steps > CPU_STEPS[1] and voxels * 2 <= math.prod(shape):
                voxels *= 2
            elif steps < CPU_STEPS[0] and voxels / 2 >= MIN_CPU_PATCH:
                voxels /= 2
            else:
                break
        why = (
            f"median foreground shape {_fmt(shape)} at the target spacing, sized for "
            f"{minutes or 60:g} minutes on this CPU" + (f" ({seconds:.2f} s per step, timed here)" if seconds else "")
        )
    cfg.train.patch_size, cfg.train.batch_size = patch, batch
    cfg.model.levels, cfg.model.base_features, cfg.model.max_features = topo.levels, base, top
    cfg.model.strides = None if topo.isotropic else [list(s) for s in topo.strides]
    cfg.model.kernels = None if topo.isotropic else [list(k) for k in topo.kernels]
    reasons["train.patch_size"] = why
    reasons["train.batch_size"] = "nnU-Net's minimum for a stable instance-normalised network"
    reasons["model.levels"] = f"pooling while feature maps stay >= 4 voxels (divisor {list(topo.divisor)})"
    reasons["model.base_features"] = "GPU: nnU-Net's 32" if device == "cuda" else "sized to the CPU time budget"
    if not topo.isotropic:
        reasons["model.strides"] = "per downsampling: the coarse axis is pooled once the others have caught up"
        reasons["model.kernels"] = "kernel 1 along an axis while its voxels are over twice the finest"
    if seconds:
        iters = ITERS_PER_EPOCH["cpu"]
        epochs = max(1, int(budget / seconds / iters))
        return seconds, epochs * iters
    return None, 0


def normalization(fp: Fingerprint) -> tuple[NormalizationScheme, str]:
    names = [c.lower() for c in fp.channels]
    if names and all("ct" == n or n.startswith("ct") for n in names):
        return "ct", "CT channels: clipped to the data set's foreground 0.5-99.5 percentiles, then z-scored"
    noisy = sum(not c.zero_background for c in fp.cases)
    return "zscore", (
        f"MR ({', '.join(fp.channels)}): z-score over each case's foreground"
        f"; {noisy} of {len(fp.cases)} case(s) have a noisy background: their foreground is a threshold mask"
    )


def input_mask(fp: Fingerprint) -> tuple[InputMask, str]:
    zero = [c for c in fp.cases if c.zero_background and c.label_volumes]
    if not zero:
        return "none", "no training case has an exact-zero background"
    outside = max(c.labels_outside_scan for c in zero)
    unlabelled = max(c.scan_unlabelled for c in zero)
    if outside < MASK_TOLERANCE and unlabelled < MASK_TOLERANCE:
        return "fill", (
            f"in every zero-background training case ({len(zero)}) the labels are non-zero exactly where "
            "the scan is; applied per case, only to scans with an exact-zero background"
        )
    if outside < MASK_TOLERANCE:
        return "restrict", f"labels never lie where the scan is zero ({len(zero)} zero-background case(s))"
    return "none", f"{outside:.1%} of some case's labels lie where the scan is zero"


def plan_config(
    fp: Fingerprint, device: str = "cpu", gpu_memory: float = 8.0, minutes: float | None = None, measure: bool = True
) -> Plan:
    """The config for a data set with ``fp``; ``measure``: time the CPU step (False under
    torchrun, where every rank must plan the same: the step time is then not measured and
    ``--max-minutes`` ends the run)."""
    if not fp.cases:
        from brainseg.errors import BrainsegError

        raise BrainsegError("cannot plan: no training case could be fingerprinted")
    cfg, reasons = Config(), {}
    cfg.data.target_spacing, reasons["data.target_spacing"] = spacing_rule([c.ras_spacing for c in fp.cases])
    cfg.data.normalization, reasons["data.normalization"] = normalization(fp)
    reasons["data.crop_to_nonzero"] = "crop to the subject (exact-zero background) or its threshold mask plus 5 mm"
    seconds, steps = plan_network(fp, cfg, reasons, device, gpu_memory, minutes, measure)
    t = cfg.train
    if device == "cuda":
        t.optimizer, t.lr, t.iters_per_epoch, t.epochs = "sgd", 0.01, ITERS_PER_EPOCH["cuda"], 1000
        expected = t.epochs
        reasons["train.optimizer"] = "nnU-Net's SGD (Nesterov, momentum 0.99), lr 0.01, poly schedule"
        t.num_workers = max(1, min(8, (os.cpu_count() or 2) - 1))
        cfg.infer.mirror, cfg.infer.batch_windows = True, 4
        reasons["infer.mirror"] = "test-time mirroring on a GPU (8 passes)"
    else:
        t.optimizer, t.lr, t.iters_per_epoch = "adamw", 0.003, ITERS_PER_EPOCH["cpu"]
        expected = max(1, steps // t.iters_per_epoch) if steps else 1000
        t.epochs = math.ceil(expected * CPU_STEP_HEADROOM) if steps and minutes else expected
        reasons["train.optimizer"] = "AdamW, lr 0.003: learns fastest in short CPU runs"
        reasons["train.epochs"] = (
            (
                f"an upper bound, {CPU_STEP_HEADROOM:g}x the {steps} steps timed to fill {minutes:g} minutes: "
                "--max-minutes ends the run and the schedule follows the clock"
            )
            if steps and minutes
            else f"{steps} steps fill 60 minutes; the schedule ends with them"
            if steps
            else "an upper bound: --max-minutes ends the run"
        )
        t.num_workers = 1
        cfg.infer.mirror, cfg.infer.batch_windows = False, 2
        reasons["infer.mirror"] = (
            "no test-time mirroring on a CPU: 8 passes cost 8x the inference time for a few thousandths "
            "of Dice (`brainseg predict --tta` asks for them)"
        )
    cfg.model.deep_supervision = True
    reasons["model.deep_supervision"] = "nnU-Net's default; a short CPU run learns faster with it"
    t.val_every = max(1, expected // VALIDATIONS) if expected < 1000 else 50
    reasons["train.val_every"] = f"about {VALIDATIONS} validations per run"
    reasons["train.num_workers"] = "loader processes beside training, one core left for the network on a CPU"
    cfg.postprocess.input_mask, reasons["postprocess.input_mask"] = input_mask(fp)
    lat = fp.laterality
    if lat.pairs:
        cfg.labels.mirror_pairs = [list(p) for p in lat.pairs]
        reasons["labels.mirror_pairs"] = "from the label names: swapped whenever a flip mirrors left and right"
    elif lat.unpaired:
        reasons["labels.mirror_pairs"] = (
            f"lateralised labels {list(lat.unpaired)} without partners: no left-right flips"
        )
    else:
        cfg.labels.mirror_pairs = []
        reasons["labels.mirror_pairs"] = "no lateralised label names: flips need no swaps"
    if fp.regions:
        cfg.labels.regions = dict(zip(fp.regions["names"], fp.regions["labels"]))
        cfg.labels.regions_class_order = list(fp.regions["class_order"])
        reasons["labels.regions"] = "the data set's regions: one sigmoid output per region"
    single = [v for v in fp.label_values if v and all(c.label_components.get(v, 0) == ONE_COMPONENT for c in fp.cases)]
    cfg.postprocess.largest_component = single
    least = min((c.foreground_largest_fraction for c in fp.cases if c.label_volumes), default=0.0)
    cfg.postprocess.largest_foreground = least >= ONE_FOREGROUND
    reasons["postprocess.largest_foreground"] = (
        f"the largest component holds >= {least:.1%} of the labelled foreground in every training case: "
        "what lies apart from it is removed"
        if cfg.postprocess.largest_foreground
        else f"in some training case the largest foreground component holds only {least:.1%} of the labels"
    )
    cfg.postprocess.drop_coreless = bool(fp.regions)
    reasons["postprocess.drop_coreless"] = (
        "region labels: foreground components without tumour core are removed where another has core "
        "(a core-less FLAIR-bright blob is the common false positive; validation or the folds switch it off "
        "where it lowers the Dice)"
        if fp.regions
        else "no regions: no tumour core to tell a lesion by"
    )
    reasons["postprocess.largest_component"] = (
        "labels that are one component in every training case"
        if single
        else "every label has several components in some training case"
    )
    reasons["infer.overlap"] = "half-patch steps with Gaussian weights (nnU-Net)"
    reasons["train.synth"] = (  # off: what it buys (other contrasts) and costs (this one) only the user can weigh
        "off: a share (0.5) of patches redrawn from the labels in random contrasts segments other contrasts "
        "and slice thicknesses of this anatomy, at some cost on the training contrast"
        if cfg.data.normalization in ("zscore", "quantile")
        else f"off: synthetic contrasts cannot be drawn into the {cfg.data.normalization} normalisation"
    )
    key = "postprocess.region_thresholds" if fp.regions else "postprocess.class_offsets"
    reasons[key] = "null: chosen on the validation cases at the end of training (kept in the model card)"
    reasons["augment.p_flip"] = "each axis on its own" + (
        "; left-right flips swap the pairs"
        if lat.pairs
        else "; no left-right flips (unpaired lateral labels)"
        if lat.unpaired
        else ""
    )
    notes = [
        f"{len(fp.cases)} training case(s), layout {fp.layout or '?'}, channels {', '.join(fp.channels)}",
        "labels "
        + (", ".join(f"{k} {v}" for k, v in sorted(fp.labels.items())) or f"{fp.label_values} (from the label maps)"),
        f"median voxel size {_fmt(fp.median('ras_spacing'))} mm, median foreground {_fmt(fp.median('extent_mm'))} mm",
    ]
    plan = Plan(cfg, reasons, notes, seconds, steps)
    log.debug("%s", plan.summary())
    return plan
