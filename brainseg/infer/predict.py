"""Batch inference: scans in, label masks in each scan's own voxel grid out.

One case goes through :class:`Predictor`::

    read_channels -> preprocess (RAS, resample to the card's spacing, crop, z-score)
    -> sliding window (logits) -> softmax -> invert_to_original (the file's own grid)
    -> argmax -> class index to label value -> postprocess_labels

so the mask has exactly the input's shape, affine and qform/sform codes, and is
written with :func:`~brainseg.io.write_image` (atomic). :func:`predict_cases` runs a
list of discovered cases SynthSeg-style: a case whose file is unusable is reported
on one stderr line and the others still finish; :func:`predict_from_cli` is the
``brainseg predict`` command.

Outputs in the output folder, per case ``ID`` (from discovery: ``ID_0000.nii.gz`` ->
``ID``): ``ID.nii.gz`` (uint8/int16 labels) and, with ``--save-probabilities``,
``ID_probabilities.nii.gz`` (float32, classes on the 4th axis, same geometry). The
probabilities are written before the mask, so an existing mask means a finished case.
``volumes.csv`` holds the volume (mm³) of every non-background label of the cases
predicted *in this run* (skipped cases are not re-measured; when no case was
predicted the file is left as it was).

Several GPUs: start the command under ``torchrun --nproc-per-node N``. Each rank
takes ``cases[rank::world]`` (no process group is needed), uses ``cuda:LOCAL_RANK``
with ``--device auto``/``cuda``, and writes its own ``volumes_rank{rank}.csv``
instead of ``volumes.csv``; concatenate them (minus the repeated header) if one
table is wanted.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from ..config import Config, InferConfig, PostprocessConfig, apply_overrides, config_from_dict, load_config
from ..data.cases import Case
from ..data.inputs import discover_inputs
from ..data.foreground import far_background
from ..data.preprocess import PreprocessRecord, invert_region_slabs, invert_to_original, preprocess, reorient_array, undo_reorient_array
from ..errors import BrainsegError, InputError, one_line
from ..io import DEFAULT_MAX_VOXELS, Geometry, read_channels, write_image
from ..model.checkpoint import load_model
from ..postprocess import label_volumes, labels_within_input, postprocess_labels, write_volumes_csv
from .sliding_window import SlidingWindow

MASK_SUFFIX = ".nii.gz"
PROBABILITIES_SUFFIX = "_probabilities.nii.gz"
VOLUMES_CSV = "volumes.csv"

T = TypeVar("T")
#: One inference attempt: (windows per forward pass, device of the accumulators).
Attempt = tuple[int, torch.device]


# ----------------------------------------------------------------------------- one case


def label_values(card: dict[str, Any], num_classes: int) -> list[int]:
    """Label value of each class index: the card's label keys in ascending order."""
    values = sorted(int(k) for k in card["labels"])
    if len(values) != num_classes:
        raise BrainsegError(
            f"model card lists {len(values)} labels ({values}) but the model has {num_classes} classes"
        )
    return values


def accumulators_fit_on_gpu(device: torch.device, num_classes: int, padded_shape: Sequence[int]) -> bool:
    """Whether sliding-window accumulators of this size belong on ``device`` (a GPU).

    Estimate: classes x padded voxels x 4 bytes x 2 (scores and their softmax / the
    inverted copy) must stay under half of the GPU's free memory.
    """
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    needed = num_classes * math.prod(int(s) for s in padded_shape) * 4 * 2
    return needed < free / 2


def inference_attempts(device: torch.device, batch_windows: int, output_device: torch.device) -> list[Attempt]:
    """What to try, in order: as configured; on a CUDA OOM one window per pass; then output on the CPU."""
    if device.type != "cuda":
        return [(batch_windows, output_device)]
    cpu = torch.device("cpu")
    attempts: list[Attempt] = []
    for attempt in ((batch_windows, output_device), (1, output_device), (1, cpu)):
        if attempt not in attempts:
            attempts.append(attempt)
    return attempts


