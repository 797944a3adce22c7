"""Inference-time rewrites of a network: the same function, computed faster.

Both return a *view* of the model (shallow copies of the modules, parameters shared
with it; the model itself is never modified); :func:`inference_network` applies them once,
to a copy, where a model is made ready for inference:

* :func:`fuse_instance_norm`: every ``InstanceNorm3d -> LeakyReLU`` pair as one
  :class:`InstanceNormLeakyReLU` that keeps the channels-last layout (CPU);
* :func:`fold_batch_norm`: every ``Conv3d -> BatchNorm3d`` pair (eval mode) as one
  convolution.

tests/test_fast_paths.py holds them to the plain modules.
"""

from __future__ import annotations

import copy
from typing import TypeGuard

import torch
import torch.nn.functional as F
from torch import nn

from brainseg.config import Amp


class InstanceNormLeakyReLU(nn.Module):
    """``InstanceNorm3d`` (statistics of each sample, no running statistics) then ``LeakyReLU``, as one
    module that keeps the input's memory layout.

    The same function as the two modules it replaces, computed differently: PyTorch's
    instance norm makes a contiguous copy of a channels-last input, normalises it as a
    batch norm and copies back; here the mean and variance (two passes, float32, like
    PyTorch's) are reduced over the voxels of the channels-last view directly and the
    affine map is one ``addcmul``, which saves the two layout copies on the CPU; outputs
    agree with the plain modules to float rounding.
    It shares the norm's parameters (nothing is copied, later weight updates are seen).
    """

    def __init__(self, norm: nn.InstanceNorm3d, negative_slope: float | None):
        super().__init__()
        self.norm = norm
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        if x.is_contiguous(memory_format=torch.channels_last_3d):
            voxels, dim = x.permute(0, 2, 3, 4, 1).reshape(n, -1, c), 1
        else:
            voxels, dim = x.reshape(n, c, -1), 2
        mean = voxels.mean(dim, keepdim=True)
        centred = voxels - mean
        var = centred.square_().mean(dim)
        scale = torch.rsqrt(var + self.norm.eps)
        if self.norm.weight is not None:
            scale = scale * self.norm.weight
        shift = -mean.squeeze(dim) * scale
        if self.norm.bias is not None:
            shift = shift + self.norm.bias
        y = torch.addcmul(shift.view(n, c, 1, 1, 1), x, scale.view(n, c, 1, 1, 1))
        if self.negative_slope is not None:
            y = F.leaky_relu_(y, self.negative_slope)
        return y


def _plain_instance_norm(module: nn.Module | None) -> TypeGuard[nn.InstanceNorm3d]:
    return isinstance(module, nn.InstanceNorm3d) and not module.track_running_stats


def _rewrite_pairs(model: nn.Module, rule) -> nn.Module:
    """A shallow copy of ``model`` in which ``rule(child, next_child)`` may replace each child of a
    ``Sequential`` (and its successor): ``rule`` returns ``None`` (keep the child), ``(module, False)``
    (replace the child) or ``(module, True)`` (replace the child, the successor becomes Identity).
    Unreplaced modules and their parameters are shared with ``model``, which is not modified."""

    def rebuild(module: nn.Module) -> nn.Module:
        clone = copy.copy(module)
        children = list(module._modules.items())
        new: dict[str, nn.Module | None] = {}
        i = 0
        while i < len(children):
            name, child = children[i]
            nxt = children[i + 1][1] if i + 1 < len(children) else None
            done = rule(child, nxt) if isinstance(module, nn.Sequential) else None
            if done is None:
                new[name] = rebuild(child) if child is not None else None
                i += 1
                continue
            new[name] = done[0]
            if done[1]:
                new[children[i + 1][0]] = nn.Identity()
            i += 2 if done[1] else 1
        clone._modules = new  # a new dict: the original's children are untouched
        return clone

    return rebuild(model)


def fuse_instance_norm(model: nn.Module) -> nn.Module:
    """A view of ``model`` for inference with every ``InstanceNorm3d -> LeakyReLU`` pair of a
    ``Sequential`` computed by one :class:`InstanceNormLeakyReLU`.

    The modules are shallow copies: parameters and buffers are shared with ``model``
    (moving or updating it is seen here), ``model`` itself is not modified. A model
    without such pairs is returned as it is.
    """
    if not any(_plain_instance_norm(m) for m in model.modules()):
        return model

    def rule(child: nn.Module, nxt: nn.Module | None):
        if not _plain_instance_norm(child):
            return None
        if isinstance(nxt, nn.LeakyReLU):
            return InstanceNormLeakyReLU(child, nxt.negative_slope), True
        return InstanceNormLeakyReLU(child, None), False

    return _rewrite_pairs(model, rule)


