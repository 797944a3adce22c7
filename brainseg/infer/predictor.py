"""One case through a trained model: scan files in, a label mask in the scan's own grid out.

:class:`Predictor` holds an inference-ready copy of the model (:attr:`Predictor.network`,
:func:`~brainseg.model.fast_paths.inference_network`; the caller's model is never changed), the
callable its windows go through (the network under autocast, with test-time mirroring:
:mod:`brainseg.infer.mirroring`) and each case's :class:`~brainseg.infer.sliding_window.SlidingWindow`
(:meth:`Predictor.window`); a case goes::

    read_channels -> preprocess (RAS, resample to the card's spacing, crop, normalise)
    -> sliding window (logits; a test-time mirror swaps the left/right labels' channels)
    -> softmax -> invert_to_original (the file's own grid) -> argmax -> class index to label value
    -> postprocess_labels

so the mask has exactly the input's shape and affine. A region model (``card.regions``) has one
sigmoid output per region instead: each region's probability is thresholded (the card's
``thresholds``), the regions write their labels by the class order (:func:`~brainseg.postprocess.decision.regions_within_input`),
and after the per-label clean-up the enhancing-tumour rule (:func:`~brainseg.postprocess.decision.innermost_rule`) applies.
:meth:`Predictor.prepare` reads and preprocesses, :meth:`Predictor.segment` does the rest: the trainer's validation
prepares its cases once and segments them with the code ``brainseg predict`` runs (its batch runner: :mod:`~brainseg.infer.batch`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar, cast

import numpy as np
import torch

from brainseg.config import InferConfig, InputMask, PostprocessConfig
from brainseg.errors import BrainsegError
from brainseg.infer.attempts import accumulators_fit_on_gpu, inference_attempts, run_with_oom_fallback
from brainseg.infer.ensemble import EnsembleWindows, check_compatible, entropy_map
from brainseg.infer.mirroring import window_predictor
from brainseg.infer.sliding_window import SlidingWindow
from brainseg.io.images import DEFAULT_MAX_VOXELS, Geometry, read_channels
from brainseg.labels.laterality import from_run_config
from brainseg.labels.regions import Regions
from brainseg.model.card import ModelCard
from brainseg.model.fast_paths import inference_network
from brainseg.postprocess.components import postprocess_labels
from brainseg.postprocess.decision import (
    background_outside_input_,
    innermost_rule,
    labels_within_input,
    regions_within_input,
)
from brainseg.preprocessing.foreground import far_background, subject_mask
from brainseg.preprocessing.preprocess import (
    PreprocessRecord,
    invert_region_slabs,
    invert_to_original,
    preprocess,
    reorient_array,
    undo_reorient_array,
)
from brainseg.quality.ood import OodDistance, scan_ood
from brainseg.runtime import effective_amp

T = TypeVar("T")


@dataclass
class PreparedCase:
    """A case read and preprocessed: what :meth:`Predictor.segment` needs."""

    #: The network's input, (C, x, y, z) in the card's spacing (RAS, cropped, normalised).
    image: np.ndarray
    record: PreprocessRecord
    #: The first file's own grid, which the mask is written in.
    geometry: Geometry
    #: Voxels of the original grid that are not exact-zero background (some channel is not 0,
    #: or enclosed by such voxels: :func:`~brainseg.preprocessing.foreground.subject_mask`): the input-mask rule's mask.
    nonzero: np.ndarray
    #: Why the scan is unlike the training scans (the card's ranges); empty: it is not, or unknown.
    ood: list[str] = field(default_factory=list)
    #: How far outside the training ranges, grid and contrast apart (0: inside or unknown).
    ood_distance: OodDistance = field(default_factory=OodDistance)


@dataclass
class Segmentation:
    """What :meth:`Predictor.segment_maps` returns, in the case's original grid."""

    #: The card's label values (uint8/int16) after postprocessing.
    labels: np.ndarray
    #: (C, X, Y, Z) float32 probabilities (a region model: one sigmoid per region), if asked for.
    probabilities: np.ndarray | None = None
    #: (X, Y, Z) float32 in [0, 1], if asked for (:mod:`brainseg.infer.ensemble`: entropy or disagreement).
    uncertainty: np.ndarray | None = None


