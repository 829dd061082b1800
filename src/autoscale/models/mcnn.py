"""MCNN: the multi-column CNN (Zhang et al., "Single-Image Crowd Counting via Multi-Column
Convolutional Neural Network", CVPR 2016), a Table 9 counter of the AutoScale paper.

Architecture (MCNN paper §2.2, Fig. 2): three columns of four convolutions with filters of
decreasing size - large 9/7/7/7 with 16/32/16/8 channels, medium 7/5/5/5 with 20/40/20/10,
small 5/3/3/3 with 24/48/24/12 - each convolution followed by ReLU, 2x2 max-pooling (stride 2)
after the first two; the 30 output channels are merged by a 1x1 convolution into the density map
at stride 4. 'Same' padding (``k // 2``) everywhere. Trained from scratch (no backbone).

Choices: RGB input (3 channels, as C^3-Framework's PyTorch ``MCNN``; the widely used
svishwa/crowdcount-mcnn reads grey images) normalised with ImageNet statistics; the merging 1x1
convolution is linear, as the paper's Fig. 2 draws it. (That reproduction's ``Conv2d`` wrapper
puts a ReLU after it too; trained from scratch with Kaiming init and Adam at 1e-3 on our synthetic
crowds, that ReLU output died within the first epoch - every pixel 0, loss constant - so we keep
the paper's linear output.)
Parameters: 133,705 (hand count in ``tests/test_counters.py``; the MCNN paper gives none, the
AutoScale paper's ~0.13 M).

State-dict names: ``branch1.{0,3,5,7}``, ``branch2.*``, ``branch3.*`` (convolutions at the
Sequential indices of conv, ReLU, pool), ``fuse``. The L2S feature is the concatenated columns
(30 channels at stride 4), what ``fuse`` reads.
"""
from __future__ import annotations

from os import PathLike
from typing import Any

import torch
from torch import nn

from autoscale.models.counter import DensityCounter, build_counter
from autoscale.models.registry import CounterSpec, Weights, register_model
from autoscale.models.vgg import scaled

__all__ = ["MCNN", "MCNN_COLUMNS", "mcnn_regression"]

#: (kernel size, output channels) of the four convolutions of each column (MCNN paper Fig. 2).
MCNN_COLUMNS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((9, 16), (7, 32), (7, 16), (7, 8)),
    ((7, 20), (5, 40), (5, 20), (5, 10)),
    ((5, 24), (3, 48), (3, 24), (3, 12)),
)


class MCNN(DensityCounter):
    """MCNN (module docstring): density at stride 4, people per 4x4 cell; any input size."""

    output_stride = 4
    input_multiple = 4
    output_conv = "fuse"

    def __init__(self, width: float = 1.0):
        super().__init__()
        self.width = float(width)
        for c, column in enumerate(MCNN_COLUMNS, start=1):
            self.add_module(f"branch{c}", _column(column, width))
        self.feature_channels = sum(scaled(col[-1][1], width) for col in MCNN_COLUMNS)
        self.fuse = nn.Conv2d(self.feature_channels, 1, 1)

    def maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature = torch.cat([self.branch1(x), self.branch2(x), self.branch3(x)], 1)
        return self.fuse(feature), feature


def _column(spec: tuple[tuple[int, int], ...], width: float) -> nn.Sequential:
    """conv k1 + ReLU, pool, conv k2 + ReLU, pool, conv k3 + ReLU, conv k4 + ReLU ('same' padding)."""
    layers: list[nn.Module] = []
    cin = 3
    for i, (k, c) in enumerate(spec):
        cout = scaled(c, width)
        layers += [nn.Conv2d(cin, cout, k, padding=k // 2), nn.ReLU(inplace=True)]
        if i < 2:
            layers.append(nn.MaxPool2d(2, 2))
        cin = cout
    return nn.Sequential(*layers)


def _mcnn(**kwargs: Any) -> MCNN:
    return build_counter(MCNN, name="mcnn_regression", **kwargs)


@register_model("mcnn_regression", counter=CounterSpec("regression"))
def mcnn_regression(*, width: float = 1.0, weights: Weights | str | PathLike[str] | None = None,
                    imagenet: None = None, official_init: bool = False, init: str = "official") -> MCNN:
    """MCNN (Zhang et al. 2016), trained from scratch: no ``backbone`` and no ImageNet weights."""
    return _mcnn(width=width, weights=weights, imagenet=imagenet, official_init=official_init, init=init)
