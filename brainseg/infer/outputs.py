"""One case's files: their names (the mask, probabilities and their sidecar, a DICOM SEG, a
preview; BIDS derivative names with ``bids``) and writing them all or nothing: the mask last, so an
existing mask means a finished case, and a failed write removes what the case had written.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from brainseg._version import __version__
from brainseg.data.bids import is_bids_root
from brainseg.data.cases import Case
from brainseg.errors import BrainsegError, InputError
from brainseg.infer import derivatives
from brainseg.infer.derivatives import BidsOutput
from brainseg.infer.predictor import Predictor
from brainseg.infer.qc import QC_THRESHOLD, case_measures
from brainseg.io.atomic import atomic_write_text
from brainseg.io.dicom import DicomSeries
from brainseg.io.dicom_seg import SEG_SUFFIX, write_dicom_seg
from brainseg.io.images import read_image, write_image
from brainseg.io.naming import NIFTI_GZ, PROBABILITIES_TAG, UNCERTAINTY_TAG
from brainseg.io.pictures import preview_png
from brainseg.model.card import ModelCard
from brainseg.postprocess.volumes import label_volumes
from brainseg.quality.qc import measures_record

log = logging.getLogger(__name__)

MASK_SUFFIX = NIFTI_GZ
PROBABILITIES_SUFFIX = PROBABILITIES_TAG + NIFTI_GZ
PROBABILITIES_SIDECAR_SUFFIX = PROBABILITIES_TAG + ".json"
PREVIEW_SUFFIX = "_preview.png"
UNCERTAINTY_SUFFIX = UNCERTAINTY_TAG + NIFTI_GZ


def output_paths(
    output_dir: Path,
    case_id: str,
    save_probabilities: bool,
    bids: bool = False,
    dicom_seg: bool = False,
    preview: bool = False,
    save_uncertainty: bool = False,
) -> dict[str, Path]:
    """The files a case produces: ``mask`` and, if asked for, ``probabilities``, ``uncertainty``, ``dicom_seg`` and
    ``preview`` (with ``bids``, the BIDS derivatives' names and their sidecars,
    :func:`brainseg.infer.derivatives.output_paths`; the SEG and the preview beside the mask)."""
    if bids:
        paths = derivatives.output_paths(output_dir, case_id, save_probabilities)
        if dicom_seg:
            paths["dicom_seg"] = paths["mask"].with_name(f"{case_id}{SEG_SUFFIX}")
        if preview:
            paths["preview"] = paths["mask"].with_name(f"{case_id}{PREVIEW_SUFFIX}")
        return paths
    paths = {"mask": output_dir / f"{case_id}{MASK_SUFFIX}"}
    if save_probabilities:
        paths["probabilities"] = output_dir / f"{case_id}{PROBABILITIES_SUFFIX}"
        paths["probabilities_channels"] = output_dir / f"{case_id}{PROBABILITIES_SIDECAR_SUFFIX}"
    if save_uncertainty:
        paths["uncertainty"] = output_dir / f"{case_id}{UNCERTAINTY_SUFFIX}"
    if dicom_seg:
        paths["dicom_seg"] = output_dir / f"{case_id}{SEG_SUFFIX}"
    if preview:
        paths["preview"] = output_dir / f"{case_id}{PREVIEW_SUFFIX}"
    return paths


def probability_channels(card: ModelCard) -> dict:
    """What the probability file's channels are: the card's classes (label names) or regions."""
    if card.regions is not None:
        return {"kind": "regions", "channels": list(card.regions.names)}
    return {"kind": "classes", "channels": [card.labels[v] for v in card.label_values]}


def predict_one(
    predictor: Predictor,
    case: Case,
    outputs: dict[str, Path],
    bids: BidsOutput | None = None,
    before_mask: Callable[[dict[str, object]], None] | None = None,
    qc_threshold: float = QC_THRESHOLD,
    qc_predictor: Predictor | None = None,
) -> tuple[dict[int, float], str, str, dict[str, float] | None]:
    """Segment one case, write its files; return its label volumes (mm³, background left out),
    its background kind ("zero" or "noise"), why it is out of distribution ("" if it is not) and,
    when the card holds a quality score, the predicted Dice per key (:mod:`brainseg.infer.qc`).
    The score was calibrated on single models' out-of-fold predictions, so an ensemble's case is
    measured on ``qc_predictor``'s (its first member alone, one more pass): the members' averaged
    probabilities are less confident than any one member's and would read as a worse mask. The
    ensemble's own Dice is at least its mean member's, so its predicted Dice errs on the safe side.

    The mask is written last (``before_mask(facts)`` runs just before it, with facts of how it was made
    for the record: ``windows``, the sliding windows the case took, and with a quality score
    ``quality``, what it measured, so a score fitted again can be checked without predicting); if any write fails, the
    files this call wrote are removed, so a failed case leaves no partial set of outputs."""
    prepared = predictor.prepare(list(case.images))
    ood = "; ".join(prepared.ood)
    if prepared.ood:
        log.warning("%s: unlike the training scans: %s", case.case_id, ood)
    quality = predictor.card.quality
    alone = quality is not None and qc_predictor is None  # the model the score was calibrated for
    result = predictor.segment_maps(prepared, "probabilities" in outputs or alone, "uncertainty" in outputs)
    labels, probs = result.labels, result.probabilities
    geometry, record = prepared.geometry, prepared.record
    qc, qc_facts = None, {}
    if quality is not None:
        measured = result if qc_predictor is None else qc_predictor.segment_maps(prepared, probabilities=True)
        assert measured.probabilities is not None  # asked for
        measures = case_measures(predictor.card, measured.probabilities, measured.labels, geometry.spacing)
        qc = quality.predict(measures, prepared.ood_distance)
        qc_facts = {"quality": measures_record(measures, prepared.ood_distance)}
        probs = probs if "probabilities" in outputs else None
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
        if result.uncertainty is not None:
            write_image(outputs["uncertainty"], result.uncertainty, geometry, dtype=np.dtype(np.float32))
            written.append(outputs["uncertainty"])
        for key, text in texts.items():
            atomic_write_text(outputs[key], text)
            written.append(outputs[key])
        if "dicom_seg" in outputs and isinstance(case.images[0], DicomSeries):
            try:
                write_dicom_seg(outputs["dicom_seg"], labels, case.images[0], predictor.label_names, __version__)
                written.append(outputs["dicom_seg"])
            except InputError as exc:  # the SEG needs what the series lacks: the NIfTI mask still stands
                log.warning("%s", exc)
        if "preview" in outputs:
            scan, _ = read_image(case.images[0])
            title = case.case_id
            if qc:
                mean = sum(qc.values()) / len(qc)
                title += f": predicted Dice {mean:.2f}" + (" (flagged)" if mean < qc_threshold else "")
            unc = result.uncertainty
            preview_png(scan, labels, geometry.affine, outputs["preview"], predictor.label_names, title, unc)
            written.append(outputs["preview"])
        if before_mask is not None:
            before_mask(
                {"windows": len(predictor.window(prepared.record).locations(prepared.image.shape[1:])), **qc_facts}
            )
        write_image(outputs["mask"], labels, geometry)
    except BaseException:
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    return volumes, background, ood, qc


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
