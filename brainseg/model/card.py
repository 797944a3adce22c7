"""The model card: what a checkpoint says about the model it holds.

Every checkpoint carries one (``state["card"]``, a plain dict so the file loads with
``torch.load(weights_only=True)``). :class:`ModelCard` is its one typed form: the
trainer builds it, :func:`~brainseg.model.checkpoint.load_model` returns it, the
predictor, the benchmark and the tests read it, and nobody writes a card dict by hand.

Stored form (format 2)::

    {"format": 2,
     "network": {"in_channels": 1, "num_classes": 4, "levels": 4, ...},   # UNet3D kwargs
     "labels": {"0": "background", "1": "CSF", ...},
     "channels": ["T1"],
     "spacing": [1.5, 1.5, 1.5],          # target spacing (mm, RAS order)
     "patch_size": [48, 48, 48],
     "normalization": {"scheme": "zscore", "mask": "foreground", "crop_to_nonzero": true},
     "intensity": [],                     # scheme "ct": per channel the data set's foreground
                                          # {"mean", "std", "percentile_00_5", "percentile_99_5"}
     "training_ranges": {...},            # the training scans' spacing, extent, contrast ranges
                                          # (brainseg.quality.ood.TrainingRanges; null: no OOD check)
     "preprocess_version": 6,             # brainseg.preprocessing.preprocess.PREPROCESS_VERSION
     "regions": null,                     # region models: Regions.to_dict(), one sigmoid output
                                          # per region (then "network"'s num_classes is their count)
     "region_thresholds": [],             # per region, the probability a voxel must reach (empty: 0.5)
     "innermost_min_mm3": 0.0,            # the enhancing-tumour rule's volume, chosen on validation
     "class_offsets": [],                 # label models: per class, the log-probability offset
                                          # chosen on validation (empty: plain argmax)
     "initialised_from": null,            # a fine-tuned model: {"path", "sha256"} of the checkpoint
                                          # its training started from (null: trained from scratch)
     "decision_source": null,             # where the decision and postprocessing were chosen:
                                          # {"on": "cross-validation", "cases", "dice_before", "dice_after", ...}
                                          # (null: the run's validation cases)
     "quality": null,                     # the calibrated quality score (brainseg.quality.qc.QualityModel),
                                          # fitted on the cross-validation (null: none)
     "config": {...},                     # the whole run config
     "versions": {"brainseg": ..., "torch": ..., ...}}

Format 1 (brainseg before the typed card) is read too: its network sits under
``"model"`` and it has no ``preprocess_version`` (taken as 4, the convention of the
last format-1 release). A card without ``"intensity"`` (before the ``ct`` scheme) has none;
one without ``"regions"`` (before region training) is a label model; one without
``"initialised_from"`` was trained from scratch. A region model's card
has format 3 (:data:`REGION_CARD_FORMAT`), otherwise the same keys.
:meth:`ModelCard.from_dict` checks every key and type and
raises one :class:`~brainseg.errors.BrainsegError` line naming the checkpoint.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, cast, get_args

from brainseg.config import ModelConfig, NormalizationScheme, config_from_dict
from brainseg.errors import BrainsegError
from brainseg.labels.regions import Regions
from brainseg.preprocessing.normalisation import ChannelIntensity
from brainseg.quality.ood import TrainingRanges
from brainseg.quality.qc import QualityModel, StaleQualityModel

log = logging.getLogger(__name__)

#: The format this brainseg writes for label models; :data:`READABLE_FORMATS` are those it reads.
CARD_FORMAT = 2
#: The format of a region model's card: brainseg before region training could not use one, so
#: it says "written by a newer brainseg" instead of misreading its outputs as classes.
REGION_CARD_FORMAT = 3
READABLE_FORMATS = (1, 2, 3)
#: What a format-1 card's preprocessing was (it did not say).
FORMAT1_PREPROCESS_VERSION = 4
NORMALIZATION_SCHEMES: tuple[NormalizationScheme, ...] = get_args(NormalizationScheme)


@dataclass(frozen=True)
class Network:
    """The U-Net: its input channels and classes, and the ``model`` config section it was built from."""

    in_channels: int
    num_classes: int
    architecture: ModelConfig = field(default_factory=ModelConfig)

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~brainseg.model.unet.build_model` (the stored form)."""
        return {"in_channels": self.in_channels, "num_classes": self.num_classes, **asdict(self.architecture)}

    @classmethod
    def from_kwargs(cls, raw: Mapping[str, Any]) -> Network:
        """From ``build_model`` keyword arguments (a model's ``hparams``); the architecture is
        checked as a config's ``model`` section is."""
        rest = dict(raw)
        try:
            in_channels, num_classes = int(rest.pop("in_channels")), int(rest.pop("num_classes"))
        except KeyError as exc:
            raise ValueError(f"no {exc.args[0]!r}") from None
        return cls(in_channels, num_classes, config_from_dict({"model": rest}).model)