def run_with_oom_fallback(
    step: Callable[[int, torch.device], T],
    attempts: Sequence[Attempt],
    log: Callable[[str], None] | None = None,
) -> T:
    """Run ``step(batch_windows, output_device)`` for each attempt until one does not run out of GPU memory.

    The last attempt's ``torch.cuda.OutOfMemoryError`` propagates.
    """
    for i, (batch_windows, output_device) in enumerate(attempts):
        try:
            return step(batch_windows, output_device)
        except torch.cuda.OutOfMemoryError:
            if i == len(attempts) - 1:
                raise
        # Outside the except block, so the failed attempt's tensors can be freed.
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if log is not None:
            nxt_bw, nxt_dev = attempts[i + 1]
            log(f"out of GPU memory; retrying with batch_windows={nxt_bw}, output on {nxt_dev}")
    raise ValueError("no inference attempts given")


class Predictor:
    """A trained model ready to segment cases: one :class:`SlidingWindow`, reused."""

    def __init__(
        self,
        model: torch.nn.Module,
        card: dict[str, Any],
        infer: InferConfig,
        postprocess: PostprocessConfig,
        device: str | torch.device = "cpu",
        log: Callable[[str], None] | None = None,
        max_voxels: int = DEFAULT_MAX_VOXELS,
    ):
        self.model = model.eval()
        self.max_voxels = int(max_voxels)  # refuse scans whose header claims more (config data.max_voxels)
        self.card = card
        self.infer = infer
        self.postprocess = postprocess
        self.device = torch.device(device)
        self.log = log
        self.num_classes = int(card["model"]["num_classes"])
        self.label_values = label_values(card, self.num_classes)
        self.n_channels = len(card["channels"])
        self.window = SlidingWindow(
            model,
            card["patch_size"],
            self.num_classes,
            overlap=infer.overlap,
            batch_windows=infer.batch_windows,
            sigma_scale=infer.sigma_scale,
            margin=infer.margin,
            mirror=infer.mirror,
            amp=infer.amp,
            device=self.device,
            channels_last=infer.channels_last,
        )

    @property
    def label_names(self) -> dict[int, str]:
        return {int(k): str(v) for k, v in self.card["labels"].items()}

    def predict_case(
        self, images: Sequence[str | os.PathLike], return_probabilities: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None, Geometry]:
        """Segment one case given one file per channel (in the card's channel order).

        Returns ``(labels, probabilities, geometry)``: labels (uint8/int16, label values
        of the card) and, if asked for, probabilities (float32, (C, X, Y, Z)), both in
        the first file's own voxel grid, which ``geometry`` describes.
        """
        labels, probs, geometry, _ = self.predict_case_record(images, return_probabilities)
        return labels, probs, geometry

    def predict_case_record(
        self, images: Sequence[str | os.PathLike], return_probabilities: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None, Geometry, PreprocessRecord]:
        """:meth:`predict_case` plus the case's preprocessing record (its background kind, crop box, ...)."""
        if len(images) != self.n_channels:
            raise BrainsegError(
                f"the model expects {self.n_channels} channel(s) {list(self.card['channels'])}, got {len(images)} file(s)"
            )
        data, geometry = read_channels(images, max_voxels=self.max_voxels)
        norm = self.card["normalization"]
        image, _, record = preprocess(
            data,
            geometry,
            target_spacing=self.card["spacing"],
            normalization=norm["scheme"],
            crop_to_nonzero=bool(norm.get("crop_to_nonzero", True)),
        )
        nonzero = np.any(data != 0, axis=0)
        del data
        input_mask = self.input_mask_rule(record)
        if return_probabilities:
            probs = self._probabilities(image, record)
            classes = labels_within_input(probs, nonzero, input_mask)
        else:  # labels only: no full-size probability maps are built
            probs = None
            classes = self._classes(image, record, nonzero, input_mask)
        labels = postprocess_labels(self._to_label_values(classes), geometry.spacing, self.postprocess)
        return labels, probs, geometry, record

    def input_mask_rule(self, record: PreprocessRecord) -> str:
        """The ``postprocess.input_mask`` rule for this case: as configured where the case's
        background is exactly 0, else ``"none"`` (on a noisy background "non-zero" is everywhere)."""
        return self.postprocess.input_mask if record.zero_background else "none"

    def _classes(self, image: np.ndarray, record: PreprocessRecord, nonzero: np.ndarray, input_mask: str) -> np.ndarray:
        """Class indices in the original grid, with the OOM fallbacks (see :func:`classes_in_original_grid`)."""
        on_gpu = accumulators_fit_on_gpu(self.device, self.num_classes, self.window.padded_shape(image.shape[1:]))
        output_device = self.device if on_gpu else torch.device("cpu")
        attempts = inference_attempts(self.device, self.window.batch_windows, output_device)
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))

        far = far_background(image, record.pad_values(), record.far_constant)

        def step(batch_windows: int, device: torch.device) -> np.ndarray:
            probs = force_background_(softmax_(self._logits(tensor, record, batch_windows, device)), far)
            return classes_in_original_grid(probs, record, nonzero, input_mask)

        return run_with_oom_fallback(step, attempts, self.log)

    def _logits(
        self, image: torch.Tensor, record: PreprocessRecord, batch_windows: int, output_device: torch.device
    ) -> torch.Tensor:
        configured = self.window.batch_windows
        self.window.batch_windows = batch_windows
        try:
            return self.window(image, output_device=output_device, pad_value=record.pad_values())
        finally:
            self.window.batch_windows = configured

    def _probabilities(self, image: np.ndarray, record: PreprocessRecord) -> np.ndarray:
        """Class probabilities (C, *original shape) on the CPU, with the OOM fallbacks."""
        on_gpu = accumulators_fit_on_gpu(self.device, self.num_classes, self.window.padded_shape(image.shape[1:]))
        output_device = self.device if on_gpu else torch.device("cpu")
        attempts = inference_attempts(self.device, self.window.batch_windows, output_device)
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        far = far_background(image, record.pad_values(), record.far_constant)
        return run_with_oom_fallback(
            lambda bw, dev: self._probabilities_once(tensor, record, bw, dev, far), attempts, self.log
        )

    def _probabilities_once(
        self, image: torch.Tensor, record: PreprocessRecord, batch_windows: int, output_device: torch.device,
        far: np.ndarray | None,
    ) -> np.ndarray:
        probs = force_background_(torch.softmax(self._logits(image, record, batch_windows, output_device), dim=0), far)
        return invert_to_original(probs, record).cpu().numpy()

    def _to_label_values(self, classes: np.ndarray) -> np.ndarray:
        if self.label_values == list(range(self.num_classes)):
            return classes
        dtype = np.uint8 if max(self.label_values) <= 255 else np.int16
        return np.asarray(self.label_values, dtype=dtype)[classes]


