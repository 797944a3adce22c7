"""Batch inference: many cases in, one mask per case (and ``volumes.csv``) out.

:func:`predict` is what ``brainseg predict`` runs: it loads the model, discovers the
cases, takes this rank's share under torchrun and runs :func:`predict_cases`, which
goes SynthSeg-style: a case whose file is unusable is logged as one error line and
the others still finish.

Outputs in the output folder, per case ``ID`` (``ID_0000.nii.gz`` -> ``ID``):
``ID.nii.gz`` (uint8/int16 labels) and, with ``save_probabilities``,
``ID_probabilities.nii.gz`` (float32, classes on the 4th axis, same geometry; a region
model's regions, one sigmoid probability each) with ``ID_probabilities.json`` naming its
channels in order (``{"kind": "classes" | "regions", "channels": [names]}``); with
``dicom_seg``, for a case read from a DICOM series, ``ID_seg.dcm``: a DICOM SEG of the
mask referencing that series (when highdicom cannot build one for the series, one
warning line and the NIfTI mask stands). The probabilities and the SEG are written
before the mask, so an existing mask means a finished case.
``volumes.csv`` holds the volume (mm³) of every non-background label of the cases
predicted *in this run* (skipped cases are not re-measured; when no case was
predicted the file is left as it was), its ``background`` (zero or noise) and ``ood``:
empty, or why the scan is unlike the training scans (the model card's ranges; each such
case also gets one warning line).

With ``bids_derivatives`` the inputs are BIDS folders and each case's files are BIDS
derivatives instead (``OUT/sub-*/[ses-*/]anat/..._desc-brainseg_dseg.nii.gz`` and its
sidecars, per-case volume tables, ``dataset_description.json``: :mod:`.derivatives`); no
``volumes.csv`` is written then.

Several GPUs: start the command under ``torchrun --nproc-per-node N``. Each rank
takes ``cases[rank::world]`` (no process group is needed), uses ``cuda:LOCAL_RANK``
with device ``auto``/``cuda``, and writes its own ``volumes_rank{rank}.csv`` instead
of ``volumes.csv``; concatenate them (minus the repeated header) if one table is wanted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from brainseg._version import __version__
from brainseg.config import Config, apply_overrides, config_from_dict, load_config
from brainseg.data.bids import is_bids_root
from brainseg.data.cases import Case
from brainseg.data.inputs import discover_inputs
from brainseg.errors import BrainsegError, InputError
from brainseg.infer import derivatives
from brainseg.infer.derivatives import BidsOutput
from brainseg.infer.predictor import Predictor
from brainseg.io.atomic import atomic_write_text
from brainseg.io.dicom import DicomSeries
from brainseg.io.dicom_seg import INSTALL_HINT, SEG_SUFFIX, highdicom_available, write_dicom_seg
from brainseg.io.images import write_image
from brainseg.io.naming import NIFTI_GZ, PROBABILITIES_TAG
from brainseg.model.card import ModelCard
from brainseg.model.checkpoint import load_model, resolve_checkpoint
from brainseg.postprocess.volumes import label_volumes, write_volumes_csv
from brainseg.runtime import resolve_device, torchrun_env

log = logging.getLogger(__name__)

MASK_SUFFIX = NIFTI_GZ
PROBABILITIES_SUFFIX = PROBABILITIES_TAG + NIFTI_GZ
PROBABILITIES_SIDECAR_SUFFIX = PROBABILITIES_TAG + ".json"
VOLUMES_CSV = "volumes.csv"


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
    #: Per case written: why it is unlike the training scans ("; "-joined), the ``ood`` column.
    ood: dict[str, str] = field(default_factory=dict)

    def report(self) -> str:
        text = f"{len(self.written)} written, {len(self.skipped)} skipped, {len(self.failed)} failed"
        if self.skipped:
            text += f"\n{len(self.skipped)} case(s) skipped because their output exists (--overwrite redoes them)"
        if self.failed:
            text += "\nfailed cases: " + ", ".join(case for case, _ in self.failed)
        return text


def output_paths(
    output_dir: Path, case_id: str, save_probabilities: bool, bids: bool = False, dicom_seg: bool = False
) -> dict[str, Path]:
    """The files a case produces: ``mask`` and, if asked for, ``probabilities`` and ``dicom_seg`` (with
    ``bids``, the BIDS derivatives' names and their sidecars, :func:`brainseg.infer.derivatives.output_paths`)."""
    if bids:
        paths = derivatives.output_paths(output_dir, case_id, save_probabilities)
        if dicom_seg:
            paths["dicom_seg"] = paths["mask"].with_name(f"{case_id}{SEG_SUFFIX}")
        return paths
    paths = {"mask": output_dir / f"{case_id}{MASK_SUFFIX}"}
    if save_probabilities:
        paths["probabilities"] = output_dir / f"{case_id}{PROBABILITIES_SUFFIX}"
        paths["probabilities_channels"] = output_dir / f"{case_id}{PROBABILITIES_SIDECAR_SUFFIX}"
    if dicom_seg:
        paths["dicom_seg"] = output_dir / f"{case_id}{SEG_SUFFIX}"
    return paths


def probability_channels(card: ModelCard) -> dict:
    """What the probability file's channels are: the card's classes (label names) or regions."""
    if card.regions is not None:
        return {"kind": "regions", "channels": list(card.regions.names)}
    return {"kind": "classes", "channels": [card.labels[v] for v in card.label_values]}


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


def predict_one(
    predictor: Predictor, case: Case, outputs: dict[str, Path], bids: BidsOutput | None = None
) -> tuple[dict[int, float], str, str]:
    """Segment one case, write its files; return its label volumes (mm³, background left out),
    its background kind ("zero" or "noise") and why it is out of distribution ("" if it is not).

    The mask is written last; if any write fails, the files this call wrote are removed, so a
    failed case leaves no partial set of outputs."""
    prepared = predictor.prepare(list(case.images))
    ood = "; ".join(prepared.ood)
    if prepared.ood:
        log.warning("%s: unlike the training scans: %s", case.case_id, ood)
    labels, probs = predictor.segment(prepared, "probabilities" in outputs)
    geometry, record = prepared.geometry, prepared.record
    foreground = [v for v in predictor.label_values if v != 0]
    background = "zero" if record.zero_background else "noise"
    volumes = label_volumes(labels, geometry.spacing, foreground)
    texts: dict[str, str] = {}
    if probs is not None:
        channels = probability_channels(predictor.card)
        texts["probabilities_channels"] = (
            json.dumps(channels, indent=1) if bids is None else derivatives.probseg_json(bids, case, channels)
        )
    if bids is not None:
        texts["lut"] = derivatives.lut_tsv(predictor.card)
        texts["sidecar"] = derivatives.sidecar_json(bids, case, background, ood)
        texts["volumes"] = derivatives.volumes_tsv(volumes, predictor.label_names)
    written: list[Path] = []
    try:
        if probs is not None:
            write_image(outputs["probabilities"], np.moveaxis(probs, 0, -1), geometry, dtype=np.dtype(np.float32))
            written.append(outputs["probabilities"])
        for key, text in texts.items():
            atomic_write_text(outputs[key], text)
            written.append(outputs[key])
        if "dicom_seg" in outputs and isinstance(case.images[0], DicomSeries):
            try:
                write_dicom_seg(outputs["dicom_seg"], labels, case.images[0], predictor.label_names, __version__)
                written.append(outputs["dicom_seg"])
            except InputError as exc:  # the SEG needs what the series lacks: the NIfTI mask still stands
                log.warning("%s", exc)
        write_image(outputs["mask"], labels, geometry)
    except BaseException:
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    return volumes, background, ood


def predict_cases(
    predictor: Predictor,
    cases: Sequence[Case],
    output_dir: str | os.PathLike,
    overwrite: bool = False,
    save_probabilities: bool = False,
    progress: bool = False,
    debug: bool = False,
    bids: BidsOutput | None = None,
    dicom_seg: bool = False,
) -> PredictionSummary:
    """Predict ``cases`` (from :func:`discover_inputs`) into ``output_dir`` (with ``bids``, as BIDS
    derivatives: :mod:`brainseg.infer.derivatives`).

    A case whose outputs all exist is skipped unless ``overwrite``; with ``dicom_seg`` a
    case read from a DICOM series also needs its SEG. A case that fails
    on its input (:class:`BrainsegError`, :class:`OSError`, or a CUDA OOM after every
    fallback) is logged as one error line (with the traceback if ``debug``) and
    the run goes on; anything else is a bug and propagates.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = PredictionSummary()
    for case in tqdm(cases, desc="predict", unit="case", disable=not progress):
        seg = dicom_seg and isinstance(case.images[0], DicomSeries)
        outputs = output_paths(output_dir, case.case_id, save_probabilities, bids is not None, seg)
        if not overwrite and all(p.exists() for p in outputs.values()):
            summary.skipped.append(case.case_id)
            continue
        try:
            volumes, background, ood = predict_one(predictor, case, outputs, bids)
            summary.volumes[case.case_id], summary.backgrounds[case.case_id], summary.ood[case.case_id] = (
                volumes,
                background,
                ood,
            )
        except (BrainsegError, OSError, torch.cuda.OutOfMemoryError) as exc:
            line = error_line(case, exc)
            log.error(line, exc_info=debug)
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
    extra = {"background": summary.backgrounds, "ood": summary.ood}
    try:
        return write_volumes_csv(output_dir / name, summary.volumes, label_names, extra)
    except ValueError:  # label names that clash as CSV columns: fall back to label_<v>
        return write_volumes_csv(output_dir / name, summary.volumes, None, extra)


def inference_config(card: ModelCard, config_path: Path | None, overrides: Sequence[str]) -> Config:
    """The config to predict with.

    With ``--config`` that file (plus ``--set``); otherwise the ``infer`` and
    ``postprocess`` sections stored in the model card (plus ``--set``), so a model
    predicts the way it was configured at training time.
    """
    if config_path is not None:
        return load_config(config_path, overrides)
    stored = card.config
    sections = {k: stored[k] for k in ("infer", "postprocess") if k in stored}
    try:
        return config_from_dict(apply_overrides(sections, overrides))
    except BrainsegError as exc:
        raise BrainsegError(f"model card config: {exc}") from None


def load_predictor(
    model_path: str | os.PathLike,
    device: torch.device,
    *,
    checkpoint: str | None = None,
    config_path: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
) -> Predictor:
    """The predictor ``brainseg predict`` segments with: the model of ``model_path`` (``checkpoint``:
    which of a run folder's) with its card's settings, or ``config_path``'s (:func:`inference_config`)."""
    model, card = load_model(model_path, device, checkpoint=checkpoint)
    config = inference_config(card, Path(config_path) if config_path is not None else None, overrides)
    return Predictor(
        model, card, config.infer, config.postprocess, device, log=log.warning, max_voxels=config.data.max_voxels
    )


def check_output_folder(output: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output folder that is an input folder or inside one (inputs are never written),
    except a BIDS root's ``derivatives/``, where BIDS puts them."""
    out = Path(output).resolve()
    if out.exists() and not out.is_dir():
        raise BrainsegError(f"{output}: the output exists and is not a folder")
    for item in inputs:
        src = Path(item).resolve()
        if not src.exists():
            continue  # discovery reports it
        folder = src if src.is_dir() else src.parent
        if src.is_dir() and is_bids_root(src) and out.is_relative_to(src / "derivatives"):
            continue  # a BIDS data set's derivatives/ folder: discovery never reads it
        if out == folder:
            raise BrainsegError(
                f"{output}: refusing to write into the input folder {item}; choose another output folder"
            )
        if src.is_dir() and out.is_relative_to(src):
            raise BrainsegError(
                f"{output}: refusing to write inside the input folder {item}; choose a folder outside the data"
            )


@dataclass
class BatchResult:
    """:func:`predict`'s outcome: the per-case summary and where the volumes went."""

    summary: PredictionSummary
    volumes_csv: Path | None
    rank: int = 0
    world_size: int = 1


def predict(
    model_path: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    device: str = "auto",
    config_path: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
    save_probabilities: bool = False,
    progress: bool = False,
    debug: bool = False,
    checkpoint: str | None = None,
    bids_derivatives: bool = False,
    dicom_seg: bool = False,
) -> BatchResult:
    """Segment every case found in ``inputs`` into ``output`` (this rank's share under torchrun).

    ``checkpoint``: which checkpoint of a run folder (``final``, ``best``, ``last``); None:
    final if the run finished, else best, else last
    (:func:`~brainseg.model.checkpoint.resolve_checkpoint`). ``bids_derivatives``: the inputs are
    BIDS folders and the outputs are written as BIDS derivatives (:mod:`brainseg.infer.derivatives`)
    instead of ``ID.nii.gz`` and ``volumes.csv``. ``dicom_seg``: also a DICOM SEG for each case read
    from a DICOM series (needs highdicom, checked before any work)."""
    if dicom_seg and not highdicom_available():
        raise BrainsegError(f"--dicom-seg: {INSTALL_HINT}")
    paths = [Path(p) for p in inputs]
    output = Path(output)
    check_output_folder(output, paths)
    env = torchrun_env()
    dev = resolve_device(device, env.local_rank)
    predictor = load_predictor(model_path, dev, checkpoint=checkpoint, config_path=config_path, overrides=overrides)
    cases = discover_inputs(paths, channel_names=predictor.card.channels)
    bids = derivatives.bids_output(output, cases) if bids_derivatives else None
    if bids is not None and env.is_main:
        source = resolve_checkpoint(model_path, checkpoint)
        derivatives.write_dataset_files(bids, source, derivatives.checkpoint_sha256(source))
    mine = list(cases)[env.rank :: env.world_size]
    summary = predict_cases(
        predictor,
        mine,
        output,
        overwrite=overwrite,
        save_probabilities=save_probabilities,
        progress=progress and env.is_main,
        debug=debug,
        bids=bids,
        dicom_seg=dicom_seg,
    )
    volumes = (
        None if bids is not None else write_volumes(output, summary, predictor.label_names, env.rank, env.world_size)
    )
    return BatchResult(summary, volumes, env.rank, env.world_size)
