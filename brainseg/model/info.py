"""A model's card with where it came from: what ``brainseg info`` shows and ``brainseg export`` writes.

:func:`read_model_info` reads a checkpoint file or a run folder's checkpoint (the one
``brainseg predict`` would take) and gathers, besides its validated
:class:`~brainseg.model.card.ModelCard`, the file's SHA-256 (so a card names exactly the
weights it describes), the network's parameter count, the versions installed now, and
from the run folder (the checkpoint's folder) what it holds beside the checkpoint: the
training set's fingerprint (``fingerprint.json``, summarised: cases, channels, median
spacing) and cross-validation scores (``cv_summary.json`` or ``cv_summary.csv``), each
only when present. An unreadable fingerprint or score file is a warning, not an error:
the card is still worth showing.

:meth:`ModelInfo.to_dict` is the card's stored form (``ModelCard.from_dict`` reads it back)
with those additions as extra keys; :meth:`ModelInfo.render` is the same as text.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainseg.io.hashing import sha256_file
from brainseg.io.naming import CV_SUMMARY_FILES, FINGERPRINT_FILE, FOLD_PREFIX, SPLITS_FILE
from brainseg.model.card import ModelCard, package_versions
from brainseg.model.checkpoint import RUN_PREFERENCE, card_from_state, load_checkpoint, resolve_checkpoint
from brainseg.model.unet import feature_list

log = logging.getLogger(__name__)

#: State-dict entries that are statistics, not learnt parameters (batch norm's).
_NOT_PARAMETERS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class FingerprintSummary:
    """What a run folder's ``fingerprint.json`` says of the training set."""

    cases: int
    channels: tuple[str, ...]
    #: Per RAS axis, the median voxel size (mm) and shape of the training scans.
    median_spacing: tuple[float, ...]
    median_shape: tuple[float, ...]
    layout: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class CvScores:
    """A run folder's cross-validation scores as the file holds them: a JSON value or CSV rows."""

    source: Path
    scores: Any

    def to_dict(self) -> dict[str, Any]:
        return {"source": str(self.source), "scores": self.scores}


@dataclass(frozen=True)
class ModelInfo:
    checkpoint: Path
    sha256: str
    size_bytes: int
    #: Learnt values of the network (state-dict tensors but batch norm's running statistics).
    parameters: int
    card: ModelCard
    fingerprint: FingerprintSummary | None = None
    cv: CvScores | None = None
    #: The versions installed where the info was read (the card's ``versions``: where it was trained).
    installed_versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The card's stored form plus ``checkpoint``, ``sha256``, ``size_bytes``, ``parameters``,
        ``training_data``, ``cv`` (null when absent) and ``installed_versions``."""
        return {
            **self.card.to_dict(),
            "checkpoint": str(self.checkpoint),
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "parameters": self.parameters,
            "training_data": None if self.fingerprint is None else self.fingerprint.to_dict(),
            "cv": None if self.cv is None else self.cv.to_dict(),
            "installed_versions": dict(self.installed_versions),
        }

    def render(self) -> str:
        """The info as aligned ``name  value`` lines (continuation lines indented)."""
        rows = _rows(self)
        width = max(len(name) for name, _ in rows)
        out = []
        for name, value in rows:
            first, *rest = value.splitlines() or [""]
            out.append(f"{name:<{width}}  {first}")
            out += [f"{'':<{width}}  {line}" for line in rest]
        return "\n".join(out)


def read_model_info(path: str | os.PathLike, checkpoint: str | None = None) -> ModelInfo:
    """The info of a checkpoint file or a run folder's checkpoint (``checkpoint``: final, best or
    last, as ``brainseg predict --checkpoint``); a checkpoint's run folder is its own folder."""
    source = resolve_checkpoint(path, checkpoint)
    state = load_checkpoint(source)
    card = card_from_state(state, source)
    weights = state["model"] if isinstance(state["model"], dict) else {}
    parameters = sum(
        int(v.numel()) for k, v in weights.items() if hasattr(v, "numel") and not str(k).endswith(_NOT_PARAMETERS)
    )
    run_dir = source.parent
    in_cv = (run_dir.parent / SPLITS_FILE).is_file()  # a cross-validation's fold: the run's scores are its parent's
    return ModelInfo(
        checkpoint=source.resolve(),
        sha256=sha256_file(source),
        size_bytes=source.stat().st_size,
        parameters=parameters,
        card=card,
        fingerprint=read_fingerprint_summary(run_dir / FINGERPRINT_FILE),
        cv=read_cv_scores(run_dir) or (read_cv_scores(run_dir.parent) if in_cv else None),
        installed_versions=package_versions(),
    )


