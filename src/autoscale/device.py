"""The one device resolver (training and prediction) and the CPU bfloat16 check.

:func:`resolve_device` turns ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"`` or a
:class:`torch.device` into a device, or raises one :class:`~autoscale.errors.ConfigError` line
(unknown name, CUDA requested without a GPU).

:func:`cpu_has_native_bf16`: the CPU executes bfloat16 natively, i.e. oneDNN (mkldnn) is
available and the CPU has AVX512-BF16 or AMX-BF16 (torch's cpuinfo query
``torch.cpu._is_avx512_bf16_supported`` / ``_is_amx_tile_supported``; on torch builds without
these, the ``avx512_bf16`` / ``amx_bf16`` flags of ``/proc/cpuinfo``).
``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is not used: it is also true on plain AVX512
CPUs, where oneDNN emulates bf16 and is slower than fp32.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from autoscale.errors import ConfigError

__all__ = ["resolve_device", "cpu_has_native_bf16"]


def resolve_device(device: str | torch.device, what: str = "device") -> torch.device:
    """``cpu`` / ``cuda`` / ``cuda:N`` / ``auto`` (CUDA when available, else CPU) -> a torch device.

    ``what`` names the setting in the error (``"config key 'device'"``, ``"--device"``...).
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{what} must be cpu, cuda, cuda:N or auto, got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"{what} must be cpu, cuda, cuda:N or auto, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{what} is {str(device)!r} but CUDA is not available (use cpu)")
    return dev


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU runs bfloat16 natively through oneDNN (module docstring)."""
    if not torch.backends.mkldnn.is_available():
        return False
    cpu = getattr(torch, "cpu", None)
    try:
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())  # type: ignore[union-attr]
    except (AttributeError, RuntimeError):
        pass
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
