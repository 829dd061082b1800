"""CAN (Liu, Salzmann and Fua, "Context-Aware Crowd Counting", CVPR 2019), a Table 9 counter of
the AutoScale paper.

Architecture (CAN paper §3.2-3.3 and the authors' released ``CANNet``): CSRNet's front end (VGG16
conv1_1..conv4_3, stride 8, :class:`~autoscale.models.vgg.VGGFeatures`) gives ``f_v``; the
contextual module (:class:`ContextualModule`) computes, for each scale ``j`` in (1, 2, 3, 6), the
scale-aware feature ``s_j`` = bilinear up-sampling of a 1x1 convolution (no bias) of ``f_v``
average-pooled to ``j x j`` cells (paper Eq. 1), its contrast ``f_v - s_j`` and a weight map
``w_j = sigmoid(W (f_v - s_j))`` with one shared 1x1 convolution ``W`` (paper Eq. 2-3 write
``s_j - f_v`` and a network per scale; we follow the released code, the difference is a sign and
weight sharing), and the contextual feature ``f_I = relu(B [sum_j w_j s_j / sum_j w_j | f_v])``
with a 1x1 bottleneck ``B`` from 2 x 512 to 512 channels (paper Eq. 4: the concatenation; the code's
order). The normalised weights ``w_j / sum_k w_k`` are computed as a softmax over the scales of
``log sigmoid(W (f_v - s_j))`` - the same function, but finite where every ``w_j`` underflows to 0
(the released code's 0 / 0 gave NaN after 74 steps from scratch at lr 1e-3 here). The decoder is CSRNet's dilated back end (512, 512, 512, 256, 128, 64; 3x3, dilation 2)
with BatchNorm after each convolution (the released code) and a 1x1 output convolution: density at
stride 8. Bilinear up-sampling uses ``align_corners=False`` (torch's default since the code's
release). 18,103,489 parameters at width 1 (hand count in ``tests/test_counters.py``: CSRNet's
16,263,489 + 4 x 512^2 scale convolutions + ``W`` 262,656 + ``B`` 524,800 + 3,968 BatchNorm
weights; the CAN paper gives no count).

The L2S feature is the back end's output (64 channels, stride 8). State-dict names:
``backbone.features.N``, ``context.scales.K.1``, ``context.weight_net``, ``context.bottleneck``,
``backend.N``, ``output_layer``.
"""
from __future__ import annotations

from os import PathLike
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autoscale.models.counter import DensityCounter, build_counter
from autoscale.models.csrnet import BACKEND, make_backend, vgg_front_end
from autoscale.models.fpn import VGG_BACKBONES
from autoscale.models.registry import CounterSpec, Weights, register_model
from autoscale.models.vgg import scaled

__all__ = ["CAN", "CONTEXT_SCALES", "ContextualModule", "can_regression"]

#: the pooling grids of the scale-aware features (CAN paper §3.2: S = 4 scales, 1, 2, 3, 6).
CONTEXT_SCALES = (1, 2, 3, 6)


class ContextualModule(nn.Module):
    """Contextual scale-aware features (module docstring): ``(B, C, h, w) -> (B, out, h, w)``."""

    def __init__(self, channels: int, out_channels: int, scales: tuple[int, ...] = CONTEXT_SCALES):
        super().__init__()
        self.scales = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d((j, j)), nn.Conv2d(channels, channels, 1, bias=False)) for j in scales)
        self.bottleneck = nn.Conv2d(2 * channels, out_channels, 1)
        self.weight_net = nn.Conv2d(channels, channels, 1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        h, w = feats.shape[-2:]
        scales = [F.interpolate(stage(feats), size=(h, w), mode="bilinear", align_corners=False) for stage in self.scales]
        # w_j / sum_k w_k with w_j = sigmoid(W (f_v - s_j)), as a softmax of log-sigmoids (no 0 / 0)
        logw = torch.stack([F.logsigmoid(self.weight_net(feats - s)) for s in scales])
        weights = torch.softmax(logw, dim=0)
        context = sum(s * weights[j] for j, s in enumerate(scales))
        return F.relu(self.bottleneck(torch.cat([context, feats], 1)))


class CAN(DensityCounter):
    """CAN (module docstring): density at stride 8, people per 8x8 cell."""

    output_stride = 8
    input_multiple = 8
    output_conv = "output_layer"

    def __init__(self, backbone: str = "vgg16", width: float = 1.0):
        super().__init__()
        self.width = float(width)
        self.backbone = vgg_front_end("CAN", backbone, width)
        c = self.backbone.channels
        self.context = ContextualModule(c, c)
        self.backend = make_backend(c, width, batch_norm=True)
        self.feature_channels = scaled(BACKEND[-1], width)
        self.output_layer = nn.Conv2d(self.feature_channels, 1, 1)

    def maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature = self.backend(self.context(self.backbone(x)))
        return self.output_layer(feature), feature


def _can(**kwargs: Any) -> CAN:
    return build_counter(CAN, name="can_regression", **kwargs)


@register_model("can_regression", counter=CounterSpec("regression", VGG_BACKBONES))
def can_regression(*, backbone: str = "vgg16", width: float = 1.0,
                   weights: Weights | str | PathLike[str] | None = None, imagenet: str | PathLike[str] | None = None,
                   official_init: bool = False, init: str = "official") -> CAN:
    """CAN on ``backbone`` (VGG16, paper; VGG19); ``imagenet``: a local torchvision VGG file for the
    front end; ``weights``: one of our checkpoints."""
    return _can(backbone=backbone, width=width, weights=weights, imagenet=imagenet, official_init=official_init, init=init)
