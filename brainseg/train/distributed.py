"""DistributedDataParallel plumbing for ``torchrun`` (NCCL on GPUs, gloo on CPU).

How the ranks stay in step, and how a failure on one of them ends all of them:

* The process group waits :data:`PROCESS_GROUP_TIMEOUT` (an hour) at a collective
  before giving up, not the backend's default (10 minutes for NCCL): preprocessing a
  rank's share of a large data set, or validating it, may take that long.
* Work that may fail on one rank only (its share of the cache, its validation cases,
  rank 0's checkpoint and log writing) runs inside :func:`together`. At its end every
  rank tells the others whether it failed (one all-reduce, which is also the barrier
  that ends the phase). If any did, all raise: each distinct error once, as its
  own one-line :class:`~brainseg.errors.BrainsegError` on the lowest rank that had it,
  and a quiet :class:`PeerFailure` everywhere else, so the CLI prints the error line
  once and every rank exits non-zero at once, not at the timeout.
* Inside a training step the ranks meet in DDP's gradient all-reduce and in
  :func:`step_consensus` (one all-reduce per step: the skip decision for a non-finite
  loss or gradient, rank 0's stop flag and rank 0's clock for the learning rate). A
  rank that dies there closes its connections; the others' collective then fails
  (:func:`lost_peer` turns that into one line) and torchrun stops the rest.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from brainseg.errors import BrainsegError, one_line
from brainseg.runtime import DistInfo, torchrun_env

log = logging.getLogger(__name__)

#: How long a rank waits for the others at a collective (barrier, all-reduce) before the
#: process group gives up with a timeout error.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=60)


class PeerFailure(BrainsegError):
    """This rank stops because another rank failed. ``quiet``: that rank reports the error
    itself (the CLI then exits non-zero without printing it again)."""

    def __init__(self, message: str, quiet: bool = True):
        super().__init__(message)
        self.quiet = quiet


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes in the environment (if any)."""
    info = torchrun_env()
    if not info.enabled:
        return info
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=PROCESS_GROUP_TIMEOUT)
    return info


def wrap(model: torch.nn.Module, device: torch.device, info: DistInfo) -> torch.nn.Module:
    """``model`` in :class:`DistributedDataParallel` under torchrun (itself without)."""
    if not info.enabled:
        return model
    for p in model.parameters():
        # A channels-last 1x1x1 kernel has strides its gradient does not have (equivalent, the
        # dims are 1); DDP would warn on every rank that this "may impair performance".
        if p.dim() == 5 and tuple(p.shape[2:]) == (1, 1, 1):
            p.data = p.data.clone(memory_format=torch.contiguous_format)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _device(info: DistInfo) -> torch.device:
    """Where collectives put their tensors: the current GPU under NCCL, else the CPU."""
    if info.enabled and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def lost_peer(exc: BaseException) -> PeerFailure:
    """A collective that failed because another rank went away, as one printed line."""
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return PeerFailure(f"lost contact with another rank, which has stopped ({first})", quiet=False)


def _raise_together(error: BaseException | None, info: DistInfo, what: str) -> None:
    """The failure handling of :func:`together` (called on every rank)."""
    try:
        flag = torch.tensor([0 if error is None else 1], dtype=torch.int32, device=_device(info))
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if not flag.item():
            return
        messages: list = [None] * info.world_size
        dist.all_gather_object(messages, None if error is None else one_line(str(error) or type(error).__name__))
    except (RuntimeError, dist.DistError) as exc:  # the other side is gone
        if error is not None:
            raise error from None
        raise lost_peer(exc) from None
    failed = [r for r, m in enumerate(messages) if m is not None]
    if error is not None and messages.index(messages[info.rank]) == info.rank:
        raise error  # the first rank with this error reports it
    if error is not None:
        raise PeerFailure(f"rank {info.rank}: {messages[info.rank]} (reported by another rank)") from error
    ranks = ", ".join(str(r) for r in failed)
    raise PeerFailure(f"rank {info.rank} stops: rank(s) {ranks} failed while {what}")


@contextlib.contextmanager
def together(info: DistInfo, what: str) -> Iterator[None]:
    """Run the block on every rank; when it fails on any rank, raise on every rank.

    The end of the block is a barrier. ``what`` says what the ranks were doing
    ("preprocessing", "validating", ...), for the line a stopping rank logs."""
    if not info.enabled:
        yield
        return
    error: Exception | None = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - every error has to reach the other ranks
        error = exc
    _raise_together(error, info, what)


def stop_together(info: DistInfo, message: str) -> None:
    """Raise ``message`` on every rank after a decision all ranks took together (the
    same step): a :class:`BrainsegError` on rank 0, a quiet :class:`PeerFailure` elsewhere."""
    if info.is_main:
        raise BrainsegError(message)
    raise PeerFailure(f"rank {info.rank}: {message}")


def step_consensus(nonfinite: bool, stop: bool, clock: float, info: DistInfo) -> tuple[bool, bool, float]:
    """One all-reduce per step: (any rank saw a non-finite loss or gradient, rank 0's stop
    flag, rank 0's clock in seconds). Without torchrun: the values as given."""
    if not info.enabled:
        return nonfinite, stop, clock
    main = info.is_main
    values = [1.0 if nonfinite else 0.0, 1.0 if (stop and main) else 0.0, clock if main else 0.0]
    nonfinite_any, stop_main, clock_main = sum_across_ranks(values, info)
    return nonfinite_any > 0, stop_main > 0, clock_main


def sum_across_ranks(values: list[float], info: DistInfo) -> list[float]:
    """Element-wise sums of ``values`` over all ranks (float64; the same on every rank)."""
    if not info.enabled or not values:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=_device(info))
    try:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    except (RuntimeError, dist.DistError) as exc:
        raise lost_peer(exc) from None
    return [float(v) for v in t.tolist()]


def cleanup(info: DistInfo) -> None:
    """Leave the process group (on every exit path: gloo aborts a process that exits with
    its group still open, "terminate called without an active exception")."""
    if info.enabled and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as exc:  # noqa: BLE001 - teardown must not hide the real error
            log.debug("destroying the process group: %s", exc)
