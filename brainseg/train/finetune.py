"""Fine-tuning: a trained run's plan and weights as the start of training on a few new scans.

``brainseg train --data NEW --init RUN --out RUN2`` plans nothing: :func:`finetune_config`
takes RUN's stored config and pins what its model card says the network was trained on
(spacing, normalisation, patch, the network itself), so the new scans are preprocessed as
RUN's were; ``--set`` still overrides any field. :func:`load_init` reads RUN's checkpoint
(its SHA-256 goes into RUN2's card); :func:`start_from` puts its weights into the new
network. The new data must have RUN's channels (:func:`check_channels`). Another label set
(or other regions) starts the output layers anew, deep-supervision heads included, with a
warning; every other layer keeps RUN's weights.

The schedule is short by default, as nnU-Net users fine-tune pretrained weights: the
learning rate is RUN's times :data:`LR_FACTOR` (SGD's 0.01 becomes 1e-3: a full learning
rate on a few scans first undoes much of what RUN learnt) and the epochs RUN's times
:data:`EPOCH_FACTOR` (a quarter, as the 250-epoch trainers people fine-tune with against
nnU-Net's 1000: the network starts close to a solution and a few scans are fitted fast).
The poly decay and ``--max-minutes`` work as for any run.

Before any step the loaded model is validated on the new data's validation cases
(:func:`start_row`, metrics.csv's step-0 row, with RUN's voxel decision when the labels are
RUN's); after training, the final model is (:func:`finish`, ``RUN2/finetune.json``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from brainseg.config import Config, LabelsConfig, apply_overrides, config_from_dict
from brainseg.data.layouts import discover_dataset
from brainseg.errors import BrainsegError
from brainseg.io.atomic import atomic_write_text
from brainseg.io.naming import channel_tag
from brainseg.labels.regions import Regions
from brainseg.model.card import InitialisedFrom, ModelCard
from brainseg.model.checkpoint import card_from_state, load_checkpoint, nonfinite_tensors, resolve_checkpoint
from brainseg.train.monitor import validation_fields
from brainseg.train.recipe import label_table
from brainseg.train.state import RunState

log = logging.getLogger(__name__)

#: Fine-tuning's learning rate: RUN's times this.
LR_FACTOR = 0.1
#: Fine-tuning's epochs: RUN's times this (rounded up, at least 1).
EPOCH_FACTOR = 0.25
#: The fine-tuned run's summary of the new data's validation Dice, before and after.
FINETUNE_FILE = "finetune.json"


@dataclass(frozen=True)
class InitModel:
    """The checkpoint a fine-tuning starts from: its file, model card, weights and provenance."""

    checkpoint: Path
    card: ModelCard
    weights: dict[str, torch.Tensor]
    source: InitialisedFrom


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_init(path: Path) -> InitModel:
    """RUN's checkpoint (a run folder: its final, else best, else last) with its card and digest."""
    checkpoint = resolve_checkpoint(path)
    state = load_checkpoint(checkpoint)
    card = card_from_state(state, checkpoint)
    weights = state["model"]
    if not isinstance(weights, dict):
        raise BrainsegError(f"{checkpoint}: not a brainseg checkpoint (its weights are not a state dict)")
    bad = nonfinite_tensors(weights)
    if bad:
        raise BrainsegError(f"{checkpoint}: the model weights hold NaN or inf ({len(bad)} tensor(s), e.g. {bad[0]})")
    source = InitialisedFrom(str(checkpoint.resolve()), file_sha256(checkpoint))
    return InitModel(checkpoint, card, dict(weights), source)


def check_channels(init: InitModel, channels: Sequence[str], data_dir: Path) -> None:
    """The new data's channels must be the model's: as many, with the same names in the same order
    (case aside); a data set that only numbers its channels (``0000``, ...) is taken in order."""
    ours, theirs = [str(c) for c in channels], [str(c) for c in init.card.channels]

    def numbered(names: list[str]) -> bool:
        return names == [channel_tag(i) for i in range(len(names))]

    named_alike = [c.lower() for c in ours] == [c.lower() for c in theirs] or numbered(ours) or numbered(theirs)
    if len(ours) != len(theirs) or not named_alike:
        raise BrainsegError(
            f"{data_dir}: its channels {ours} do not match the channels {theirs} of {init.checkpoint}; "
            "fine-tuning needs the same channels in the same order"
        )


