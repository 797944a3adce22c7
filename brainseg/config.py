"""Typed configuration: dataclasses loaded from YAML, overridable with ``key=value``.

A config file holds any subset of the sections below; what it leaves out keeps the
default. ``--set train.lr=0.003 --set model.levels=4`` overrides single fields; the
value is parsed as YAML (``[96,96,96]``, ``true``, ``1e-3``). Unknown sections or
fields are an error naming them, so a typo never passes silently.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from brainseg.errors import BrainsegError

# The enum-like settings, declared once: the dataclass fields below use them, the loader checks
# values against them (``typing.get_args``), and every module that takes one imports it from here.
#: Intensity normalisation (``data.normalization``; the model card's scheme).
NormalizationScheme = Literal["zscore", "quantile", "none", "ct"]
#: The U-Net's normalisation layer (``model.norm``).
Norm = Literal["instance", "batch", "group", "none"]
#: What a U-Net skip is (``model.skip_mode``).
SkipMode = Literal["concat", "none", "add", "lowpass"]
#: ``train.optimizer``.
Optimizer = Literal["sgd", "adamw"]
#: ``train.lr_schedule``.
LrSchedule = Literal["poly", "constant"]
#: Mixed precision (``train.amp``, ``infer.amp``): on CUDA as named; on a CPU with native bf16, bf16.
Amp = Literal["bf16", "fp16", "none"]
#: How the input's non-zero region decides voxels (``postprocess.input_mask``).
InputMask = Literal["none", "restrict", "fill"]
#: What ``brainseg export --format`` writes.
ExportFormat = Literal["torchscript", "onnx"]


@dataclass
class DataConfig:
    #: Voxel size (mm) everything is resampled to; null = the plan's rule over the training cases:
    #: their median, an anisotropic axis (over 3x the finest) its 10th percentile.
    target_spacing: list[float] | None = None
    #: Intensity normalisation per channel, with the foreground's statistics over the whole
    #: volume: "zscore" (mean, std), "quantile" (percentiles mapped onto a standard normal's:
    #: unchanged by scale, offset, gamma or contrast changes), "ct" (clip to the training
    #: set's foreground 0.5-99.5 percentiles, z-score with its mean and std; kept in the
    #: model card) or "none".
    normalization: NormalizationScheme = "zscore"
    #: Crop each case to the bounding box of its non-zero voxels before training/inference.
    crop_to_nonzero: bool = True
    #: Fraction of training cases held out for validation (at least one case).
    val_fraction: float = 0.15
    #: Where the preprocessed cache lives; null = RUN_DIR/cache.
    cache_dir: str | None = None
    #: Refuse files whose header claims more voxels than this.
    max_voxels: int = 1024**3


@dataclass
class ModelConfig:
    #: Resolution levels including the bottleneck (levels-1 downsamplings).
    levels: int = 5
    base_features: int = 32
    max_features: int = 320
    #: "instance", "batch", "group" or "none".
    norm: Norm = "instance"
    deep_supervision: bool = False
    #: What a skip is: "concat" (the U-Net), "none" (cut: the ablation that shows what skips
    #: carry), "add" (added, not concatenated) or "lowpass" (concatenated after pooling to the
    #: bottleneck's grid and upsampling back). See docs/skip_connections.md. The older field
    #: ``skip_connections`` is still read: false means "none" (:func:`_legacy_model_fields`).
    skip_mode: SkipMode = "concat"
    #: Per downsampling, its stride per RAS axis ([[2, 2, 1], [2, 2, 2], ...]: levels - 1
    #: triples of 1 or 2); null = 2 on every axis. Anisotropic data pool the coarse axis later.
    strides: list[list[int]] | None = None
    #: Per level, the convolution kernel per axis (levels triples of 1, 3 or 5); null = 3.
    kernels: list[list[int]] | None = None


@dataclass
class AugmentConfig:
    """Training-patch augmentation: ``p_*`` is the probability that a patch gets one, the second block
    their strengths. Flips (each axis on its own), rotation (uniform in +-``rotate_degrees`` about each
    axis), isotropic zoom (``scale_range``), gamma over each channel's [min, max] keeping the patch's mean
    and std (as nnU-Net), brightness (multiplicative), contrast about the patch mean (clipped to its
    range), Gaussian noise (std up to ``noise_std``, normalised units), Gaussian blur (sigma in voxels), a
    smooth multiplicative bias field (log-amplitude up to ``bias_strength``), Rician noise over an exact-zero
    background (skull-stripped cases only: the network also knows noisy backgrounds) and a low-resolution
    simulation (down-sampled by ``lowres_zoom`` per axis by averaging, then trilinearly back up).
    """

    enabled: bool = True
    # how often: spatial
    p_flip: float = 0.5  # each axis on its own
    p_rotate: float = 0.2
    p_scale: float = 0.2
    # intensity
    p_gamma: float = 0.3  # of each channel
    p_brightness: float = 0.15
    p_contrast: float = 0.15
    #: Brightness, contrast, gamma and bias field drawn per channel (each MR sequence its own); False: one.
    per_channel: bool = False
    # acquisition
    p_noise: float = 0.1  # Gaussian, additive
    p_blur: float = 0.2
    p_bias: float = 0.3
    p_background_noise: float = 0.3
    p_lowres: float = 0.25
    # how strong
    rotate_degrees: float = 15.0
    scale_range: list[float] = field(default_factory=lambda: [0.85, 1.25])
    gamma_range: list[float] = field(default_factory=lambda: [0.6, 1.6])
    brightness_range: list[float] = field(default_factory=lambda: [0.75, 1.25])
    contrast_range: list[float] = field(default_factory=lambda: [0.75, 1.25])
    noise_std: float = 0.1
    blur_sigma: list[float] = field(default_factory=lambda: [0.5, 1.0])
    bias_strength: float = 0.5
    background_noise_std: list[float] = field(default_factory=lambda: [0.02, 0.3])
    lowres_zoom: list[float] = field(default_factory=lambda: [0.5, 1.0])


@dataclass
class TrainConfig:
    patch_size: list[int] = field(default_factory=lambda: [128, 128, 128])
    batch_size: int = 2
    epochs: int = 1000
    iters_per_epoch: int = 250
    #: "sgd" (Nesterov, nnU-Net's default) or "adamw".
    optimizer: Optimizer = "sgd"
    lr: float = 0.01
    momentum: float = 0.99
    weight_decay: float = 3e-5
    #: "poly" (lr * (1 - epoch/epochs)^0.9) or "constant".
    lr_schedule: LrSchedule = "poly"
    #: Fraction of patches centred on a foreground voxel of a random present class.
    foreground_fraction: float = 0.33
    #: Mixed precision on CUDA: "bf16", "fp16" or "none" (always fp32 on CPU).
    amp: Amp = "bf16"
    #: Channels-last (NDHWC) activations: faster Conv3d on CUDA and on CPU (oneDNN).
    channels_last: bool = True
    #: Validate (sliding-window Dice on held-out cases) every N epochs.
    val_every: int = 10
    #: Patch-loading worker processes (0 = in the main process).
    num_workers: int = 2
    seed: int = 0
    #: CPU threads for torch in the training process (0 = torch's default).
    threads: int = 0
    #: Save the "last" checkpoint every N epochs (and always at the end).
    checkpoint_every: int = 1
    #: A step whose loss or gradient norm is NaN/inf is skipped (no optimizer step) and
    #: counted (metrics.csv's skipped_steps); this many in a row stop training with an error.
    max_nonfinite_steps: int = 10
    #: Share of the training patches whose image is redrawn from their labels in a random contrast,
    #: resolution and artefacts (SynthSeg-like; :mod:`brainseg.train.sampling.synth`); 0 = off.
    synth: float = 0.0


@dataclass
class InferConfig:
    #: Fraction of a window shared with its neighbour (0.5 = half-patch steps).
    overlap: float = 0.5
    #: Windows per forward pass.
    batch_windows: int = 4
    #: Average over flips along each axis at test time (8x the compute).
    mirror: bool = False
    #: Gaussian importance sigma as a fraction of the patch size.
    sigma_scale: float = 0.125
    #: How far the windows reach past a skull-stripped scan's box on every side (a fraction of the
    #: patch; padded with its background); a noisy scan's windows stay on its box. 0 = the outer
    #: windows may end flush on the brain's rim, where the network sees the least context.
    margin: float = 0.125
    #: Mixed precision on CUDA: "bf16", "fp16" or "none".
    amp: Amp = "bf16"
    #: Channels-last (NDHWC) memory layout for the network's activations.
    channels_last: bool = True


@dataclass
class PostprocessConfig:
    #: Labels for which only the largest connected component is kept.
    largest_component: list[int] = field(default_factory=list)
    #: Keep only the largest 26-connected component of the whole foreground (nnU-Net's "remove
    #: all but the largest foreground component"): one structure per scan. A region model keeps
    #: the one with the most tumour core instead (its size breaks a tie).
    largest_foreground: bool = False
    #: Region models: remove the foreground components without tumour core (the regions inside
    #: the outer one) where another has core, else all but the largest: a core-less blob is the
    #: common false positive; every lesion of a multifocal tumour stays. Label models: no-op.
    drop_coreless: bool = False
    #: Labels whose holes are filled.
    fill_holes: list[int] = field(default_factory=list)
    #: Per label, components smaller than this many mm^3 are removed ({label: mm3}).
    min_size_mm3: dict[int, float] = field(default_factory=dict)
    #: The input's non-zero region: "none"; "restrict" (all-zero voxels are background); "fill"
    #: (and every non-zero voxel gets a foreground label: skull-stripped tissue segmentation).
    input_mask: InputMask = "none"
    #: Region models (BraTS): the enhancing-tumour rule. When the innermost region (ET) covers
    #: less than this many mm^3 in a case, its voxels take the label of the region before it (TC:
    #: necrosis, 1), BraTS's fix for false-positive ET. null = the value training chose on the
    #: validation cases (kept in the model card), 0 = off. Label models ignore it.
    innermost_min_mm3: float | None = None
    #: Label models: per class, a log-probability offset added before the argmax (the softmax's
    #: argmax under-segments thin classes that Dice weighs as much as large ones; training
    #: chooses the offsets that maximise the validation cases' Dice, kept in the model card).
    #: null = the card's, [] = none (plain argmax), a list = these (one per class, background first).
    class_offsets: list[float] | None = None
    #: Region models: per region, the probability a voxel needs to be in it. null = the card's
    #: (chosen on the validation cases), a list = these (one per region, in (0, 1)).
    region_thresholds: list[float] | None = None


@dataclass
class LabelsConfig:
    """What the label values mean beyond their names."""

    #: Left/right label pairs ``[[left, right], ...]``, swapped whenever a training patch or a
    #: test-time mirror flips the subject's left-right axis; null = found from the label
    #: names (``left X``/``right X``, ``Left-X``, ``lh``/``rh``, ``_L``/``_R``).
    mirror_pairs: list[list[int]] | None = None
    #: Region-based training (BraTS): region name -> the label values it contains, one
    #: sigmoid output per region; null = from the data set (nnU-Net v2 dataset.json regions,
    #: the BraTS layouts' WT/TC/ET), {} = per-label training.
    regions: dict[str, list[int]] | None = None
    #: With regions: the label value each region writes, in order (later regions overwrite
    #: earlier ones), as nnU-Net's ``regions_class_order``.
    regions_class_order: list[int] | None = None


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check/convert a YAML value against a dataclass field annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), where)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise BrainsegError(f"config {where}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise BrainsegError(f"config {where}: expected an integer, got {value!r}")
        return int(value)
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BrainsegError(f"config {where}: expected a number, got {value!r}")
        return float(value)
    if origin is Literal:
        if value not in args:
            raise BrainsegError(f"config {where}: {value!r} is not one of {', '.join(args)}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise BrainsegError(f"config {where}: expected a string, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise BrainsegError(f"config {where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise BrainsegError(f"config {where}: expected a mapping, got {value!r}")
        return {_coerce(k, args[0], f"{where} key"): _coerce(v, args[1], f"{where}[{k}]") for k, v in value.items()}
    return value


def _check_values(name: str, kwargs: dict[str, Any]) -> None:
    """One line naming the field and what it may be, for a value outside its range (the
    enum-like fields are checked against their ``Literal`` type by :func:`_coerce`)."""
    if "patch_size" in kwargs and (len(kwargs["patch_size"]) != 3 or min(kwargs["patch_size"]) < 1):
        raise BrainsegError(f"config {name}.patch_size: expected 3 positive integers, got {kwargs['patch_size']}")
    at_least_1 = ("batch_size", "epochs", "iters_per_epoch", "val_every", "batch_windows", "levels", "base_features")
    for key in (*at_least_1, "max_nonfinite_steps"):
        if key in kwargs and kwargs[key] < 1:
            raise BrainsegError(f"config {name}.{key}: must be at least 1, got {kwargs[key]}")
    if name == "train" and not 0.0 <= kwargs.get("synth", 0.0) <= 1.0:
        raise BrainsegError(f"config train.synth: must be in [0, 1] (a share of the patches), got {kwargs['synth']}")
    if name == "infer" and "overlap" in kwargs and not 0.0 <= kwargs["overlap"] < 1.0:
        raise BrainsegError(f"config infer.overlap: must be in [0, 1), got {kwargs['overlap']}")
    if name == "postprocess" and (kwargs.get("innermost_min_mm3") or 0.0) < 0:
        raise BrainsegError(
            f"config postprocess.innermost_min_mm3: must be >= 0 or null, got {kwargs['innermost_min_mm3']}"
        )
    spacing = kwargs.get("target_spacing") if name == "data" else None
    if spacing is not None and (len(spacing) != 3 or min(spacing) <= 0):
        raise BrainsegError(f"config data.target_spacing: expected 3 positive numbers or null, got {spacing}")


def _legacy_model_fields(values: dict) -> dict:
    """A ``model`` section as written before ``skip_mode`` replaced ``skip_connections`` (old
    configs and model cards): ``skip_connections: false`` becomes ``skip_mode: "none"``, true
    leaves ``skip_mode`` as it is. A new dict; the caller's is not changed."""
    if "skip_connections" not in values:
        return values
    out = dict(values)
    skips = _coerce(out.pop("skip_connections"), bool, "model.skip_connections")
    if not skips:
        mode = out.get("skip_mode", "none")
        if mode not in ("concat", "none"):
            raise BrainsegError(f"config model.skip_connections: false contradicts model.skip_mode: {mode}")
        out["skip_mode"] = "none"
    return out


