"""The Bayesian-loss counter, BL (Ma, Wei, Hong and Gong, "Bayesian Loss for Crowd Count
Estimation with Point Supervision", ICCV 2019), a Table 9 counter of the AutoScale paper.

BL is a loss (:func:`autoscale.losses.bayesian_loss`, ``pipeline.density_loss: bayesian``) trained
on a plain network; this is that network (BL paper §5 "Implementation details" and the authors'
released ``vgg19``): VGG19's ``features`` without the last max-pool (all 16 convolutions, 4 pools:
stride 16, :class:`~autoscale.models.vgg.VGGFeatures`), bilinear x2 up-sampling
(``align_corners=True``, the code's ``upsample_bilinear``) to stride 8, the regression head
``reg_layer`` = 3x3 conv 512 -> 256 + ReLU, 3x3 conv 256 -> 128 + ReLU, 1x1 conv 128 -> 1, and the
absolute value (non-negative density). 21,499,457 parameters at width 1 (hand count in
``tests/test_counters.py``: VGG19's 20,024,384 convolution parameters + 1,475,073).

``backbone="vgg16"`` is allowed (our extension; 13 convolutions). The L2S feature is the head's
128-channel map (stride 8). Inputs are zero-padded to a multiple of 16. State-dict names:
``backbone.features.N`` (torchvision indices), ``reg_layer.{0,2,4}``.
"""
from __future__ import annotations

from os import PathLike
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autoscale.models.counter import DensityCounter, build_counter
from autoscale.models.fpn import VGG_BACKBONES
from autoscale.models.registry import CounterSpec, Weights, register_model
from autoscale.models.vgg import VGGFeatures, scaled

__all__ = ["BLNet", "bl_regression"]


class BLNet(DensityCounter):
    """The BL network (module docstring): density at stride 8, people per 8x8 cell."""

    output_stride = 8
    input_multiple = 16
    output_conv = "reg_layer.4"

    def __init__(self, backbone: str = "vgg19", width: float = 1.0):
        super().__init__()
        if backbone not in VGG_BACKBONES:
            raise ValueError(f"BL's network is a VGG: backbone must be one of {VGG_BACKBONES}, got {backbone!r}")
        self.width = float(width)
        self.backbone = VGGFeatures(backbone, width, stages=5)
        c1, c2 = scaled(256, width), scaled(128, width)
        self.reg_layer = nn.Sequential(
            nn.Conv2d(self.backbone.channels, c1, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c2, 1, 1),
        )
        self.feature_channels = c2

    def maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.backbone(x)
        x = F.interpolate(x, size=(2 * x.shape[-2], 2 * x.shape[-1]), mode="bilinear", align_corners=True)
        feature = self.reg_layer[:4](x)
        return torch.abs(self.reg_layer[4](feature)), feature


def _bl(**kwargs: Any) -> BLNet:
    return build_counter(BLNet, name="bl_regression", **kwargs)


@register_model("bl_regression", counter=CounterSpec("regression", VGG_BACKBONES))
def bl_regression(*, backbone: str = "vgg19", width: float = 1.0,
                  weights: Weights | str | PathLike[str] | None = None, imagenet: str | PathLike[str] | None = None,
                  official_init: bool = False, init: str = "official") -> BLNet:
    """The BL network on ``backbone`` (VGG19, paper; VGG16); ``imagenet``: a local torchvision VGG
    file (``vgg19-dcbe5e0e.pth``; the BL paper starts from ImageNet); ``weights``: our checkpoint.
    Train it with ``pipeline.density_loss: bayesian``."""
    return _bl(backbone=backbone, width=width, weights=weights, imagenet=imagenet, official_init=official_init, init=init)