@dataclass(frozen=True)
class CvRun:
    """A cross-validation run's folder (``splits.json``, ``fold_k/``): not one model but its folds' scores."""

    root: Path
    folds: int
    #: The folds whose folder holds a checkpoint.
    trained: tuple[int, ...]
    cv: CvScores | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "cross_validation": str(self.root),
            "folds": self.folds,
            "trained": [f"{FOLD_PREFIX}{k}" for k in self.trained],
            "cv": None if self.cv is None else self.cv.to_dict(),
        }

    def render(self) -> str:
        trained = ", ".join(f"{FOLD_PREFIX}{k}" for k in self.trained) or "none yet"
        first = self.root / f"{FOLD_PREFIX}{self.trained[0] if self.trained else 0}"
        rows = [
            ("cross-validation", f"{self.root.resolve()}: {self.folds} folds ({SPLITS_FILE}); trained: {trained}"),
            ("model cards", f"one per fold, not of this folder: brainseg info {first}"),
            ("cv scores", "(none yet)" if self.cv is None else f"from {self.cv.source}\n{_scores(self.cv.scores)}"),
        ]
        width = max(len(name) for name, _ in rows)
        out = []
        for name, value in rows:
            head, *rest = value.splitlines()
            out += [f"{name:<{width}}  {head}"] + [f"{'':<{width}}  {line}" for line in rest]
        return "\n".join(out)


