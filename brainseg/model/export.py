"""A trained network in inference form, for use without brainseg: TorchScript or ONNX.

:func:`export_model` writes the network (eval mode, traced with one window of the card's
patch size) to ``FILE`` and the model info (:class:`~brainseg.model.info.ModelInfo`, the
card with the checkpoint's SHA-256, plus an ``"export"`` section naming the input and
output) to ``FILE.card.json`` beside it (:func:`card_path`). Both are written atomically
(nothing at ``FILE`` if the export fails). TorchScript comes from ``torch.jit.trace``
(load it with ``torch.jit.load``); ONNX from ``torch.onnx.export`` with its TorchScript-based
exporter (``dynamo=False``: the dynamo exporter needs ``onnxscript``), opset
:data:`ONNX_OPSET`, instance norms written out as reductions (:class:`TwoPassInstanceNorm`);
run it with onnxruntime (``pip install brainseg[export]``).

The contract, what a caller must do:

* Input ``image``, float32 ``(N, C, X, Y, Z)``: the card's ``channels`` in that order, the
  volume **reoriented to RAS** voxel order (axis 0 runs to the subject's left... right, as
  nibabel's ``as_closest_canonical`` gives) and **resampled to the card's ``spacing``**.
  N, X, Y and Z are dynamic (the card's patch is only the tracing example), but each
  spatial side must be a multiple of ``export.input.multiple_of`` (the network's total
  downsampling; pad with the background value if needed). A whole volume fits in one call
  when memory allows; else **tile windows** of the card's patch size, overlapping, and
  blend them (brainseg uses half-window overlap and Gaussian weights).
* Without ``--with-preprocessing`` the input must be normalised already as brainseg does
  (:func:`~brainseg.preprocessing.preprocess.preprocess`), and the output ``logits``
  ``(N, K, X, Y, Z)`` are the raw network outputs.
* With ``--with-preprocessing`` (:class:`WithPreprocessing`) the input is the raw volume
  (RAS, card spacing) and the graph normalises it with the card's scheme: ``zscore``
  with each channel's mean and std over its non-zero voxels (every voxel if none), as
  :func:`~brainseg.preprocessing.normalisation.zscore_foreground` does on a zero-background
  (skull-stripped) scan, computed per sample over the whole input, so pass the whole
  volume, not windows, for the statistics to be the scan's; ``ct`` with the card's
  intensity statistics (clip, then z-score: windows are fine); ``none`` unchanged.
  ``quantile`` (landmarks from each scan's percentiles) cannot be expressed in the graph
  and is refused. Brainseg's own preprocessing also crops to the subject and, on scans
  whose background is not exactly 0, replaces far noise by a constant; the export does
  neither. The output ``probabilities`` ``(N, K, X, Y, Z)`` are the softmax over classes
  (label models) or one sigmoid per region (region models).
* The decision stays with the caller: a label model's class index k is the k-th smallest
  label value of the card's ``labels`` (``class_offsets``, when present, are added to the
  log-probabilities before the argmax); a region model's outputs are the card's
  ``regions``, each thresholded at ``region_thresholds`` (0.5 when empty) and written in
  ``class_order``. Results are in RAS at the card's spacing: the caller maps them back
  to the scan's own grid.
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast, get_args

import torch
from torch import nn

from brainseg.config import ExportFormat
from brainseg.errors import BrainsegError
from brainseg.io.atomic import atomic_path, atomic_write_text
from brainseg.model.card import ModelCard
from brainseg.model.checkpoint import load_model
from brainseg.model.info import read_model_info

#: What ``--format`` may name.
EXPORT_FORMATS: tuple[ExportFormat, ...] = get_args(ExportFormat)
#: The ONNX operator set written (InstanceNormalization, ConvTranspose and the reductions of
#: the in-graph normalisation are all in it; onnxruntime reads it).
ONNX_OPSET = 17
#: What :func:`card_path` appends to the exported file's name.
CARD_SUFFIX = ".card.json"
#: A voxel's spatial axes in ``(N, C, X, Y, Z)``, and the names the ONNX graph gives the dynamic ones.
_DYNAMIC = {0: "batch", 2: "x", 3: "y", 4: "z"}


def parse_format(text: str, out: str | os.PathLike = "export") -> ExportFormat:
    """``text`` as an export format, or one error line naming ``out`` and the known formats."""
    if text not in EXPORT_FORMATS:
        raise BrainsegError(f"{out}: cannot export as {text!r}: --format must be one of {', '.join(EXPORT_FORMATS)}")
    return text


def card_path(out: str | os.PathLike) -> Path:
    """Where the card of an export at ``out`` goes: ``out`` + ``.card.json``."""
    out = Path(out)
    return out.with_name(out.name + CARD_SUFFIX)


class InGraphNormalisation(nn.Module):
    """The card's intensity normalisation as tensor operations on ``(N, C, X, Y, Z)`` (see the module
    docstring); a scheme that needs per-scan percentiles raises one :class:`BrainsegError` line."""

    low: torch.Tensor
    high: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, card: ModelCard):
        super().__init__()
        self.scheme = card.normalization.scheme
        if self.scheme not in ("zscore", "ct", "none"):
            raise BrainsegError(
                f"the {self.scheme!r} normalisation cannot be expressed in an exported graph (its landmarks are "
                "percentiles of each scan): export without --with-preprocessing and normalise with brainseg"
            )
        stats = card.intensity if self.scheme == "ct" else ()

        def column(values) -> torch.Tensor:
            return torch.tensor(list(values), dtype=torch.float32).view(1, -1, 1, 1, 1)

        self.register_buffer("low", column(s.percentile_00_5 for s in stats))
        self.register_buffer("high", column(s.percentile_99_5 for s in stats))
        self.register_buffer("mean", column(s.mean for s in stats))
        self.register_buffer("std", column(s.std for s in stats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scheme == "none":
            return x
        if self.scheme == "ct":
            return (torch.minimum(torch.maximum(x, self.low), self.high) - self.mean) / self.std
        # zscore: statistics in float64 over each channel's non-zero voxels, as numpy computes them
        flat = x.flatten(2).double()
        nonzero = flat != 0
        use = (nonzero | (nonzero.sum(-1, keepdim=True) == 0)).double()  # no non-zero voxel: all of them
        count = use.sum(-1, keepdim=True)
        mean = (flat * use).sum(-1, keepdim=True) / count
        std = torch.sqrt((((flat - mean) * use) ** 2).sum(-1, keepdim=True) / count)
        std = torch.where(std > 1e-8, std, torch.ones_like(std))
        return (x - mean.float().unsqueeze(-1).unsqueeze(-1)) / std.float().unsqueeze(-1).unsqueeze(-1)


class WithPreprocessing(nn.Module):
    """Raw RAS volume at the card's spacing in, class (softmax) or region (sigmoid) probabilities out."""

    def __init__(self, network: nn.Module, card: ModelCard):
        super().__init__()
        self.normalise = InGraphNormalisation(card)
        self.network = network
        self.regions = card.regions is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.network(self.normalise(x))
        return torch.sigmoid(logits) if self.regions else torch.softmax(logits, dim=1)


