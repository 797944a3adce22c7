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
``preview``, ``ID_preview.png`` (three slices of the scan with the mask over it); with
``dicom_seg``, for a case read from a DICOM series, ``ID_seg.dcm``: a DICOM SEG of the
mask referencing that series (when highdicom cannot build one for the series, one
warning line and the NIfTI mask stands). These are written before the mask, so an
existing mask means a finished case. With ``save_uncertainty``, ``ID_uncertainty.nii.gz``
(float32 in [0, 1], same geometry: one model's entropy, or the disagreement of an ensemble's
members or mirrored passes, :mod:`brainseg.infer.ensemble`).

Several models (``--model A B``, a cross-validation run folder's ``fold_*``) predict as one ensemble
(:mod:`brainseg.infer.ensemble`): the mean of their probabilities, the first member's decision.
``volumes.csv`` holds the volume (mm³) of every non-background label of the cases
predicted *in this run* (skipped cases are not re-measured; when no case was
predicted the file is left as it was), its ``background`` (zero or noise) and ``ood``:
empty, or why the scan is unlike the training scans (the model card's ranges; each such
case also gets one warning line). ``brainseg_run.json`` records how each mask was made
(:mod:`brainseg.infer.provenance`); a case is skipped only when its outputs exist and were
made from the same input files (by SHA-256), model and settings.

With ``bids_derivatives`` the inputs are BIDS folders and each case's files are BIDS
derivatives instead (``OUT/sub-*/[ses-*/]anat/..._desc-brainseg_dseg.nii.gz`` and its
sidecars, per-case volume tables, ``dataset_description.json``: :mod:`.derivatives`); no
``volumes.csv`` is written then.

Several GPUs: start the command under ``torchrun --nproc-per-node N``. Each rank
takes ``cases[rank::world]`` (no process group is needed) and uses ``cuda:LOCAL_RANK``
with device ``auto``/``cuda``; the rank that finishes last merges the ranks' parts into
one ``volumes.csv`` and one ``brainseg_run.json`` (no rank waits for another).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from brainseg.data.cases import Case
from brainseg.data.inputs import discover_inputs
from brainseg.errors import BrainsegError
from brainseg.infer import derivatives, provenance
from brainseg.infer.derivatives import BidsOutput
from brainseg.infer.ensemble import load_members
from brainseg.infer.loading import inference_config, preset_overrides
from brainseg.infer.outputs import (
    check_output_folder,
    output_paths,
    predict_one,
)
from brainseg.infer.predictor import Predictor
from brainseg.infer.provenance import Fingerprint, is_current
from brainseg.infer.qc import QC_THRESHOLD, qc_columns
from brainseg.infer.summary import PredictionSummary, error_line
from brainseg.io.dicom import DicomSeries
from brainseg.io.dicom_seg import INSTALL_HINT, highdicom_available
from brainseg.model.card import ModelCard, package_versions
from brainseg.postprocess.volumes import write_volumes_csv
from brainseg.runtime import effective_amp, resolve_device, torchrun_env

log = logging.getLogger(__name__)

VOLUMES_CSV = "volumes.csv"


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
    preview: bool = False,
    save_uncertainty: bool = False,
    fingerprint: Fingerprint | None = None,
    journal: Callable[[PredictionSummary], None] | None = None,
    qc_threshold: float = QC_THRESHOLD,
    qc_predictor: Predictor | None = None,
) -> PredictionSummary:
    """Predict ``cases`` (from :func:`discover_inputs`) into ``output_dir`` (with ``bids``, as BIDS
    derivatives: :mod:`brainseg.infer.derivatives`).

    Unless ``overwrite``, a case whose outputs all exist (with ``dicom_seg``, a case read from
    a DICOM series also needs its SEG) is skipped: without a ``fingerprint`` always, with one
    only when its recorded entry names the same input hashes, model and settings
    (:func:`~brainseg.infer.provenance.is_current`). With a fingerprint, a case's entry is added
    to ``summary.records`` and ``journal(summary)`` called just before its mask is written (an
    older mask removed first), so a run killed at any point leaves no mask that its journal does
    not describe. A case that fails on its input (:class:`BrainsegError`, :class:`OSError`, or a
    CUDA OOM after every fallback) is logged as one error line (with the traceback if ``debug``) and
    the run goes on; anything else is a bug and propagates.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = PredictionSummary(qc_threshold=qc_threshold)
    for case in tqdm(cases, desc="predict", unit="case", disable=not progress):
        seg = dicom_seg and isinstance(case.images[0], DicomSeries)
        outputs = output_paths(
            output_dir, case.case_id, save_probabilities, bids is not None, seg, preview, save_uncertainty
        )
        exists = not overwrite and all(p.exists() for p in outputs.values())
        try:
            inputs = provenance.readable_input_entries(case.images) if fingerprint is not None else None
            if exists and (
                fingerprint is None
                or is_current(
                    fingerprint.recorded.get(case.case_id), inputs, fingerprint.model_sha256, fingerprint.config_sha256
                )
            ):
                summary.skipped.append(case.case_id)
                continue
            if exists:
                log.info("%s: its inputs, the model or the settings changed; predicting it again", case.case_id)
            commit = None
            if fingerprint is not None:
                commit = provenance.commit_case(
                    summary.records, case.case_id, inputs, outputs, fingerprint, lambda: journal and journal(summary)
                )
            volumes, background, ood, qc = predict_one(
                predictor, case, outputs, bids, commit, qc_threshold, qc_predictor
            )
            summary.volumes[case.case_id], summary.backgrounds[case.case_id] = volumes, background
            summary.ood[case.case_id] = ood
            if qc is not None:
                summary.qc[case.case_id] = qc
        except (BrainsegError, OSError, torch.cuda.OutOfMemoryError) as exc:
            line = error_line(case, exc)
            log.error(line, exc_info=debug)
            summary.failed.append((case.case_id, line))
            if summary.records.pop(case.case_id, None) is not None and journal is not None:
                journal(summary)
            continue
        summary.written.append(case.case_id)
    return summary


def write_volumes(
    output_dir: Path, summary: PredictionSummary, label_names: dict[int, str], card: ModelCard | None = None
) -> Path | None:
    """Write this run's volumes to ``volumes.csv`` (nothing when no case was predicted), with the
    quality columns when the cases have a predicted Dice (``card``: whose keys they are)."""
    if not summary.volumes:
        return None
    extra = {"background": summary.backgrounds, "ood": summary.ood}
    if summary.qc and card is not None:
        extra |= qc_columns(card, summary.qc, summary.qc_threshold)
    try:
        return write_volumes_csv(output_dir / VOLUMES_CSV, summary.volumes, label_names, extra)
    except ValueError:  # label names that clash as CSV columns: fall back to label_<v>
        return write_volumes_csv(output_dir / VOLUMES_CSV, summary.volumes, None, extra)


@dataclass
class BatchResult:
    """:func:`predict`'s outcome: the per-case summary and where the volumes went."""

    summary: PredictionSummary
    volumes_csv: Path | None
    rank: int = 0
    world_size: int = 1
    #: ``brainseg_run.json`` when this process wrote it (under torchrun: the rank that merged).
    record: Path | None = None


