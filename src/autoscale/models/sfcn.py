"""SFCN (Wang, Gao, Lin and Yuan, "Learning from Synthetic Data for Crowd Counting in the Wild",
CVPR 2019, the GCC paper), a Table 9 counter of the AutoScale paper.

Variant implemented: **SFCN with the VGG16 backbone**, the one of the AutoScale paper's Table 9
("SFCN* (VGG16)"; SFCN-dagger in its other tables is the ResNet-101 variant, not built here). The
GCC paper §4.1 describes SFCN as backbone + dilated layers + a spatial encoder + a 1x1 regression
layer + x8 up-sampling; the VGG16 layers follow the authors' released ``SFCN`` (GCC-SFCN /
C^3-Framework): VGG16 conv1_1..conv4_3 (stride 8, :class:`~autoscale.models.vgg.VGGFeatures`),
CSRNet's dilated back end (512, 512, 512, 256, 128, 64; 3x3, dilation 2, ReLU, no BatchNorm), the
spatial encoder of SCNN (Pan et al. AAAI 2018) on its 64 channels - :class:`SliceConv`
``convDU`` (rows top to bottom then bottom to top, each row plus a 1x9 convolution + ReLU of its
neighbour's result) and ``convLR`` (columns left to right and back, 9x1 convolutions) - and a 1x1
output convolution, linear as the GCC paper's "regression layer" (the released code puts a ReLU
after it; from scratch with Adam at 1e-3 on our synthetic crowds that ReLU output died - every
pixel 0, the loss constant from the first epoch, 2 of 2 seeds - so, as for MCNN, we keep the
paper's linear layer). The authors' x8 nearest up-sampling is our spreading of the stride-8
cells (:mod:`autoscale.models.counter`; counts unchanged). 16,337,345 parameters at width 1 (hand
count in ``tests/test_counters.py``: CSRNet's 16,263,424 without its output layer + two
64 x 64 x 9 + 64 slice convolutions + 65).

The spatial encoder's slice convolutions always start from the authors' N(0, 0.01) (zero bias),
whatever ``init`` says (:meth:`SFCN.after_init`): the message passing is a recurrence over H/8 rows
and W/8 columns, and with Kaiming weights its gain per step exceeds 1 - from scratch on 144x192
crowds the first-epoch loss reached 1.2e10 and one of three seeds never recovered (MAE 162 vs
2.5-10 for the other counters; benchmarks/bench_table9.py, measured).

The L2S feature is the spatial encoder's output (64 channels, stride 8). State-dict names:
``backbone.features.N``, ``backend.N``, ``convDU.conv.0``, ``convLR.conv.0``, ``output_layer``.
"""
from __future__ import annotations

from os import PathLike
from typing import Any

import torch
from torch import nn

from autoscale.models.counter import DensityCounter, build_counter
from autoscale.models.csrnet import BACKEND, make_backend, vgg_front_end
from autoscale.models.fpn import VGG_BACKBONES
from autoscale.models.registry import CounterSpec, Weights, register_model
from autoscale.models.vgg import scaled

__all__ = ["SFCN", "SliceConv", "sfcn_regression"]

#: kernel length of the spatial encoder's slice convolutions (GCC code: 1x9 and 9x1).
SLICE_KERNEL = 9


class SliceConv(nn.Module):
    """SCNN message passing along one axis: ``dim=2`` (``convDU``: rows, a 1 x k convolution along
    each row) or ``dim=3`` (``convLR``: columns, k x 1). Slice ``i`` becomes
    ``x_i + relu(conv(y_{i-1}))`` in a forward sweep, then ``y_i + relu(conv(y_{i+1}))`` backwards."""

    def __init__(self, channels: int, dim: int, k: int = SLICE_KERNEL):
        super().__init__()
        if dim not in (2, 3):
            raise ValueError(f"dim must be 2 (rows) or 3 (columns), got {dim}")
        self.dim = dim
        size, pad = ((1, k), (0, k // 2)) if dim == 2 else ((k, 1), (k // 2, 0))
        self.conv = nn.Sequential(nn.Conv2d(channels, channels, size, padding=pad), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = list(x.split(1, dim=self.dim))
        for i in range(1, len(ys)):
            ys[i] = self.conv(ys[i - 1]) + ys[i]
        for i in range(len(ys) - 2, -1, -1):
            ys[i] = self.conv(ys[i + 1]) + ys[i]
        return torch.cat(ys, self.dim)


class SFCN(DensityCounter):
    """SFCN, VGG16 variant (module docstring): density at stride 8, people per 8x8 cell."""

    output_stride = 8
    input_multiple = 8
    output_conv = "output_layer"

    def __init__(self, backbone: str = "vgg16", width: float = 1.0):
        super().__init__()
        self.width = float(width)
        self.backbone = vgg_front_end("this SFCN", backbone, width)
        self.backend = make_backend(self.backbone.channels, width)
        c = scaled(BACKEND[-1], width)
        self.convDU = SliceConv(c, dim=2)
        self.convLR = SliceConv(c, dim=3)
        self.feature_channels = c
        self.output_layer = nn.Conv2d(c, 1, 1)

    @torch.no_grad()
    def after_init(self) -> None:
        """The slice convolutions' initialisation: N(0, 0.01), zero bias (module docstring)."""
        for slice_conv in (self.convDU, self.convLR):
            nn.init.normal_(slice_conv.conv[0].weight, std=0.01)
            nn.init.zeros_(slice_conv.conv[0].bias)

    def maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature = self.convLR(self.convDU(self.backend(self.backbone(x))))
        return self.output_layer(feature), feature


def _sfcn(**kwargs: Any) -> SFCN:
    return build_counter(SFCN, name="sfcn_regression", **kwargs)


@register_model("sfcn_regression", counter=CounterSpec("regression", VGG_BACKBONES))
def sfcn_regression(*, backbone: str = "vgg16", width: float = 1.0,
                    weights: Weights | str | PathLike[str] | None = None, imagenet: str | PathLike[str] | None = None,
                    official_init: bool = False, init: str = "official") -> SFCN:
    """SFCN, VGG16 variant (VGG19 allowed); ``imagenet``: a local torchvision VGG file for the
    front end (the authors initialise it from ImageNet); ``weights``: one of our checkpoints."""
    return _sfcn(backbone=backbone, width=width, weights=weights, imagenet=imagenet, official_init=official_init, init=init)
