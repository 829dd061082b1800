"""The one place that builds our checkpoint dicts (the trainer, the demo and the official
converter all go through :func:`make_checkpoint`); reading and rebuilding live in
:mod:`autoscale.models.registry` (``load_checkpoint``, ``build_from_checkpoint``).

A model checkpoint::

    {"format": "autoscale-checkpoint", "version": 1, "variant": "regression" | "localization",
     "model": {"name": <registered FPN name>, "kwargs": {...}}, "state_dict": {...},
     "l2s_state_dict": {...} | None, "l2s": {"head", "bound", "pool"} | None,
     "normalization": {"mean": [r, g, b], "std": [r, g, b]}, ...extra keys}

``normalization``: the input normalisation the network expects, in units of [0, 1] RGB
(``x = (rgb / 255 - mean) / std``); predict, evaluate and export apply it.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from autoscale.models.init import fold_output_scale, unwrap_counter
from autoscale.models.registry import CHECKPOINT_FORMAT, CHECKPOINT_VERSION

__all__ = ["make_checkpoint", "cpu_state_dict", "plain_counter"]


def cpu_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU copies of ``module``'s state (never shares storage with the live module)."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def plain_counter(counter: nn.Module) -> nn.Module:
    """The bare FPN behind a (DDP / output-scaled) training counter, with any output factor folded
    into a copy of its weights; the live module is never modified."""
    import copy

    fpn, factor = unwrap_counter(counter)
    return fold_output_scale(copy.deepcopy(fpn), factor) if factor != 1.0 else fpn


def make_checkpoint(
    counter: nn.Module | dict[str, torch.Tensor],
    l2s: nn.Module | dict[str, torch.Tensor] | None,
    *,
    variant: str,
    model_name: str,
    model_kwargs: dict[str, Any],
    l2s_config: dict[str, Any] | None = None,
    normalization: tuple[Any, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A checkpoint dict of our format (module docstring) from a counter and an optional L2S.

    ``counter`` / ``l2s``: modules (a training counter is unwrapped and its output factor folded:
    see :func:`plain_counter`) or ready state dicts. ``normalization`` defaults to the counter's
    ``normalization`` attribute. ``extra`` keys (pipeline, config, method, metrics, ...) are added
    as they are.
    """
    if isinstance(counter, nn.Module):
        fpn = plain_counter(counter)
        state = cpu_state_dict(fpn)
        if normalization is None:
            normalization = getattr(fpn, "normalization", None)
    else:
        state = counter
    l2s_state = None
    if l2s is not None:
        l2s_state = cpu_state_dict(l2s) if isinstance(l2s, nn.Module) else l2s
        if l2s_config is None and isinstance(l2s, nn.Module):
            l2s_config = {"head": l2s.head, "bound": l2s.bound, "pool": l2s.pool}
    ck: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "variant": variant,
        "model": {"name": model_name, "kwargs": dict(model_kwargs)},
        "state_dict": state, "l2s_state_dict": l2s_state,
        "l2s": dict(l2s_config) if l2s_state is not None and l2s_config is not None else None,
    }
    if normalization is not None:
        ck["normalization"] = {"mean": [float(v) for v in normalization[0]], "std": [float(v) for v in normalization[1]]}
    ck.update(extra)
    return ck