@torch.inference_mode()  # the sliding window's output is an inference tensor
def softmax_(logits: torch.Tensor) -> torch.Tensor:
    """``torch.softmax(logits, dim=0)`` computed in the logits' own memory (no second C-channel volume)."""
    logits -= logits.amax(dim=0, keepdim=True)
    logits.exp_()
    logits /= logits.sum(dim=0, keepdim=True)
    return logits


@torch.inference_mode()  # the sliding window's output is an inference tensor
def force_background_(probs: torch.Tensor, far: np.ndarray | None) -> torch.Tensor:
    """In place: the background one-hot where ``far`` (a noisy scan's far background, see
    :func:`~brainseg.data.foreground.far_background`); ``probs`` is (C, x, y, z)."""
    if far is not None and far.any():
        where = torch.from_numpy(far).to(probs.device)
        probs[:, where] = 0.0
        probs[0, where] = 1.0
    return probs


def classes_in_original_grid(
    probs: torch.Tensor, record: PreprocessRecord, nonzero: np.ndarray, input_mask: str
) -> np.ndarray:
    """``labels_within_input(invert_to_original(probs, record), nonzero, input_mask)``, cheaply.

    Only the region of the original grid that the crop box reaches is interpolated
    (:func:`~brainseg.data.preprocess.invert_region_slabs`, a slab at a time) and reduced to class indices
    there; outside it the probabilities are the background one-hot, whose label (per
    ``nonzero`` and ``input_mask``) is filled in directly. The reorientation is undone
    on the small integer map instead of the C float maps.
    """
    ornt = np.asarray(record.ornt)
    nonzero_ras = reorient_array(np.asarray(nonzero, dtype=bool), ornt)
    # what labels_within_input gives a voxel whose probabilities are the background one-hot
    onehot = np.zeros((probs.shape[0], 1, 1, 2), dtype=np.float32)
    onehot[0] = 1.0
    outside = labels_within_input(onehot, np.array([[[False, True]]]), input_mask)[0, 0]
    classes = np.where(nonzero_ras, outside[1], outside[0]).astype(outside.dtype)
    for slab, where in invert_region_slabs(probs, record):  # a slab at a time: bounded memory
        scores = slab.cpu().numpy()  # (x, y, z, C): classes last, so the argmax reads contiguous memory
        classes[where] = labels_within_input(np.moveaxis(scores, -1, 0), nonzero_ras[where], input_mask)
    return np.ascontiguousarray(undo_reorient_array(classes, ornt))


