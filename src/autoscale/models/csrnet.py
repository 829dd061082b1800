"""CSRNet (Li, Zhang and Chen, "CSRNet: Dilated Convolutional Neural Networks for Understanding
the Highly Congested Scenes", CVPR 2018), a Table 9 counter of the AutoScale paper.

Architecture (CSRNet paper §3.1, Table 3 configuration B, the one the paper adopts): the front end
is VGG16's first ten convolutional layers (conv1_1..conv4_3, 3x3, with its three 2x2 max-pools:
stride 8; :class:`~autoscale.models.vgg.VGGFeatures`, torchvision indices, so ImageNet weights
load key-for-key); the back end is six 3x3 convolutions with dilation 2 (padding 2) and
512, 512, 512, 256, 128, 64 channels, each with ReLU; a 1x1 convolution gives the density map at
stride 8 (no final activation, as the authors' code). 16,263,489 parameters at width 1 (the
paper's 16.26 M; hand count in ``tests/test_counters.py``).

``backbone="vgg19"`` takes VGG19's first twelve convolutions (conv1_1..conv4_4), the same cut
before pool4 (our extension). The L2S feature is the back end's output (64 channels, stride 8).
State-dict names: ``backbone.features.N``, ``backend.N`` (convolutions at 0, 2, 4, ...),
``output_layer``. :func:`make_backend` is shared with CAN and SFCN.
"""
from __future__ import annotations

from os import PathLike
from typing import Any

import torch
from torch import nn

from autoscale.models.counter import DensityCounter, build_counter
from autoscale.models.fpn import VGG_BACKBONES
from autoscale.models.registry import CounterSpec, Weights, register_model
from autoscale.models.vgg import VGGFeatures, scaled

__all__ = ["BACKEND", "CSRNet", "csrnet_regression", "make_backend", "vgg_front_end"]

#: the dilated back end of configuration B (CSRNet paper Table 3): channels, all 3x3, dilation 2.
BACKEND = (512, 512, 512, 256, 128, 64)


def make_backend(in_channels: int, width: float, *, channels: tuple[int, ...] = BACKEND, dilation: int = 2,
                 batch_norm: bool = False) -> nn.Sequential:
    """3x3 convolutions with ``dilation`` (padding = dilation: size kept), each + (BatchNorm) + ReLU."""
    layers: list[nn.Module] = []
    cin = in_channels
    for c in channels:
        cout = scaled(c, width)
        layers.append(nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation))
        if batch_norm:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU(inplace=True))
        cin = cout
    return nn.Sequential(*layers)


def vgg_front_end(model: str, backbone: str, width: float) -> VGGFeatures:
    """The first 10 convolutions of a VGG (4 stages, stride 8), the front end that CSRNet, CAN and
    SFCN share; ``model`` names the counter in the error for a backbone that is not a VGG."""
    if backbone not in VGG_BACKBONES:
        raise ValueError(f"{model}'s front end is a VGG: backbone must be one of {VGG_BACKBONES}, got {backbone!r}")
    return VGGFeatures(backbone, width, stages=4)


class CSRNet(DensityCounter):
    """CSRNet configuration B (module docstring): density at stride 8, people per 8x8 cell."""

    output_stride = 8
    input_multiple = 8
    output_conv = "output_layer"

    def __init__(self, backbone: str = "vgg16", width: float = 1.0):
        super().__init__()
        self.width = float(width)
        self.backbone = vgg_front_end("CSRNet", backbone, width)
        self.backend = make_backend(self.backbone.channels, width)
        self.feature_channels = scaled(BACKEND[-1], width)
        self.output_layer = nn.Conv2d(self.feature_channels, 1, 1)

    def maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature = self.backend(self.backbone(x))
        return self.output_layer(feature), feature


def _csrnet(**kwargs: Any) -> CSRNet:
    return build_counter(CSRNet, name="csrnet_regression", **kwargs)


@register_model("csrnet_regression", counter=CounterSpec("regression", VGG_BACKBONES))
def csrnet_regression(*, backbone: str = "vgg16", width: float = 1.0,
                      weights: Weights | str | PathLike[str] | None = None, imagenet: str | PathLike[str] | None = None,
                      official_init: bool = False, init: str = "official") -> CSRNet:
    """CSRNet-B on ``backbone`` (VGG16, paper; VGG19); ``imagenet``: a local torchvision VGG file
    for the front end (the CSRNet paper initialises it from ImageNet); ``weights``: our checkpoint."""
    return _csrnet(backbone=backbone, width=width, weights=weights, imagenet=imagenet, official_init=official_init, init=init)
