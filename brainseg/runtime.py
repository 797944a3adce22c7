"""Where the work runs: torchrun's environment, the device, mixed precision, seeds.

The one place that reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, turns a ``--device``
string into a :class:`torch.device`, opens an autocast context and seeds the RNGs;
training, inference and the benchmark all call these.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch

from brainseg.config import Amp
from brainseg.errors import BrainsegError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


@dataclass(frozen=True)
class DistInfo:
    """This process's place among torchrun's processes ((0, 1, 0) without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def torchrun_env() -> DistInfo:
    """``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as torchrun sets them, checked."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise BrainsegError("WORLD_SIZE, RANK and LOCAL_RANK must be integers") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise BrainsegError(f"invalid torchrun environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def check_device_spec(spec: str) -> str:
    """``spec`` when it names a device brainseg can use (``auto``, ``cpu``, ``cuda``, ``cuda:N``), else one clear error."""
    text = str(spec).strip()
    if text in ("auto", "cpu", "cuda"):
        return text
    if text.startswith("cuda:") and text[5:].isdigit():
        return text
    raise BrainsegError(f"device {spec!r}: expected {DEVICE_CHOICES}")


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> the local GPU if there is one, else the CPU; ``cuda`` -> ``cuda:LOCAL_RANK``."""
    spec = check_device_spec(spec)
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise BrainsegError(f"device {spec}: CUDA is not available on this machine")
    count = torch.cuda.device_count()
    index = device.index if device.index is not None else local_rank % count
    if index >= count:
        raise BrainsegError(f"device {spec}: only {count} GPU(s) visible")
    return torch.device("cuda", index)


#: CPU flags of native bfloat16 arithmetic (AVX-512 BF16, AMX): there bf16 convolutions run about
#: twice as fast as float32 (docs/benchmarks.md); elsewhere oneDNN emulates them, slower than float32.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this machine's CPU computes bfloat16 natively (Linux ``/proc/cpuinfo`` flags, and
    oneDNN's own bf16 check); False wherever that cannot be read."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace").split()
        supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (OSError, AttributeError, RuntimeError):
        return False
    return supported and any(flag in flags for flag in CPU_BF16_FLAGS)


def effective_amp(device: torch.device, amp: Amp, world_size: int = 1) -> Amp:
    """The precision ``amp`` (``train.amp``, ``infer.amp``) gives on ``device``: as asked on a GPU;
    on the CPU bf16 where the CPU computes it natively, else float32 (``none``; fp16 never).
    ``world_size``: a training's processes; CPU training under torchrun (gloo) stays float32, as
    bf16 autocast there gave non-finite gradients that one process on the same data did not."""
    if device.type == "cuda":
        return amp
    return "bf16" if amp == "bf16" and cpu_has_native_bf16() and world_size == 1 else "none"


def autocast(device: torch.device, amp: Amp):
    """An autocast context for ``amp`` as :func:`effective_amp` resolves it on ``device``
    (``none``: full float32)."""
    amp = effective_amp(device, amp)
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (the trainer's start; workers seed their own)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states() -> dict:
    """Python's, NumPy's and torch's global generator states, as weights-only-loadable data."""
    name, keys, pos, has_gauss, cached = cast(tuple, np.random.get_state(legacy=True))
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": int(version), "internal": list(internal), "gauss": gauss},
    }


def restore_rng_states(rng: dict) -> None:
    """Undo :func:`rng_states` (checkpoints from before the Python/NumPy states restore torch's only)."""
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    state = rng.get("numpy")
    if isinstance(state, dict) and "has_gauss" in state:
        keys = state["keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, int(state["pos"]), int(state["has_gauss"]), float(state["cached"])))
    state = rng.get("python")
    if isinstance(state, dict):
        random.setstate((int(state["version"]), tuple(int(v) for v in state["internal"]), state["gauss"]))
