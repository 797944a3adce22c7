"""What the sliding window's windows go through: the network, and test-time mirroring around it.

:class:`NetworkForward` is a batch of windows through the network, in its layout and under
autocast. :class:`Mirroring` wraps such a callable and averages its logits over the flip
combinations of the three spatial axes (8 passes). Axis 0 of the (preprocessed, RAS-ordered)
volume is the subject's left-right axis: a combination that flips it turns left structures into
right ones, so its flipped-back logits take their channels from ``swap_channels`` (each
left/right pair's channels swapped, :meth:`~brainseg.labels.laterality.Laterality.channel_permutation`)
before they are averaged. The average then stays equivariant: the mirrored scan gets the
mirrored, side-swapped prediction. With ``flip_left_right`` False (a lateralised label without a
partner) those combinations are left out (4 passes).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from brainseg.config import Amp, InferConfig
from brainseg.infer.sliding_window import WindowPredictor
from brainseg.runtime import autocast


@dataclass(frozen=True)
class NetworkForward:
    """A batch of windows through ``network`` (in its layout, under autocast): the window predictor."""

    network: torch.nn.Module
    device: torch.device
    amp: Amp = "none"
    channels_last: bool = False

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last_3d)
        with autocast(self.device, self.amp):
            return self.network(batch)


@dataclass(frozen=True)
class Mirroring:
    """``predict`` averaged over the flips of a batch's spatial axes (dims 2, 3, 4 of (B, C, X, Y, Z))."""

    predict: WindowPredictor
    #: Output channel ``i`` of a left-right flip is its channel ``swap_channels[i]``; None: no swap.
    swap_channels: tuple[int, ...] | None = None
    flip_left_right: bool = True

    def __post_init__(self) -> None:
        if self.swap_channels is not None:
            swap = tuple(int(c) for c in self.swap_channels)
            if sorted(swap) != list(range(len(swap))):
                raise ValueError(f"swap_channels {list(swap)} is not a permutation of {len(swap)} channels")
            object.__setattr__(self, "swap_channels", swap)
        object.__setattr__(self, "flip_left_right", bool(self.flip_left_right))

    @property
    def flips(self) -> list[tuple[int, ...]]:
        """The flipped dims of each pass after the plain one (dim 2: the left-right axis)."""
        combos = [d for k in range(1, 4) for d in itertools.combinations((2, 3, 4), k)]
        return [d for d in combos if self.flip_left_right or 2 not in d]

    def passes(self, batch: torch.Tensor) -> Iterator[torch.Tensor]:
        """Each pass's logits in the batch's own orientation (flipped back, left/right channels
        swapped where axis 0 was flipped): the plain pass first, then :attr:`flips` in order."""
        yield self.predict(batch)
        swap = None if self.swap_channels is None else list(self.swap_channels)
        for dims in self.flips:
            flipped = torch.flip(self.predict(torch.flip(batch, dims)), dims)
            if 2 in dims and swap is not None:
                if len(swap) != flipped.shape[1]:
                    raise ValueError(f"swap_channels has {len(swap)} channels, the logits {flipped.shape[1]}")
                flipped = flipped[:, swap]
            yield flipped

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        passes = self.passes(batch)
        out = next(passes)
        for flipped in passes:
            out = out + flipped
        return out / (len(self.flips) + 1)


def window_passes(predict: WindowPredictor, batch: torch.Tensor) -> Iterator[torch.Tensor]:
    """The logits of each pass ``predict`` averages (:meth:`Mirroring.passes`; one pass if it does not mirror)."""
    if isinstance(predict, Mirroring):
        yield from predict.passes(batch)
    else:
        yield predict(batch)


def window_predictor(
    network: torch.nn.Module,
    infer: InferConfig,
    device: str | torch.device,
    swap_channels: Sequence[int] | None = None,
    flip_left_right: bool = True,
) -> WindowPredictor:
    """What the sliding window calls: ``network`` under the ``infer`` section's autocast and
    layout, mirrored (:class:`~brainseg.infer.mirroring.Mirroring`) if ``infer.mirror``."""
    forward = NetworkForward(network, torch.device(device), infer.amp, infer.channels_last)
    if not infer.mirror:
        return forward
    return Mirroring(forward, None if swap_channels is None else tuple(swap_channels), flip_left_right)