def _section_from_dict(klass, values: dict, name: str):
    if not isinstance(values, dict):
        raise BrainsegError(f"config section '{name}' must be a mapping")
    if name == "model":
        values = _legacy_model_fields(values)
    hints = typing.get_type_hints(klass)
    known = {f.name for f in dataclasses.fields(klass)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise BrainsegError(
            f"config section '{name}': unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{name}.{k}") for k, v in values.items()}
    _check_values(name, kwargs)
    return klass(**kwargs)


def config_from_dict(values: dict | None) -> Config:
    values = values or {}
    if not isinstance(values, dict):
        raise BrainsegError("a config must be a mapping of sections")
    hints = typing.get_type_hints(Config)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise BrainsegError(f"config: unknown section(s) {', '.join(unknown)}; known: {', '.join(sorted(hints))}")
    config = Config(**{k: _section_from_dict(hints[k], v or {}, k) for k, v in values.items()})
    if config.train.synth and (scheme := config.data.normalization) not in ("zscore", "quantile"):
        raise BrainsegError(f"config train.synth: needs data.normalization zscore or quantile, not {scheme}")
    return config


def apply_overrides(values: dict, overrides: Sequence[str]) -> dict:
    """Apply ``section.field=value`` strings to a nested dict (values parsed as YAML)."""
    values = {k: dict(v or {}) for k, v in (values or {}).items()}
    for item in overrides or ():
        if "=" not in item:
            raise BrainsegError(f"--set {item!r}: expected section.field=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2:
            raise BrainsegError(f"--set {item!r}: the key must be section.field, e.g. train.lr")
        try:
            parsed = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise BrainsegError(f"--set {item!r}: cannot parse value ({exc})") from None
        values.setdefault(parts[0], {})[parts[1]] = parsed
    return values


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config file (or the defaults) and apply ``--set`` overrides."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise BrainsegError(f"{path}: config file not found")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise BrainsegError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    try:
        return config_from_dict(apply_overrides(values, overrides))
    except BrainsegError as exc:
        where = f"{path}: " if path is not None else ""
        raise BrainsegError(f"{where}{exc}") from None


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
