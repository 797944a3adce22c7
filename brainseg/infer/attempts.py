"""Where the sliding window's work runs, and what to try when a GPU runs out of memory.

:func:`inference_attempts` lists the (windows per pass, accumulator device) settings to try in
order and :func:`run_with_oom_fallback` tries them; :func:`accumulators_fit_on_gpu` decides where
the accumulators of a case start.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

T = TypeVar("T")
#: One inference attempt: (windows per forward pass, device of the accumulators).
Attempt = tuple[int, torch.device]


def accumulators_fit_on_gpu(device: torch.device, num_classes: int, padded_shape: Sequence[int]) -> bool:
    """Whether sliding-window accumulators of this size belong on ``device`` (a GPU).

    Estimate: classes x padded voxels x 4 bytes x 2 (scores and their softmax / the
    inverted copy) must stay under half of the GPU's free memory.
    """
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    needed = num_classes * math.prod(int(s) for s in padded_shape) * 4 * 2
    return needed < free / 2


def inference_attempts(device: torch.device, batch_windows: int, output_device: torch.device) -> list[Attempt]:
    """What to try, in order: as configured; on a CUDA OOM one window per pass; then output on the CPU."""
    if device.type != "cuda":
        return [(batch_windows, output_device)]
    cpu = torch.device("cpu")
    attempts: list[Attempt] = []
    for attempt in ((batch_windows, output_device), (1, output_device), (1, cpu)):
        if attempt not in attempts:
            attempts.append(attempt)
    return attempts


def run_with_oom_fallback(
    step: Callable[[int, torch.device], T],
    attempts: Sequence[Attempt],
    log: Callable[[str], None] | None = None,
) -> T:
    """Run ``step(batch_windows, output_device)`` for each attempt until one does not run out of GPU memory.

    The last attempt's ``torch.cuda.OutOfMemoryError`` propagates.
    """
    for i, (batch_windows, output_device) in enumerate(attempts):
        try:
            return step(batch_windows, output_device)
        except torch.cuda.OutOfMemoryError:
            if i == len(attempts) - 1:
                raise
        # Outside the except block, so the failed attempt's tensors can be freed.
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if log is not None:
            nxt_bw, nxt_dev = attempts[i + 1]
            log(f"out of GPU memory; retrying with batch_windows={nxt_bw}, output on {nxt_dev}")
    raise ValueError("no inference attempts given")