def read_cv_run(path: str | os.PathLike) -> CvRun | None:
    """The cross-validation run ``path`` is the folder of (it holds ``splits.json``), else None."""
    root = Path(path)
    if not (root.is_dir() and (root / SPLITS_FILE).is_file()):
        return None
    try:
        folds = len(json.loads((root / SPLITS_FILE).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        log.warning("%s: unreadable splits (%s)", root / SPLITS_FILE, exc)
        folds = 0
    trained = tuple(
        k for k in range(folds) if any((root / f"{FOLD_PREFIX}{k}" / name).is_file() for name in RUN_PREFERENCE)
    )
    return CvRun(root, folds, trained, read_cv_scores(root))


def read_fingerprint_summary(path: Path) -> FingerprintSummary | None:
    """The summary of a fingerprint cache (``{"files": ..., "fingerprint": {...}}``); None when
    absent, None and a warning when unreadable."""
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        fp = raw["fingerprint"]
        cases = fp["cases"]
        spacing = np.array([c["ras_spacing"] for c in cases], dtype=float)
        shape = np.array([c["ras_shape"] for c in cases], dtype=float)
        return FingerprintSummary(
            cases=len(cases),
            channels=tuple(str(c) for c in fp["channels"]),
            median_spacing=tuple(round(float(v), 4) for v in np.median(spacing, axis=0)) if cases else (),
            median_shape=tuple(float(v) for v in np.median(shape, axis=0)) if cases else (),
            layout=str(fp.get("layout", "")),
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        log.warning("%s: unreadable training fingerprint, not shown (%s)", path, exc)
        return None


def read_cv_scores(run_dir: Path) -> CvScores | None:
    """The run folder's cross-validation scores (the first of :data:`CV_SUMMARY_FILES` it holds)."""
    for name in CV_SUMMARY_FILES:
        path = run_dir / name
        if not path.is_file():
            continue
        try:
            if path.suffix == ".json":
                return CvScores(path, json.loads(path.read_text()))
            with open(path, newline="") as fh:
                return CvScores(path, [dict(row) for row in csv.DictReader(fh)])
        except (OSError, ValueError, csv.Error) as exc:
            log.warning("%s: unreadable cross-validation scores, not shown (%s)", path, exc)
    return None


# --------------------------------------------------------------------------- text


def _mm(values) -> str:
    return " x ".join(f"{float(v):g}" for v in values)


def _rows(info: ModelInfo) -> list[tuple[str, str]]:
    card = info.card
    arch = card.network.architecture
    rows = [
        ("checkpoint", str(info.checkpoint)),
        ("sha256", info.sha256),
        ("size", f"{info.size_bytes:,} bytes, {info.parameters:,} parameters"),
        ("labels", ", ".join(f"{v} {name}" for v, name in sorted(card.labels.items()))),
        ("channels", ", ".join(card.channels)),
        ("spacing", f"{_mm(card.spacing)} mm (RAS axis order)"),
        ("patch", f"{_mm(card.patch_size)} voxels"),
        (
            "network",
            f"U-Net, {card.network.in_channels} channel(s) in, {card.num_classes} "
            f"{'region' if card.regions is not None else 'class'} output(s); {arch.levels} levels, "
            f"features {feature_list(arch.levels, arch.base_features, arch.max_features)}, {arch.norm} norm, "
            f"{arch.skip_mode} skips" + (", deep supervision" if arch.deep_supervision else ""),
        ),
        ("normalisation", _normalisation(card)),
        ("decision", _decision(card)),
        ("training", _training(card.config)),
        ("training data", _training_data(info.fingerprint)),
    ]
    if info.cv is not None:
        rows.append(("cv scores", f"from {info.cv.source}\n{_scores(info.cv.scores)}"))
    rows += [
        ("card", f"format {card.format}, preprocessing version {card.preprocess_version}"),
        ("trained with", _versions(card.versions)),
        ("installed", _versions(info.installed_versions)),
    ]
    return rows


def _normalisation(card: ModelCard) -> str:
    norm = card.normalization
    text = f"{norm.scheme} (statistics over the {norm.mask}), " + (
        "cropped to the subject" if norm.crop_to_nonzero else "not cropped"
    )
    for name, st in zip(card.channels, card.intensity):
        text += f"\n{name}: clip to [{st.percentile_00_5:g}, {st.percentile_99_5:g}], mean {st.mean:g}, std {st.std:g}"
    return text


def _decision(card: ModelCard) -> str:
    if card.regions is not None:
        lines = [
            f"{name} = labels {list(values)}: probability >= {t:g}, writes {written}"
            for name, values, written, t in zip(
                card.regions.names, card.regions.labels, card.regions.class_order, card.thresholds
            )
        ]
        rule = f"{card.innermost_min_mm3:g} mm^3" if card.innermost_min_mm3 > 0 else "off"
        return "\n".join([f"one sigmoid per region, in class order; innermost-region minimum volume {rule}", *lines])
    if card.class_offsets:
        offsets = ", ".join(f"{v} {o:+g}" for v, o in zip(card.label_values, card.class_offsets))
        return f"argmax of the softmax after per-class log-probability offsets ({offsets})"
    return "argmax of the softmax"


def _training(config: dict[str, Any]) -> str:
    if not config:
        return "(the card holds no run config)"
    train, data, post = (config.get(k) or {} for k in ("train", "data", "postprocess"))
    first = ", ".join(
        f"{k} {train[k]}"
        for k in ("epochs", "iters_per_epoch", "batch_size", "optimizer", "lr", "lr_schedule", "amp")
        if k in train
    )
    second = ", ".join(
        f"{k} {data[k]}" for k in ("target_spacing", "normalization", "crop_to_nonzero", "val_fraction") if k in data
    )
    third = ", ".join(
        f"{k} {v}" for k, v in post.items() if v is not None and v is not False and v not in ([], {}, "none")
    )
    return "\n".join(part for part in (first, second, third and f"postprocess: {third}") if part)


def _training_data(fp: FingerprintSummary | None) -> str:
    if fp is None:
        return "(no fingerprint.json beside the checkpoint)"
    layout = f" ({fp.layout} layout)" if fp.layout else ""
    return (
        f"{fp.cases} case(s){layout}, channels {', '.join(fp.channels)}\n"
        f"median spacing {_mm(fp.median_spacing)} mm, median shape {_mm(fp.median_shape)} (RAS)"
    )


def _cv_summary(scores: dict) -> str:
    """A cross-validation summary (``brainseg train --folds``): per label or region, Dice mean ± std."""
    names = scores.get("names") or {}
    lines = []
    for key, st in scores["dice"].items():
        name = f"{key} {names[key]}" if key in names and names[key] != key else key
        lines.append(f"{name}: Dice {st['mean']:.4f} ± {st['std']:.4f}" if st.get("n") else f"{name}: -")
    done = len(scores.get("folds_done", []))
    lines.append(f"{scores.get('n_cases', 0)} case(s) out of fold, {done} of {scores.get('folds', done)} fold(s)")
    return "\n".join(lines)


def _scores(scores: Any) -> str:
    if isinstance(scores, dict) and isinstance(scores.get("dice"), dict):
        try:
            return _cv_summary(scores)
        except (KeyError, TypeError, ValueError):
            pass  # another layout: shown as it is
    if isinstance(scores, list) and scores and all(isinstance(r, dict) for r in scores):
        columns = list(dict.fromkeys(k for row in scores for k in row))
        table = [columns] + [[str(row.get(c, "")) for c in columns] for row in scores]
        widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table)
    return json.dumps(scores, indent=1)


def _versions(versions: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in versions.items()) or "(not recorded)"