# ----------------------------------------------------------------------------- many cases


@dataclass
class PredictionSummary:
    """What a batch run did: case ids written, skipped and failed (with the error line)."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    #: mm³ per label for each case written in this run.
    volumes: dict[str, dict[int, float]] = field(default_factory=dict)
    #: Per case written: its background ("zero": exactly 0, the input-mask rule applied;
    #: "noise": the rule not applied), the ``background`` column of volumes.csv.
    backgrounds: dict[str, str] = field(default_factory=dict)

    def report(self) -> str:
        text = f"{len(self.written)} written, {len(self.skipped)} skipped, {len(self.failed)} failed"
        if self.skipped:
            text += f"\n{len(self.skipped)} case(s) skipped because their output exists (--overwrite redoes them)"
        if self.failed:
            text += "\nfailed cases: " + ", ".join(case for case, _ in self.failed)
        return text


def output_paths(output_dir: Path, case_id: str, save_probabilities: bool) -> dict[str, Path]:
    """The files a case produces: ``mask`` and, if asked for, ``probabilities``."""
    paths = {"mask": output_dir / f"{case_id}{MASK_SUFFIX}"}
    if save_probabilities:
        paths["probabilities"] = output_dir / f"{case_id}{PROBABILITIES_SUFFIX}"
    return paths


def error_line(case: Case, exc: BaseException) -> str:
    """One line ``<file>: <problem>`` (or ``case ID: <problem>``) for a failed case."""
    if isinstance(exc, InputError):
        return str(exc)
    if isinstance(exc, OSError):
        where = exc.filename or f"case {case.case_id}"
        return f"{where}: {exc.strerror or exc}"
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return f"case {case.case_id}: out of GPU memory even with batch_windows=1 and the output on the CPU"
    return f"case {case.case_id}: {exc}"


def _report_error(line: str) -> None:
    tqdm.write(one_line(f"brainseg: error: {line}"), file=sys.stderr)


def predict_one(predictor: Predictor, case: Case, outputs: dict[str, Path]) -> tuple[dict[int, float], str]:
    """Segment one case, write its files; return its label volumes (mm³, background left out)
    and its background kind ("zero" or "noise")."""
    labels, probs, geometry, record = predictor.predict_case_record(list(case.images), "probabilities" in outputs)
    if probs is not None:
        write_image(outputs["probabilities"], np.moveaxis(probs, 0, -1), geometry, dtype=np.float32)
    write_image(outputs["mask"], labels, geometry)
    foreground = [v for v in predictor.label_values if v != 0]
    return label_volumes(labels, geometry.spacing, foreground), "zero" if record.zero_background else "noise"


def predict_cases(
    predictor: Predictor,
    cases: Sequence[Case],
    output_dir: str | os.PathLike,
    overwrite: bool = False,
    save_probabilities: bool = False,
    progress: bool = False,
    debug: bool = False,
) -> PredictionSummary:
    """Predict ``cases`` (from :func:`~brainseg.data.discovery.discover_inputs`) into ``output_dir``.

    A case whose outputs all exist is skipped unless ``overwrite``. A case that fails
    on its input (:class:`BrainsegError`, :class:`OSError`, or a CUDA OOM after every
    fallback) is reported as one stderr line (with the traceback if ``debug``) and
    the run goes on; anything else is a bug and propagates.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = PredictionSummary()
    for case in tqdm(cases, desc="predict", unit="case", disable=not progress):
        outputs = output_paths(output_dir, case.case_id, save_probabilities)
        if not overwrite and all(p.exists() for p in outputs.values()):
            summary.skipped.append(case.case_id)
            continue
        try:
            summary.volumes[case.case_id], summary.backgrounds[case.case_id] = predict_one(predictor, case, outputs)
        except (BrainsegError, OSError, torch.cuda.OutOfMemoryError) as exc:
            if debug:
                traceback.print_exc(file=sys.stderr)
            line = error_line(case, exc)
            _report_error(line)
            summary.failed.append((case.case_id, line))
            continue
        summary.written.append(case.case_id)
    return summary