class Predictor:
    """A trained model (or an ensemble of compatible ones) ready to segment cases: inference copies.

    ``ensemble_with``: more (model, card) members, compatible with the first
    (:func:`~brainseg.infer.ensemble.check_compatible`); their probabilities are averaged per window
    (:class:`~brainseg.infer.ensemble.EnsembleWindows`). The case's preprocessing, the
    out-of-distribution ranges and the decision (class offsets, region thresholds, the
    enhancing-tumour volume) are the first member's card's.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        card: ModelCard,
        infer: InferConfig,
        postprocess: PostprocessConfig,
        device: str | torch.device = "cpu",
        log: Callable[[str], None] | None = None,
        max_voxels: int = DEFAULT_MAX_VOXELS,
        compile_network: bool = False,
        ensemble_with: Sequence[tuple[torch.nn.Module, ModelCard]] = (),
    ):
        if not isinstance(card, ModelCard):
            raise TypeError(f"card must be a ModelCard, got {type(card).__name__}")
        self.device = torch.device(device)
        members = [(model, card), *ensemble_with]
        check_compatible([c for _, c in members], [f"member {i + 1}" for i in range(len(members))])
        # copies (the caller's stay as they are); torch.compile: opt-in (benchmarks), a compiled module is a module
        amp = effective_amp(self.device, infer.amp)
        networks = [inference_network(member, self.device, infer.channels_last, amp) for member, _ in members]
        networks = [cast(torch.nn.Module, torch.compile(n)) if compile_network else n for n in networks]
        self._network = networks[0]
        self.max_voxels = int(max_voxels)  # refuse scans whose header claims more (config data.max_voxels)
        self.card = card
        self.infer = infer
        self.postprocess = postprocess
        self.log = log
        self.num_classes = card.num_classes
        self.label_values = card.label_values
        self.n_channels = len(card.channels)
        # left/right pairs as trained (the card's labels.mirror_pairs; older cards: from the label names)
        # (a region model's outputs are regions, not labels: a left-right mirror swaps none of them)
        self.regions = card.regions  # None: a label model (softmax over classes)
        self.laterality = from_run_config(card.config, card.labels)
        member_windows = []
        for network, member_card in zip(networks, (c for _, c in members)):
            laterality = from_run_config(member_card.config, member_card.labels)
            pairs = laterality.pairs and self.regions is None
            swap = laterality.channel_permutation(self.label_values) if pairs else None
            member_windows.append(window_predictor(network, infer, self.device, swap, laterality.may_flip_left_right))
        ensemble = EnsembleWindows(tuple(member_windows), regions=self.regions is not None)
        #: What the windows go through: a batch of windows -> logits (test-time mirroring included);
        #: an ensemble's: the members' mean probabilities (:attr:`windows_give_probabilities`).
        self.predict_windows = member_windows[0] if len(members) == 1 else ensemble
        self.windows_give_probabilities = ensemble.returns_probabilities
        #: The windows with the samples' disagreement as one more channel (None: one unmirrored model,
        #: whose uncertainty is the entropy of its probabilities).
        self.uncertainty_windows = (
            EnsembleWindows(ensemble.members, ensemble.regions, uncertainty=True)
            if len(members) > 1 or infer.mirror
            else None
        )
        chosen = postprocess.innermost_min_mm3
        #: The enhancing-tumour rule's volume: the config's, else the one training chose (the card's).
        self.innermost_min_mm3 = float(card.innermost_min_mm3 if chosen is None else chosen)
        offsets = card.class_offsets if postprocess.class_offsets is None else tuple(postprocess.class_offsets)
        if offsets and (self.regions is not None or len(offsets) != self.num_classes):
            raise BrainsegError(
                f"postprocess.class_offsets {list(offsets)}: expected one per class ({self.num_classes}) of a label model, or []"
            )
        #: Label models: per class, the factor its probability gets before the argmax (None: plain argmax).
        self.class_weights = np.exp(np.asarray(offsets, dtype=np.float32)) if any(offsets) else None
        fixed = postprocess.region_thresholds
        #: Region models: per region, the probability a voxel needs (the config's, else the card's).
        self.thresholds = card.thresholds if fixed is None else tuple(float(t) for t in fixed)
        if self.regions is not None and (
            len(self.thresholds) != len(self.regions) or not all(0 < t < 1 for t in self.thresholds)
        ):
            raise BrainsegError(
                f"postprocess.region_thresholds {list(self.thresholds)}: expected one in (0, 1) per region ({len(self.regions)})"
            )

    @property
    def network(self) -> torch.nn.Module:
        """The inference-ready network (a copy: eval mode, on the device, norms folded/fused; an ensemble's first)."""
        return self._network

    @property
    def ensemble_size(self) -> int:
        return len(self.predict_windows.members) if isinstance(self.predict_windows, EnsembleWindows) else 1

    @property
    def label_names(self) -> dict[int, str]:
        return dict(self.card.labels)

    def prepare(self, images: Sequence[str | os.PathLike]) -> PreparedCase:
        """Read one case (one file per channel, in the card's channel order) and preprocess it."""
        if len(images) != self.n_channels:
            raise BrainsegError(
                f"the model expects {self.n_channels} channel(s) {list(self.card.channels)}, got {len(images)} file(s)"
            )
        data, geometry = read_channels(images, max_voxels=self.max_voxels)
        return self.prepare_arrays(data, geometry)

    def prepare_arrays(self, data: np.ndarray, geometry: Geometry) -> PreparedCase:
        """:meth:`prepare` of a (C, X, Y, Z) scan already in memory (its first file's ``geometry``)."""
        norm = self.card.normalization
        subject = subject_mask(data)  # once: preprocessing and the input-mask rule both use it
        image, _, record = preprocess(
            data,
            geometry,
            target_spacing=self.card.spacing,
            normalization=norm.scheme,
            crop_to_nonzero=norm.crop_to_nonzero,
            intensity=self.card.intensity or None,
            subject=subject,
        )
        if self.card.training_ranges is None:
            return PreparedCase(image, record, geometry, subject)
        ood, distance = scan_ood(data, geometry, self.card.training_ranges, self.card.channels, subject)
        return PreparedCase(image, record, geometry, subject, ood, distance)

    def segment(self, case: PreparedCase, return_probabilities: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """``(labels, probabilities or None)`` of a prepared case, in its original grid: the card's label
        values (uint8/int16) after postprocessing; probabilities (float32, (C, X, Y, Z)) only if asked for."""
        result = self.segment_maps(case, return_probabilities)
        return result.labels, result.probabilities

    def segment_maps(self, case: PreparedCase, probabilities: bool = False, uncertainty: bool = False) -> Segmentation:
        """:meth:`segment`, and with ``uncertainty`` the uncertainty map (:mod:`brainseg.infer.ensemble`).

        Both are computed in the original grid, background where the input-mask rule says so: a model's
        entropy, or the disagreement channel the windows returned."""
        input_mask, record = self.input_mask_rule(case.record), case.record
        unc = None
        if probabilities or uncertainty:
            extra = uncertainty and self.uncertainty_windows is not None
            full = self._infer(case.image, record, lambda p: invert_to_original(p, record).cpu().numpy(), False, extra)
            full = background_outside_input_(full, case.nonzero, input_mask, self.regions is not None)
            scores = full[: self.num_classes]
            if uncertainty:
                unc = full[self.num_classes] if extra else entropy_map(scores, self.regions is not None)
            classes = reducer(input_mask, self.regions, self.thresholds, self.class_weights)(scores, case.nonzero)
            probs = scores if probabilities else None
        else:  # labels only: no full-size probability maps are built

            def to_classes(p: torch.Tensor) -> np.ndarray:
                args = (self.regions, self.thresholds, self.class_weights)
                return classes_in_original_grid(p, record, case.nonzero, input_mask, *args)

            probs, classes = None, self._infer(case.image, record, to_classes, True)
        core = () if self.regions is None else self.regions.class_order[1:]  # the labels inside the outer region
        labels = postprocess_labels(self._to_label_values(classes), case.geometry.spacing, self.postprocess, core)
        if self.regions is not None:
            labels = innermost_rule(labels, case.geometry.spacing, self.regions, self.innermost_min_mm3)
        return Segmentation(labels, probs, None if unc is None else np.ascontiguousarray(unc, dtype=np.float32))

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
        case = self.prepare(images)
        labels, probs = self.segment(case, return_probabilities)
        return labels, probs, case.geometry, case.record

    def window(self, record: PreprocessRecord, outputs: int | None = None) -> SlidingWindow:
        """A case's windows (:meth:`SlidingWindow.from_config`: the margin where its background is 0)."""
        patch, zero = self.card.patch_size, record.zero_background
        return SlidingWindow.from_config(patch, outputs or self.num_classes, self.infer, zero)

    def input_mask_rule(self, record: PreprocessRecord) -> InputMask:
        """The ``postprocess.input_mask`` rule for this case: as configured where the case's
        background is exactly 0, else ``"none"`` (on a noisy background "non-zero" is everywhere)."""
        return self.postprocess.input_mask if record.zero_background else "none"

    def _infer(
        self,
        image: np.ndarray,
        record: PreprocessRecord,
        finish: Callable[[torch.Tensor], T],
        in_place: bool,
        uncertainty: bool = False,
    ) -> T:
        """``finish(probabilities)`` of a preprocessed image, with the OOM fallbacks (:func:`inference_attempts`).

        Probabilities: a region model's sigmoids, else the softmax (``in_place``: in the logits'
        memory, :func:`softmax_`), or an ensemble's mean probabilities as the windows gave them;
        the far background (:func:`~brainseg.preprocessing.foreground.far_background`) is forced to
        background either way. ``uncertainty``: the windows' disagreement channel comes last (0 in the
        far background)."""
        c = self.num_classes
        predict = self.uncertainty_windows if uncertainty else self.predict_windows
        assert predict is not None
        window = self.window(record, c + 1 if uncertainty else c)
        on_gpu = accumulators_fit_on_gpu(self.device, window.num_outputs, window.padded_shape(image.shape[1:]))
        attempts = inference_attempts(
            self.device, max(1, int(self.infer.batch_windows)), self.device if on_gpu else torch.device("cpu")
        )
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        far = far_background(image, record.pad_values(), record.far_constant)

        def step(batch_windows: int, output_device: torch.device) -> T:
            logits = window(tensor, predict, batch_windows, self.device, output_device, record.pad_values())
            if self.windows_give_probabilities or uncertainty:  # activate the scores' channels only, in place
                if not self.windows_give_probabilities and self.regions is not None:
                    logits[:c].sigmoid_()
                elif not self.windows_give_probabilities:
                    softmax_(logits[:c])
                if self.regions is not None:
                    return finish(sigmoid_(logits, far, activate=False))
                return finish(force_background_(logits, far))
            if self.regions is not None:
                return finish(sigmoid_(logits, far))
            return finish(force_background_(softmax_(logits) if in_place else torch.softmax(logits, dim=0), far))

        return run_with_oom_fallback(step, attempts, self.log)

    def _to_label_values(self, classes: np.ndarray) -> np.ndarray:
        if self.regions is not None or self.label_values == list(range(self.num_classes)):
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
def sigmoid_(logits: torch.Tensor, far: np.ndarray | None, activate: bool = True) -> torch.Tensor:
    """In place: region probabilities (sigmoids; ``activate`` False: they are already), all 0 where ``far``."""
    if activate:
        logits.sigmoid_()
    if far is not None and far.any():
        logits[:, torch.from_numpy(far).to(logits.device)] = 0.0
    return logits


@torch.inference_mode()  # the sliding window's output is an inference tensor
def force_background_(probs: torch.Tensor, far: np.ndarray | None) -> torch.Tensor:
    """In place: the background one-hot where ``far`` (:func:`~brainseg.preprocessing.foreground.far_background`)."""
    if far is not None and far.any():
        where = torch.from_numpy(far).to(probs.device)
        probs[:, where] = 0.0
        probs[0, where] = 1.0
    return probs


def reducer(input_mask: InputMask, regions: Regions | None = None, thresholds: Sequence[float] = (), weights=None):
    """``f(probs, nonzero)``: (C, ...) probabilities to class indices (:func:`labels_within_input`,
    per-class ``weights``), or for a region model to label values (:func:`regions_within_input`,
    per-region ``thresholds``)."""
    if regions is None:
        return partial(labels_within_input, mode=input_mask, weights=weights)
    return partial(regions_within_input, mode=input_mask, regions=regions, thresholds=thresholds)


def classes_in_original_grid(
    probs: torch.Tensor,
    record: PreprocessRecord,
    nonzero: np.ndarray,
    input_mask: InputMask,
    regions: Regions | None = None,
    thresholds: Sequence[float] = (),
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """``labels_within_input(invert_to_original(probs, record), nonzero, input_mask)``, cheaply
    (for a region model, with ``regions``: the label values of :func:`regions_within_input`).

    Only the region of the original grid that the crop box reaches is interpolated
    (:func:`~brainseg.preprocessing.preprocess.invert_region_slabs`, a slab at a time) and reduced to class indices
    there; outside it the probabilities are the background one-hot (no region: all 0), whose label (per
    ``nonzero`` and ``input_mask``) is filled in directly. The reorientation is undone
    on the small integer map instead of the C float maps.
    """
    ornt = np.asarray(record.ornt)
    nonzero_ras = reorient_array(np.asarray(nonzero, dtype=bool), ornt)
    # what labels_within_input gives a voxel whose probabilities are the background one-hot
    reduce = reducer(input_mask, regions, thresholds, weights)
    onehot = np.zeros((probs.shape[0], 1, 1, 2), dtype=np.float32)
    onehot[0] = 1.0 if regions is None else 0.0
    outside = reduce(onehot, np.array([[[False, True]]]))[0, 0]
    classes = np.where(nonzero_ras, outside[1], outside[0]).astype(outside.dtype)
    for slab, where in invert_region_slabs(probs, record):  # a slab at a time: bounded memory
        scores = slab.cpu().numpy()  # (x, y, z, C): classes last, so the argmax reads contiguous memory
        classes[where] = reduce(np.moveaxis(scores, -1, 0), nonzero_ras[where])
    return np.ascontiguousarray(undo_reorient_array(classes, ornt))