def rank_part(summary: PredictionSummary, run: dict, rank: int, world_size: int, final: bool = True) -> dict:
    """What one rank leaves for the merge (``final``) or journals while it runs: its run facts,
    cases and volumes (JSON-ready)."""
    return {
        "rank": rank,
        "final": final,
        "run": run,
        "written": summary.written,
        "skipped": summary.skipped,
        "failed": [{"case": case, "error": line} for case, line in summary.failed],
        "cases": summary.records,
        "volumes": {c: {str(v): mm3 for v, mm3 in vols.items()} for c, vols in summary.volumes.items()},
        "backgrounds": summary.backgrounds,
        "ood": summary.ood,
        "qc": summary.qc,
        # where each written case stands among all ranks' cases (rank r holds cases[r::world])
        "order": {c: rank + i * world_size for i, c in enumerate(summary.written)},
    }


def finish_run(
    output: Path,
    parts: Sequence[dict],
    label_names: dict[int, str],
    volumes_csv: bool = True,
    card: ModelCard | None = None,
    qc_threshold: float = QC_THRESHOLD,
) -> tuple[Path | None, Path | None]:
    """Merge the ranks' parts into ``brainseg_run.json`` (with the journals crashed runs left)
    and, with ``volumes_csv``, ``volumes.csv``, and remove them; (the volumes file, the record)
    where written. Merging the same parts twice writes the same files."""
    record_path = provenance.merge_into_record(output, parts)
    if not volumes_csv:
        return None, record_path
    order = {c: i for p in parts for c, i in p["order"].items()}
    merged = PredictionSummary(qc_threshold=qc_threshold)
    for case in sorted(order, key=order.__getitem__):
        part = next(p for p in parts if case in p["order"])
        merged.volumes[case] = {int(v): mm3 for v, mm3 in part["volumes"][case].items()}
        merged.backgrounds[case], merged.ood[case] = part["backgrounds"][case], part["ood"][case]
        if case in part.get("qc", {}):
            merged.qc[case] = part["qc"][case]
    return write_volumes(output, merged, label_names, card), record_path