def finetune_config(init: InitModel, data_dir: Path, overrides: Sequence[str] = ()) -> Config:
    """RUN's config with its card's plan pinned (spacing, normalisation, patch, network), the
    short schedule (:data:`LR_FACTOR`, :data:`EPOCH_FACTOR`) and then ``overrides``. RUN's
    ``labels`` section (left/right pairs, regions) is kept when the new data has RUN's label
    values, else found from the new data as for a new run. Checks the channels first."""
    ds = discover_dataset(data_dir)
    if not ds.train:
        raise BrainsegError(f"{data_dir}: no labelled training cases found")
    check_channels(init, ds.channels, data_dir)
    card = init.card
    try:
        values = config_from_dict(dict(card.config)).to_dict()
    except BrainsegError as exc:
        raise BrainsegError(f"{init.checkpoint}: the model card's config: {exc}") from None
    values["data"] |= {
        "target_spacing": [float(s) for s in card.spacing],
        "normalization": card.normalization.scheme,
        "crop_to_nonzero": card.normalization.crop_to_nonzero,
        "cache_dir": None,  # the new run's own cache
    }
    values["model"] = asdict(card.network.architecture)
    train = values["train"]
    train |= {
        "patch_size": [int(p) for p in card.patch_size],
        "lr": train["lr"] * LR_FACTOR,
        "epochs": max(1, math.ceil(train["epochs"] * EPOCH_FACTOR)),
    }
    if sorted(label_table(ds.labels, ds.train, values["data"]["max_voxels"])) != card.label_values:
        values["labels"] = asdict(LabelsConfig())
    try:
        return config_from_dict(apply_overrides(values, overrides))
    except BrainsegError as exc:
        raise BrainsegError(f"fine-tuning {init.checkpoint}: {exc}") from None


def _names(labels: Mapping[int, str], regions: Regions | None) -> str:
    outputs = list(regions.names) if regions is not None else [f"{v} {n}" for v, n in sorted(labels.items())]
    return "{" + ", ".join(outputs) + "}"


def start_from(
    init: InitModel, model: torch.nn.Module, labels: dict[int, str], regions: Regions | None
) -> tuple[dict[str, Any], float]:
    """Put RUN's weights into ``model`` (built for the new data); its output layers start anew
    when the outputs differ (other label values or regions), with a warning. Returns the voxel
    decision to start from: RUN's card fields (``class_offsets`` / ``region_thresholds``) and
    enhancing-tumour volume when the outputs are RUN's, else none."""
    card = init.card
    same = sorted(labels) == card.label_values and regions == card.regions
    weights = init.weights if same else {k: v for k, v in init.weights.items() if not k.startswith("heads.")}
    try:
        result = model.load_state_dict(weights, strict=False)
        problems = [k for k in result.missing_keys if same or not k.startswith("heads.")] + result.unexpected_keys
    except RuntimeError as exc:
        problems = [str(exc).strip().splitlines()[-1].strip()]
    if problems:
        raise BrainsegError(
            f"{init.checkpoint}: its weights do not fit the network of this config ({', '.join(problems[:3])}); "
            "fine-tuning keeps the model section of the checkpoint's config"
        )
    if not same:
        heads = len(getattr(model, "heads", ())) or 1
        log.warning(
            f"the new data's outputs {_names(labels, regions)} differ from those of {init.checkpoint} "
            f"{_names(card.labels, card.regions)}: the output layer{'s' if heads > 1 else ''} ({heads}) "
            "start anew, the rest of the network keeps its weights"
        )
        return {}, 0.0
    if card.labels != dict(labels):
        log.info(f"the new data's label names {dict(labels)} differ from the model's {card.labels}; kept by value")
    decision = {"class_offsets": card.class_offsets} if regions is None else {"region_thresholds": card.thresholds}
    return decision, card.innermost_min_mm3


def start_row(scores: Mapping) -> dict:
    """metrics.csv's row of the loaded model before any step: epoch 0, step 0, its validation Dice."""
    return {"epoch": 0, "step": 0, "train_loss": float("nan"), **validation_fields(scores)}


def finish(run_dir: Path, state: RunState, after: Mapping, write: bool) -> dict:
    """The summary's fine-tuning fields: the checkpoint training started from, the new data's
    validation Dice before any step (the step-0 row of ``state``'s history) and ``after``
    (the final model's), per label value (region) and mean; ``write``: also into
    ``RUN_DIR/finetune.json``."""
    source = state.initialised_from
    assert source is not None  # a fine-tuned run's
    start = next((r for r in state.history if r.get("step") == 0 and "val_dice_mean" in r), {})
    before = {k[len("val_dice_") :]: v for k, v in start.items() if k.startswith("val_dice_") and k != "val_dice_mean"}
    out = {
        "initialised_from": source.to_dict(),
        "val_dice_before": before,
        "val_dice_before_mean": start.get("val_dice_mean"),
        "val_dice_after": {str(k): float(v) for k, v in after.items()},
        "val_dice_after_mean": validation_fields(after)["val_dice_mean"] if after else None,
    }
    if write:
        atomic_write_text(run_dir / FINETUNE_FILE, json.dumps(out, indent=1))
    return out