@dataclass(frozen=True)
class Normalization:
    """How intensities were normalised: ``scheme`` over the ``mask`` voxels' statistics."""

    scheme: NormalizationScheme = "zscore"
    mask: str = "foreground"
    crop_to_nonzero: bool = True


@dataclass(frozen=True)
class InitialisedFrom:
    """The checkpoint a fine-tuned model's training started from: its path when training began
    and the SHA-256 of its bytes (the path may move or be overwritten; the digest says which file it was)."""

    path: str
    sha256: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> InitialisedFrom:
        path, digest = str(raw["path"]), str(raw["sha256"]).lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"initialised_from.sha256 is not a SHA-256 digest: {digest!r}")
        return cls(path, digest)


@dataclass(frozen=True)
class ModelCard:
    network: Network
    #: label value -> name, background (0) included.
    labels: dict[int, str]
    channels: tuple[str, ...]
    spacing: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    normalization: Normalization
    preprocess_version: int
    #: The whole run config (``Config.to_dict()``); predict takes ``infer``/``postprocess`` from it.
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    format: int = CARD_FORMAT  # REGION_CARD_FORMAT when read from a region card
    #: Per channel, the training set's foreground intensities (scheme ``ct``; empty otherwise).
    intensity: tuple[ChannelIntensity, ...] = ()
    #: The training scans' ranges, for the out-of-distribution check (None: unknown, no check).
    training_ranges: TrainingRanges | None = None
    #: Region model: its regions (one sigmoid output each, no background output); None: a label model.
    regions: Regions | None = None
    #: Per region, the probability threshold (empty: 0.5 each).
    region_thresholds: tuple[float, ...] = ()
    #: The enhancing-tumour rule's volume (mm^3) chosen on the validation cases; 0 = off.
    innermost_min_mm3: float = 0.0
    #: Label models: per class, the log-probability offset chosen on the validation cases (empty: none).
    class_offsets: tuple[float, ...] = ()
    #: A fine-tuned model: the checkpoint its training started from (None: trained from scratch).
    initialised_from: InitialisedFrom | None = None
    #: Where the decision and postprocessing were chosen, with the Dice before and after (None: validation).
    decision_source: dict[str, Any] | None = None
    #: The calibrated quality score (None: the model has none; only cross-validation fits one).
    quality: QualityModel | None = None

    # ------------------------------------------------------------------ views
    @property
    def label_values(self) -> list[int]:
        """Label value of each class index: the label values in ascending order."""
        return sorted(self.labels)

    @property
    def num_classes(self) -> int:
        """The network's outputs: classes (background included), or regions for a region model."""
        return self.network.num_classes

    @property
    def thresholds(self) -> tuple[float, ...]:
        """Per region, the probability a voxel needs to be in it (0.5 unless the card says otherwise)."""
        n = len(self.regions) if self.regions is not None else 0
        return tuple(self.region_thresholds) or (0.5,) * n

    # ------------------------------------------------------------------ stored form
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CARD_FORMAT if self.regions is None else REGION_CARD_FORMAT,
            "network": self.network.kwargs(),
            "labels": {str(k): v for k, v in sorted(self.labels.items())},
            "channels": list(self.channels),
            "spacing": [float(s) for s in self.spacing],
            "patch_size": [int(p) for p in self.patch_size],
            "normalization": asdict(self.normalization),
            "intensity": [c.to_dict() for c in self.intensity],
            "training_ranges": None if self.training_ranges is None else self.training_ranges.to_dict(),
            "preprocess_version": int(self.preprocess_version),
            "regions": self.regions.to_dict() if self.regions is not None else None,
            "region_thresholds": [float(t) for t in self.region_thresholds],
            "innermost_min_mm3": float(self.innermost_min_mm3),
            "class_offsets": [float(o) for o in self.class_offsets],
            "initialised_from": None if self.initialised_from is None else self.initialised_from.to_dict(),
            "decision_source": None if self.decision_source is None else dict(self.decision_source),
            "quality": None if self.quality is None else self.quality.to_dict(),
            "config": dict(self.config),
            "versions": dict(self.versions),
        }

    @classmethod
    def from_dict(cls, raw: Any, source: object = "model card") -> ModelCard:
        """A validated card; any problem is one :class:`BrainsegError` line starting with ``source``."""

        def fail(problem: str) -> BrainsegError:
            written = raw.get("versions", {}).get("brainseg") if isinstance(raw, Mapping) else None
            by = f" (written by brainseg {written})" if isinstance(written, str) else ""
            return BrainsegError(f"{source}: model card {problem}{by}")

        if not isinstance(raw, Mapping):
            raise BrainsegError(f"{source}: model card is not a mapping but {type(raw).__name__}")
        fmt = raw.get("format")
        if fmt not in READABLE_FORMATS:
            newer = _newer_brainseg(raw)
            hint = f"; it was written by a newer brainseg ({newer}): upgrade brainseg" if newer else ""
            raise fail(f"has format {fmt!r}, this brainseg reads formats {', '.join(map(str, READABLE_FORMATS))}{hint}")
        net_key = "model" if fmt == 1 else "network"
        required = [net_key, "labels", "channels", "spacing", "patch_size", "normalization"]
        required += ["preprocess_version"] if fmt >= 2 else []
        missing = [k for k in required if k not in raw]
        if missing:
            raise fail(f"has no {', '.join(repr(k) for k in missing)}")
        try:
            network = Network.from_kwargs(raw[net_key])
            labels = {int(k): str(v) for k, v in dict(raw["labels"]).items()}
            channels = tuple(str(c) for c in raw["channels"])
            spacing = tuple(float(s) for s in raw["spacing"])
            patch = tuple(int(p) for p in raw["patch_size"])
            norm = dict(raw["normalization"])
            preprocess_version = int(raw.get("preprocess_version", FORMAT1_PREPROCESS_VERSION))
            intensity = tuple(ChannelIntensity.from_dict(c) for c in raw.get("intensity") or ())
            ranges = raw.get("training_ranges")
            training_ranges = None if ranges is None else TrainingRanges.from_dict(ranges)
            regions = Regions.from_dict(raw["regions"]) if raw.get("regions") is not None else None
            thresholds = tuple(float(t) for t in raw.get("region_thresholds") or ())
            innermost_min_mm3 = float(raw.get("innermost_min_mm3") or 0.0)
            class_offsets = tuple(float(o) for o in raw.get("class_offsets") or ())
            init = raw.get("initialised_from")
            initialised_from = None if init is None else InitialisedFrom.from_dict(init)
            chosen = raw.get("decision_source")
            decision_source = None if chosen is None else dict(chosen)
            quality = _quality(raw.get("quality"), source)
        except (TypeError, ValueError, AttributeError, KeyError, BrainsegError) as exc:
            raise fail(f"has a malformed field ({exc})") from None
        if len(spacing) != 3 or min(spacing) <= 0:
            raise fail(f"'spacing' must be 3 positive numbers, got {list(spacing)}")
        if len(patch) != 3 or min(patch) < 1:
            raise fail(f"'patch_size' must be 3 positive integers, got {list(patch)}")
        if not channels or len(channels) != network.in_channels:
            raise fail(f"lists {len(channels)} channel(s) {list(channels)} but the network takes {network.in_channels}")
        if fmt == REGION_CARD_FORMAT and regions is None:
            raise fail(f"has format {fmt} (a region model) but no 'regions'")
        if regions is not None:
            _check_regions(regions, thresholds, innermost_min_mm3, labels, network.num_classes, fail)
        elif len(labels) != network.num_classes or 0 not in labels:
            raise fail(
                f"lists labels {sorted(labels)} but the network has {network.num_classes} classes "
                "(the labels must be one per class, background 0 included)"
            )
        if class_offsets and (
            regions is not None
            or len(class_offsets) != network.num_classes
            or not all(math.isfinite(o) for o in class_offsets)
        ):
            raise fail(
                f"has class_offsets {list(class_offsets)}: expected one finite number per class of a label model, or none"
            )
        scheme = norm.get("scheme", "zscore")
        if scheme not in NORMALIZATION_SCHEMES:
            raise fail(f"has normalization scheme {scheme!r} (known: {', '.join(NORMALIZATION_SCHEMES)})")
        normalization = Normalization(
            scheme=cast(NormalizationScheme, scheme),
            mask=str(norm.get("mask", "foreground")),
            crop_to_nonzero=bool(norm.get("crop_to_nonzero", True)),
        )
        if normalization.scheme == "ct" and len(intensity) != len(channels):
            raise fail(
                f"has normalization scheme 'ct' but intensities for {len(intensity)} of {len(channels)} channel(s)"
            )
        config = raw.get("config") or {}
        versions = raw.get("versions") or {}
        if not isinstance(config, Mapping) or not isinstance(versions, Mapping):
            raise fail("has a malformed 'config' or 'versions' (expected mappings)")
        return cls(
            network=network,
            labels=dict(sorted(labels.items())),
            channels=channels,
            spacing=spacing,
            patch_size=patch,
            normalization=normalization,
            preprocess_version=preprocess_version,
            config=dict(config),
            versions={str(k): str(v) for k, v in versions.items()},
            format=int(fmt),
            intensity=intensity,
            training_ranges=training_ranges,
            regions=regions,
            region_thresholds=thresholds,
            innermost_min_mm3=innermost_min_mm3,
            class_offsets=class_offsets,
            initialised_from=initialised_from,
            decision_source=decision_source,
            quality=quality,
        )


