"""Weight initialisation and output scaling of the counting networks.

* :func:`init_weights`: ``official`` (the authors' N(0, 0.01) convolutions, zero biases, BN 1/0)
  or ``kaiming`` (Kaiming-normal with ReLU gain: from scratch, a deep ReLU net without BN starts
  with vanishing activations under N(0, 0.01) and trains several times slower).
* :class:`ScaledCounter` / :func:`fold_output_scale`: a density map holds ~1e-3 people per pixel,
  far below what a freshly initialised network outputs comfortably. The trainer lets the network
  learn ``output_scale`` x density (``model.output_scale``) by wrapping it in a
  :class:`ScaledCounter` with factor ``1 / output_scale``; checkpoints then fold the factor into
  the output convolutions, so every saved model is a plain FPN predicting people per pixel.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from autoscale.models.fpn import FPNOutput

__all__ = ["INIT_SCHEMES", "init_weights", "ScaledCounter", "fold_output_scale", "unwrap_counter"]

INIT_SCHEMES = ("official", "kaiming")


def init_weights(module: nn.Module, scheme: Literal["official", "kaiming"] = "official") -> nn.Module:
    """Initialise every (transposed) convolution and BatchNorm of ``module`` in place.

    ``official``: Conv2d weights ~ N(0, 0.01) (ConvTranspose2d keeps torch's default), zero
    biases, BN weight 1 / bias 0. ``kaiming``: Conv2d and ConvTranspose2d Kaiming-normal (ReLU
    gain), zero biases, BN 1 / 0. Returns ``module``.
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"init scheme must be one of {INIT_SCHEMES}, got {scheme!r}")
    for m in module.modules():
        if isinstance(m, nn.Conv2d) or (scheme == "kaiming" and isinstance(m, nn.ConvTranspose2d)):
            if scheme == "official":
                nn.init.normal_(m.weight, std=0.01)
            else:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


class ScaledCounter(nn.Module):
    """Wraps a counter (an FPN or any counter of :mod:`autoscale.models.counter`) so every output
    map is multiplied by ``factor`` (regression training)."""

    def __init__(self, counter: nn.Module, factor: float):
        super().__init__()
        self.counter = counter
        self.factor = float(factor)
        self.feature_channels = counter.feature_channels

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.counter.normalization

    def forward(self, x: torch.Tensor, return_features: bool = False) -> FPNOutput:
        out = self.counter(x, return_features=return_features)
        f = self.factor
        return FPNOutput(out.final * f, [s * f for s in out.side], out.features, out.output_stride)


def fold_output_scale(fpn: nn.Module, factor: float) -> nn.Module:
    """Multiply a regression counter's outputs by ``factor`` in place. A counter with a
    ``scale_output_`` method (the counter interface, :mod:`autoscale.models.counter`) does it
    itself; for the FPN its ``dsn2..dsn5`` weights and biases and the ``dsn6`` bias are scaled
    (each side output is linear in its 1x1 head and ``dsn6`` is linear in the side outputs).
    Returns ``fpn``."""
    if hasattr(fpn, "scale_output_"):
        fpn.scale_output_(factor)
        return fpn
    with torch.no_grad():
        for name in ("dsn2", "dsn3", "dsn4", "dsn5"):
            conv = getattr(fpn, name)
            conv.weight.mul_(factor)
            conv.bias.mul_(factor)
        fpn.dsn6.bias.mul_(factor)
    return fpn


def unwrap_counter(counter: nn.Module) -> tuple[nn.Module, float]:
    """``(bare counter, output factor)`` of a counter possibly wrapped by DDP and/or :class:`ScaledCounter`."""
    counter = getattr(counter, "module", counter)
    if isinstance(counter, ScaledCounter):
        return getattr(counter.counter, "module", counter.counter), counter.factor
    return counter, 1.0