def _foldable_batch_norm(conv: nn.Conv3d, norm: nn.BatchNorm3d) -> bool:
    return (
        type(conv) is nn.Conv3d
        and norm.track_running_stats
        and norm.running_mean is not None
        and norm.running_var is not None
        and norm.num_features == conv.out_channels
    )


def _three(values: tuple[int, ...]) -> tuple[int, int, int]:
    a, b, c = values
    return a, b, c


@torch.no_grad()
def folded_conv(conv: nn.Conv3d, norm: nn.BatchNorm3d) -> nn.Conv3d:
    """One ``Conv3d`` computing ``norm(conv(x))`` with the norm's running statistics (eval mode).

    ``scale = gamma / sqrt(running_var + eps)`` multiplies each output channel's kernel;
    the bias becomes ``(bias - running_mean) * scale + beta``. New tensors (a snapshot
    of the current values), with the kernel's memory format."""
    mean, var = norm.running_mean, norm.running_var
    if mean is None or var is None:
        raise ValueError("a batch norm without running statistics cannot be folded")
    scale = torch.rsqrt(var.float() + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.float()
    bias = conv.bias.float() if conv.bias is not None else torch.zeros_like(scale)
    bias = (bias - mean.float()) * scale
    if norm.bias is not None:
        bias = bias + norm.bias.float()
    out = nn.Conv3d(
        conv.in_channels,
        conv.out_channels,
        _three(conv.kernel_size),
        stride=_three(conv.stride),
        padding=conv.padding if isinstance(conv.padding, str) else _three(conv.padding),
        dilation=_three(conv.dilation),
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    fmt = (
        torch.channels_last_3d
        if conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
        else torch.contiguous_format
    )
    weight = (conv.weight.float() * scale.view(-1, 1, 1, 1, 1)).to(conv.weight.dtype)
    out.weight = nn.Parameter(weight.contiguous(memory_format=fmt), requires_grad=False)
    out.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
    return out.eval()


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """A view of ``model`` for inference in which every ``Conv3d -> BatchNorm3d`` pair of a
    ``Sequential`` is one convolution (:func:`folded_conv`): the norm costs nothing.

    Only for a model in eval mode (running statistics); a model in training mode, or one
    without such pairs, is returned as it is. The folded convolutions are a snapshot:
    build the view again after the weights change. Other modules are shared with
    ``model``, which is not modified.
    """
    if model.training or not any(isinstance(m, nn.BatchNorm3d) for m in model.modules()):
        return model

    def rule(child: nn.Module, nxt: nn.Module | None):
        if isinstance(child, nn.Conv3d) and isinstance(nxt, nn.BatchNorm3d) and _foldable_batch_norm(child, nxt):
            return folded_conv(child, nxt), True
        return None

    return _rewrite_pairs(model, rule)


def inference_network(
    model: nn.Module, device: str | torch.device = "cpu", channels_last: bool = False, amp: Amp = "none"
) -> nn.Module:
    """A new module computing ``model`` for inference; ``model`` itself is not changed.

    A copy of ``model`` on ``device`` in eval mode, in the channels-last layout if asked (the
    convolution weights in the activations' layout too: oneDNN's Conv3d is slower with
    channels-last inputs and contiguous weights), with its batch norms folded into the
    convolutions before them (:func:`fold_batch_norm`) and, on the CPU in float32, its instance
    norms computed without layout copies (:func:`fuse_instance_norm`). ``amp``: the precision the
    network will run in (``brainseg.runtime.effective_amp``); under CPU bf16 autocast the plain
    norms are faster (1.8x the float32 network against 1.0x with the fused ones), and GPUs get
    the norms as they are.
    """
    device = torch.device(device)
    network = copy.deepcopy(model).to(device).eval()
    if channels_last:
        network.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]  # (missing from the stubs)
    network = fold_batch_norm(network)
    return fuse_instance_norm(network) if device.type == "cpu" and amp == "none" else network