def _quality(raw: Any, source: object) -> QualityModel | None:
    """The card's quality score; one fitted on other features than this brainseg computes is
    dropped with a warning (the masks are unaffected; the ``qc_*`` columns are left out)."""
    if raw is None:
        return None
    try:
        return QualityModel.from_dict(raw)
    except StaleQualityModel as exc:
        log.warning("%s: %s; predictions get no quality columns (run the cross-validation's finish again)", source, exc)
        return None


def _check_regions(regions: Regions, thresholds, innermost_min_mm3: float, labels, num_classes: int, fail) -> None:
    """A region model's card: one output per region, region labels among its labels, thresholds in (0, 1)."""
    if len(regions) != num_classes:
        raise fail(f"lists {len(regions)} region(s) {list(regions.names)} but the network has {num_classes} outputs")
    if 0 not in labels or not set(regions.label_values) <= set(labels):
        raise fail(
            f"lists labels {sorted(labels)}, which must hold 0 and the regions' labels {list(regions.label_values)}"
        )
    if thresholds and (len(thresholds) != len(regions) or not all(0.0 < t < 1.0 for t in thresholds)):
        raise fail(f"has region_thresholds {list(thresholds)}: expected one in (0, 1) per region or none")
    if not math.isfinite(innermost_min_mm3) or innermost_min_mm3 < 0:
        raise fail(f"has innermost_min_mm3 {innermost_min_mm3}: expected a volume >= 0")


def package_versions() -> dict[str, str]:
    """The versions of torch and the packages a card records (``"unknown"`` where not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    out = {"torch": str(torch.__version__)}  # TorchVersion is not a weights_only-loadable type
    for name in ("brainseg", "monai", "nibabel", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


def _newer_brainseg(raw: Mapping) -> str | None:
    """The card's brainseg version when it is newer than this one, else None."""
    from brainseg._version import __version__

    written = (raw.get("versions") or {}).get("brainseg") if isinstance(raw.get("versions"), Mapping) else None
    if not isinstance(written, str):
        return None
    try:
        return written if _version_tuple(written) > _version_tuple(__version__) else None
    except ValueError:
        return None


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("+")[0].split(".")[:3])
