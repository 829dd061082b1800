"""The one device resolver (training and prediction), the CPU bfloat16 check and the heap settings.

:func:`resolve_device` turns ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"`` or a
:class:`torch.device` into a device, or raises one :class:`~autoscale.errors.ConfigError` line
(unknown name, CUDA requested without a GPU).

:func:`cpu_has_native_bf16`: the CPU executes bfloat16 natively, i.e. oneDNN (mkldnn) is
available and the CPU has AVX512-BF16 or AMX-BF16 (torch's cpuinfo query
``torch.cpu._is_avx512_bf16_supported`` / ``_is_amx_tile_supported``; on torch builds without
these, the ``avx512_bf16`` / ``amx_bf16`` flags of ``/proc/cpuinfo``).
``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is not used: it is also true on plain AVX512
CPUs, where oneDNN emulates bf16 and is slower than fp32.

:func:`bounded_heap`: the malloc settings of the commands that count many images
(``autoscale predict``, ``evaluate``, ``serve``).
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import torch

from autoscale.errors import ConfigError

__all__ = ["HEAP_MMAP_THRESHOLD", "HEAP_TRIM_THRESHOLD", "bounded_heap", "cpu_has_native_bf16", "resolve_device"]


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


#: glibc malloc settings of the ``autoscale predict`` process (bytes), see :func:`bounded_heap`.
HEAP_MMAP_THRESHOLD = 32 << 20
HEAP_TRIM_THRESHOLD = 64 << 20


def bounded_heap() -> bool:
    """Fix glibc's malloc thresholds for the ``autoscale predict`` / ``evaluate`` / ``serve``
    process (``mallopt``): a block of at least :data:`HEAP_MMAP_THRESHOLD` gets its own mapping,
    returned to the system when freed, and free memory at the heap's top is returned once it
    exceeds :data:`HEAP_TRIM_THRESHOLD`. By default glibc moves both thresholds with the blocks
    freed, and a long video's peak memory crept up with its length; a 128 KiB threshold (this
    function until 2026-12-03) bounded it but mapped and page-faulted every activation afresh,
    image after image. Measured (Lite0, 768x1024 photos, 2 threads; a 5-minute 1080p video's
    peak, benchmarks/results/memory.md): 128 KiB 360 ms per photo, 1.03 GiB; glibc's defaults
    210 ms, 1.52 GiB; these thresholds 185 ms, 1.31-1.61 GiB (128 / 512 MiB: 166 ms, 1.92 GiB). A
    process-wide setting, so the library itself never calls it; an explicit
    ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` in the environment wins. Returns
    whether it was applied."""
    if (os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_")
            or not sys.platform.startswith("linux")):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        # M_MMAP_THRESHOLD = -3, M_TRIM_THRESHOLD = -1 (glibc malloc.h)
        return bool(libc.mallopt(-3, HEAP_MMAP_THRESHOLD)) and bool(libc.mallopt(-1, HEAP_TRIM_THRESHOLD))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