class TwoPassInstanceNorm(nn.Module):
    """``InstanceNorm3d`` (no running statistics) written as reductions: the mean, then the variance
    of the centred values, each reduced one axis at a time. onnxruntime's InstanceNormalization
    (and a one-step mean over a volume) round visibly worse than PyTorch's, more so the larger the
    input; these few operations keep the ONNX graph as close to PyTorch as float32 allows."""

    def __init__(self, norm: nn.InstanceNorm3d):
        super().__init__()
        self.eps = float(norm.eps)
        channels = int(norm.num_features)
        self.weight = nn.Parameter(norm.weight.detach().clone() if norm.weight is not None else torch.ones(channels))
        self.bias = nn.Parameter(norm.bias.detach().clone() if norm.bias is not None else torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - _spatial_mean(x)
        var = _spatial_mean(centred * centred)
        return centred * torch.rsqrt(var + self.eps) * self.weight.view(1, -1, 1, 1, 1) + self.bias.view(1, -1, 1, 1, 1)


def _spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean over the spatial axes, one axis at a time: each float32 sum runs over one side
    (onnxruntime sums a whole volume in one running float32 total, whose rounding grows with it)."""
    return x.mean(dim=4, keepdim=True).mean(dim=3, keepdim=True).mean(dim=2, keepdim=True)


def onnx_form(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every plain ``InstanceNorm3d`` as :class:`TwoPassInstanceNorm`."""
    out = copy.deepcopy(module)
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.InstanceNorm3d) and not child.track_running_stats:
                setattr(parent, name, TwoPassInstanceNorm(child))
    return out.eval()


