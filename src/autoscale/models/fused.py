"""oneDNN's fused convolution for bf16 inference on the CPU, shared by the backbones.

Under CPU autocast to bfloat16 and without autograd, a convolution followed by an elementwise
activation can run as one oneDNN primitive (``torch.ops.mkldnn._convolution_pointwise``, the op
inductor emits): bf16 input and weight, float32 bias, the activation as a post-op applied before
the output is written. The separate activation pass over the output goes; on VGG16's
full-resolution layers that pass (a 100 MB bf16 map each) was a fifth of the frame's time.

:data:`AVAILABLE`: torch has the op and this CPU runs its bf16 path (AVX512-BW/VL/DQ or
AVX-NE-CONVERT; on a plain AVX2 CPU it raises). :func:`active` says whether a tensor's next
convolution may use it; :func:`kept` holds a derived weight (folded, cast) between frames.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["AVAILABLE", "active", "conv", "kept"]

AVAILABLE = (hasattr(torch.ops.mkldnn, "_convolution_pointwise")
             and hasattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported")
             and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))


def active(x: torch.Tensor) -> bool:
    """True when a convolution of ``x`` may run fused: :data:`AVAILABLE`, a CPU tensor, no
    autograd, CPU autocast to bfloat16."""
    return (AVAILABLE and x.device.type == "cpu" and not torch.is_grad_enabled()
            and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)


def conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: Sequence[int],
         stride: Sequence[int], dilation: Sequence[int], groups: int, post: str = "none",
         scalars: Sequence[float] = ()) -> torch.Tensor:
    """``post(conv2d(x, weight, bias))`` as one oneDNN primitive: ``weight`` bf16, ``bias`` float32
    (or None), ``post`` one of oneDNN's post-op names (``"none"``, ``"relu"``, ``"hardtanh"``
    with ``scalars`` ``[min, max]``); the output is bf16."""
    return torch.ops.mkldnn._convolution_pointwise(
        x.to(torch.bfloat16), weight, bias, list(padding), list(stride), list(dilation), groups,
        post, list(scalars), "")


def kept(owner: nn.Module, slot: str, srcs: Sequence[torch.Tensor], tag: Any,
         make: Callable[[], Any]) -> Any:
    """``make()``, kept in ``owner.__dict__[slot]`` and made again only when ``tag`` differs or a
    tensor of ``srcs`` is modified in place or replaced (version counters and storage
    addresses: optimiser steps, ``load_state_dict``, ``.to()``). Inference tensors have no
    version counter: then nothing is kept."""
    try:
        key = (tag, *((t._version, t.data_ptr()) for t in srcs))
    except RuntimeError:
        key = None
    cache = owner.__dict__.get(slot)
    if key is not None and cache is not None and cache[0] == key:
        return cache[1]
    value = make()
    if key is not None:
        owner.__dict__[slot] = (key, value)
    return value