def predict(
    model_path: str | os.PathLike | Sequence[str | os.PathLike],
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
    preview: bool = False,
    save_uncertainty: bool = False,
    command: Sequence[str] | None = None,
    qc_threshold: float = QC_THRESHOLD,
    preset: str | None = None,
) -> BatchResult:
    """Segment every case found in ``inputs`` into ``output`` (this rank's share under torchrun).

    ``checkpoint``: which checkpoint of a run folder (``final``, ``best``, ``last``); None:
    final if the run finished, else best, else last
    (:func:`~brainseg.model.checkpoint.resolve_checkpoint`). ``bids_derivatives``: the inputs are
    BIDS folders and the outputs are written as BIDS derivatives (:mod:`brainseg.infer.derivatives`)
    instead of ``ID.nii.gz`` and ``volumes.csv``. ``dicom_seg``: also a DICOM SEG for each case read
    from a DICOM series (needs highdicom, checked before any work). ``preview``: also
    ``ID_preview.png``. ``command``: the command line the record names (default ``sys.argv``).
    ``qc_threshold``: a case whose predicted mean Dice (a model with a quality score) is below it is flagged.
    ``preset``: a named set of ``infer`` values (:data:`~brainseg.infer.loading.INFER_PRESETS`, ``--fast``) applied
    before ``overrides``; the record names it beside the values used.

    ``model_path``: one run folder or checkpoint, or several (or a cross-validation run folder with
    ``fold_*``): an ensemble of them (:func:`~brainseg.infer.ensemble.load_members`) whose decision
    (class offsets, region thresholds, enhancing-tumour volume), configuration and preprocessing
    are the first member's. ``save_uncertainty``: ``ID_uncertainty.nii.gz`` beside each mask."""
    if dicom_seg and not highdicom_available():
        raise BrainsegError(f"--dicom-seg: {INSTALL_HINT}")
    started = time.time()
    paths = [Path(p) for p in inputs]
    output = Path(output)
    check_output_folder(output, paths)
    env = torchrun_env()
    token = provenance.run_token(os.environ, env.world_size)
    if env.world_size > 1:
        provenance.drop_stale_part(output, token, env.rank)
    dev = resolve_device(device, env.local_rank)
    given = [model_path] if isinstance(model_path, str | os.PathLike) else list(model_path)
    members = load_members(given, dev, checkpoint)
    if len(members) > 1 and bids_derivatives:
        raise BrainsegError("--bids-derivatives: an ensemble of models is not supported there yet; give one --model")
    if save_uncertainty and bids_derivatives:
        raise BrainsegError("--bids-derivatives: --save-uncertainty is not supported there yet")
    (source, model, card), others = members[0], members[1:]
    if others:
        log.info(
            "ensemble of %d models (%s); the decision (class offsets, region thresholds, enhancing-tumour volume) "
            "is the first member's card's: %s",
            len(members),
            ", ".join(str(path) for path, _, _ in members),
            source,
        )
    overrides = [*preset_overrides(preset), *overrides]  # the preset first: an explicit --set wins
    config = inference_config(card, Path(config_path) if config_path is not None else None, overrides)
    cases = discover_inputs(paths, channel_names=card.channels)
    bids = derivatives.bids_output(output, cases) if bids_derivatives else None
    mine = list(cases)[env.rank :: env.world_size]
    predictor = Predictor(
        model,
        card,
        config.infer,
        config.postprocess,
        dev,
        log=log.warning,
        max_voxels=config.data.max_voxels,
        ensemble_with=[(m, c) for _, m, c in others],
    )
    qc_predictor = None  # an ensemble's quality is measured on its first member alone (predict_one)
    if others and card.quality is not None:
        infer, post = config.infer, config.postprocess
        qc_predictor = Predictor(model, card, infer, post, dev, log=log.warning, max_voxels=config.data.max_voxels)
    settings = {k: v for k, v in config.to_dict().items() if k in ("infer", "postprocess")}
    model_sha256, model_entry = provenance.model_record([path for path, _, _ in members])
    if bids is not None and env.is_main:
        derivatives.write_dataset_files(bids, source, model_sha256)
    recorded = provenance.recorded_cases(output, token)
    fingerprint = Fingerprint(model_sha256, provenance.sha256_json(settings), token, recorded)
    versions = package_versions()
    run = {
        "id": token,
        "command": list(sys.argv if command is None else command),
        "brainseg": versions["brainseg"],
        "versions": versions,
        "device": str(dev),
        "precision": effective_amp(dev, config.infer.amp),
        "world_size": env.world_size,
        "model": model_entry,
        "labels": {str(v): name for v, name in card.labels.items()},
        "regions": None if card.regions is None else list(card.regions.names),
        "qc_threshold": qc_threshold,
        "preset": preset,
        "config": settings,
        "started": started,
    }

    def part(summary: PredictionSummary, final: bool) -> dict:
        return rank_part(summary, run | {"finished": time.time()}, env.rank, env.world_size, final)

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
        preview=preview,
        save_uncertainty=save_uncertainty,
        fingerprint=fingerprint,
        journal=lambda s: provenance.journal_part(output, token, env.rank, part(s, final=False)),
        qc_threshold=qc_threshold,
        qc_predictor=qc_predictor,
    )
    if env.world_size == 1:
        parts: list[dict] | None = [part(summary, final=True)]
    else:
        provenance.write_part(output, token, env.rank, part(summary, final=True))
        parts = provenance.collect_parts(output, token, env.world_size)  # None until every rank is done
    volumes = record = None
    if parts is not None:  # this rank finished last (or with the last): it merges
        volumes, record = finish_run(output, parts, predictor.label_names, bids is None, card, qc_threshold)
    return BatchResult(summary, volumes, env.rank, env.world_size, record)
