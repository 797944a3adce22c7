"""Where the work runs (``brainseg.runtime``): the precision ``train.amp`` / ``infer.amp`` give on each
device, and the autocast context that carries it out on a real convolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from brainseg.runtime import CPU_BF16_FLAGS, autocast, cpu_has_native_bf16, effective_amp

CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)


def cpu_flags() -> set[str]:
    try:
        return set(Path("/proc/cpuinfo").read_text(errors="replace").split())
    except OSError:
        return set()


def test_a_gpu_gets_the_precision_asked_for():
    assert [effective_amp(GPU, a) for a in ("bf16", "fp16", "none")] == ["bf16", "fp16", "none"]


def test_the_cpu_takes_bf16_only_where_it_computes_it_natively_and_never_fp16():
    native = cpu_has_native_bf16()
    assert native == (bool(cpu_flags() & set(CPU_BF16_FLAGS)) and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert effective_amp(CPU, "bf16") == ("bf16" if native else "none")
    assert effective_amp(CPU, "fp16") == effective_amp(CPU, "none") == "none"
    # CPU training under torchrun stays float32 (gloo DDP with bf16 autocast gave non-finite gradients);
    # a GPU's processes keep the precision asked for
    assert effective_amp(CPU, "bf16", world_size=2) == "none" and effective_amp(GPU, "bf16", world_size=2) == "bf16"


def test_autocast_runs_a_convolution_in_the_effective_precision():
    conv = torch.nn.Conv3d(1, 4, 3, padding=1)
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        reference = conv(x)
        with autocast(CPU, "none"):
            full = conv(x)
        with autocast(CPU, "bf16"):
            mixed = conv(x)
    assert full.dtype == torch.float32 and torch.equal(full, reference)
    if not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16: bf16 runs in float32 (the assertion above)")
    assert mixed.dtype == torch.bfloat16
    # bf16 keeps 8 bits of mantissa: close to float32, not equal
    assert not torch.equal(mixed.float(), reference)
    torch.testing.assert_close(mixed.float(), reference, atol=0.05, rtol=0.02)