def write_volumes(
    output_dir: Path, summary: PredictionSummary, label_names: dict[int, str], rank: int = 0, world: int = 1
) -> Path | None:
    """Write this run's volumes (``volumes.csv``, or ``volumes_rank{r}.csv`` under torchrun)."""
    if not summary.volumes:
        return None
    name = VOLUMES_CSV if world == 1 else f"volumes_rank{rank}.csv"
    extra = {"background": summary.backgrounds}
    try:
        return write_volumes_csv(output_dir / name, summary.volumes, label_names, extra)
    except ValueError:  # label names that clash as CSV columns: fall back to label_<v>
        return write_volumes_csv(output_dir / name, summary.volumes, None, extra)


# ----------------------------------------------------------------------------- command line


def distributed_rank() -> tuple[int, int, int]:
    """``(rank, world size, local rank)`` from torchrun's environment; (0, 1, 0) without it."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise BrainsegError("WORLD_SIZE, RANK and LOCAL_RANK must be integers") from None
    if world < 1 or not 0 <= rank < world:
        raise BrainsegError(f"invalid torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return rank, world, local


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> a GPU if there is one, else the CPU; ``cuda`` -> ``cuda:LOCAL_RANK``."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise BrainsegError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise BrainsegError(f"--device {spec!r}: only cpu and cuda are supported")
    if not torch.cuda.is_available():
        raise BrainsegError(f"--device {spec}: CUDA is not available on this machine")
    index = device.index if device.index is not None else local_rank % torch.cuda.device_count()
    if index >= torch.cuda.device_count():
        raise BrainsegError(f"--device {spec}: only {torch.cuda.device_count()} GPU(s) visible")
    return torch.device("cuda", index)


def inference_config(card: dict[str, Any], config_path: Path | None, overrides: Sequence[str]) -> Config:
    """The config to predict with.

    With ``--config`` that file (plus ``--set``); otherwise the ``infer`` and
    ``postprocess`` sections stored in the model card (plus ``--set``), so a model
    predicts the way it was configured at training time.
    """
    if config_path is not None:
        return load_config(config_path, overrides)
    stored = card.get("config") or {}
    sections = {k: stored[k] for k in ("infer", "postprocess") if k in stored}
    try:
        return config_from_dict(apply_overrides(sections, overrides))
    except BrainsegError as exc:
        raise BrainsegError(f"model card config: {exc}") from None


def check_output_folder(output: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output folder that is an input folder or inside one (inputs are never written)."""
    out = Path(output).resolve()
    if out.exists() and not out.is_dir():
        raise BrainsegError(f"{output}: the output exists and is not a folder")
    for item in inputs:
        src = Path(item).resolve()
        if not src.exists():
            continue  # discovery reports it
        folder = src if src.is_dir() else src.parent
        if out == folder:
            raise BrainsegError(
                f"{output}: refusing to write into the input folder {item}; choose another output folder"
            )
        if src.is_dir() and out.is_relative_to(src):
            raise BrainsegError(
                f"{output}: refusing to write inside the input folder {item}; choose a folder outside the data"
            )


def predict_from_cli(args: argparse.Namespace) -> int:
    """``brainseg predict``: returns 0 when every case was written or skipped, 1 if any failed."""
    check_output_folder(args.output, args.input)
    rank, world, local_rank = distributed_rank()
    device = resolve_device(args.device, local_rank)
    model, card = load_model(args.model, device)
    config = inference_config(card, getattr(args, "config", None), getattr(args, "overrides", []) or [])
    cases = discover_inputs(args.input, n_channels=len(card["channels"]))
    mine = list(cases)[rank::world]
    progress = not args.no_progress and sys.stderr.isatty() and rank == 0
    predictor = Predictor(
        model, card, config.infer, config.postprocess, device, log=_report_warning, max_voxels=config.data.max_voxels
    )
    summary = predict_cases(
        predictor,
        mine,
        args.output,
        overwrite=args.overwrite,
        save_probabilities=args.save_probabilities,
        progress=progress,
        debug=getattr(args, "debug", False),
    )
    volumes = write_volumes(Path(args.output), summary, predictor.label_names, rank, world)
    where = f"rank {rank}/{world}: " if world > 1 else ""
    print(f"brainseg predict: {where}{summary.report()}")
    if volumes is not None:
        print(f"masks in {args.output}, volumes in {volumes}")
    return 1 if summary.failed else 0


def _report_warning(message: str) -> None:
    tqdm.write(f"brainseg: warning: {message}", file=sys.stderr)