@dataclass(frozen=True)
class ExportResult:
    path: Path
    card_path: Path
    format: ExportFormat
    with_preprocessing: bool
    #: The example the graph was traced with: (1, channels, *patch).
    example_shape: tuple[int, ...]


def inference_module(network: nn.Module, card: ModelCard, with_preprocessing: bool) -> nn.Module:
    """What is exported: the network, or it wrapped in :class:`WithPreprocessing`; in eval mode."""
    module = WithPreprocessing(network, card) if with_preprocessing else network
    return module.eval()


def export_model(
    model: str | os.PathLike,
    out: str | os.PathLike,
    fmt: ExportFormat,
    with_preprocessing: bool = False,
    checkpoint: str | None = None,
) -> ExportResult:
    """Export the model of a checkpoint or run folder (``checkpoint``: which of a run folder's) to
    ``out`` as ``fmt``, with its card at :func:`card_path` (see the module docstring)."""
    out = Path(out)
    fmt = parse_format(fmt, out)
    info = read_model_info(model, checkpoint)
    if out.is_dir():
        raise BrainsegError(f"{out}: is a folder; --out names the file to write")
    if out.resolve() == info.checkpoint:
        raise BrainsegError(f"{out}: is the checkpoint being exported; choose another --out")
    network, card = load_model(info.checkpoint)
    module = inference_module(network, card, with_preprocessing)
    example = torch.zeros(1, card.network.in_channels, *card.patch_size)
    if with_preprocessing:  # a non-zero example: the zscore's statistics take their usual path
        example = example + torch.linspace(0.0, 1.0, example.numel()).view_as(example)
    divisor = list(getattr(network, "divisor", (1, 1, 1)))
    # Serialised in memory, written with Python's I/O: a full disk is an OSError naming the file
    # (torch's own writers report it as an opaque RuntimeError), and nothing partial is left.
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on the shape checks the traced sizes make constant
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(module, example, check_trace=False), buffer)
        else:
            _export_onnx(onnx_form(module), example, buffer, "probabilities" if with_preprocessing else "logits")
    card_out = card_path(out)
    with atomic_path(out) as tmp:
        tmp.write_bytes(buffer.getbuffer())
        atomic_write_text(card_out, _card_json(info.to_dict(), fmt, out, with_preprocessing, card, divisor))
    return ExportResult(out, card_out, fmt, with_preprocessing, tuple(example.shape))


def _export_onnx(module: nn.Module, example: torch.Tensor, buffer: io.BytesIO, output: str) -> None:
    """The ONNX file of ``module`` into ``buffer`` (the TorchScript-based exporter writes to a file
    object; its type hints name paths only)."""
    try:
        torch.onnx.export(
            module,
            (example,),
            cast(Any, buffer),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["image"],
            output_names=[output],
            dynamic_axes={"image": dict(_DYNAMIC), output: dict(_DYNAMIC)},
        )
    except ImportError as exc:  # torch's exporter imports onnx pieces lazily
        raise BrainsegError(
            f"the ONNX export needs a package that is not installed ({exc}): pip install 'brainseg[export]'"
        ) from None


def _card_json(
    info: dict[str, Any], fmt: ExportFormat, out: Path, with_preprocessing: bool, card: ModelCard, divisor: list[int]
) -> str:
    import json

    outputs = list(card.regions.names) if card.regions is not None else [card.labels[v] for v in card.label_values]
    activation = ("sigmoid" if card.regions is not None else "softmax") if with_preprocessing else "none"
    info["export"] = {
        "format": fmt,
        "file": out.name,
        "exporter": "torch.jit.trace"
        if fmt == "torchscript"
        else f"torch.onnx.export (dynamo=False, opset {ONNX_OPSET})",
        "with_preprocessing": with_preprocessing,
        "input": {
            "name": "image",
            "shape": ["N", len(card.channels), "X", "Y", "Z"],
            "channels": list(card.channels),
            "multiple_of": divisor,
            "example": [1, len(card.channels), *card.patch_size],
            "expects": (
                f"raw intensities, RAS voxel order, {list(card.spacing)} mm voxels; normalised inside ({card.normalization.scheme})"
                if with_preprocessing
                else f"normalised intensities ({card.normalization.scheme}), RAS voxel order, {list(card.spacing)} mm voxels"
            ),
        },
        "output": {
            "name": "probabilities" if with_preprocessing else "logits",
            "shape": ["N", card.num_classes, "X", "Y", "Z"],
            "channels": outputs,
            "activation": activation,
        },
    }
    return json.dumps(info, indent=1) + "\n"
