"""The FPN counting networks of AutoScale (paper §3.4 regression, §3.5 localization).

Architecture as the authors' code (official-code-facts §1a/§1b), with our backbone holding
torchvision indices (``backbone.features.N``) so ImageNet weights load key-for-key:

* :class:`RegressionFPN` (density maps): the image is zero-padded by 8 px on every side; VGG
  conv1..conv4 with floor-mode pools; pool4 (index 23 in VGG16) is an ``Identity`` and conv5
  (indices 24, 26, 28) are 3x3 dilation-2 convs (the authors' dilated "backend"), so the deepest
  stride is 8. Laterals ``cd2..cd5`` = 3x3 conv -> 32 ch + ReLU; ``rd5/rd4/rd3`` = 1x1 conv -> 8 ch
  + ReLU; ``up4/up3`` = ConvTranspose2d(8, 8, 4, stride 2) (size 2n+2). Side outputs
  ``d2..d5`` (``dsn2..dsn5``, 1 channel) are upsampled x2/x4/x8/x8 (bilinear, align_corners=True)
  and centre-cropped to the input size; ``d6 = dsn6(cat(d2, d3, d4, d5))``. No final ReLU.
* :class:`LocalizationFPN` (distance-label logits): conv1_1 has padding 35 (HED trick), pools
  are ceil-mode, pool4 is ``MaxPool2d(2, stride 1, padding 1)``, conv5 dilated; laterals
  ``cd1..cd5`` = 3x3 conv -> 24 ch + BatchNorm (no ReLU), ``rd5..rd2`` = 1x1 conv -> 8 ch + BN;
  ``p1`` is used; heads ``dsn1..dsn5`` give ``num_classes`` (11) logits, ``dsn6`` fuses the 55.

Centre crops take the offset ``floor((a - b) / 2)`` in each axis. Every output is at the full input
resolution (output stride 1). The unused modules of the authors' code (regression: ``densend``,
``fuse``, ``cd1``, ``dsn1``, ``rd2``, ``up5``, ``up2``; localization: ``up5``) are not built here;
:mod:`autoscale.models.official` keeps their tensors aside when converting checkpoints.

``width`` scales every channel count (backbone and laterals; ``max(1, round(c * width))``) for
narrow test models; only ``width=1`` with VGG16 matches the authors' checkpoints.
"""
from __future__ import annotations

from os import PathLike
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from autoscale.errors import CheckpointError
from autoscale.models.vgg import CFGS, conv_indices, load_imagenet_vgg, make_layers, pool_indices, scaled

__all__ = ["FPNOutput", "LocalizationFPN", "RegressionFPN", "VGGBackbone", "center_crop"]


class FPNOutput(NamedTuple):
    """What an FPN returns; every map is ``(B, ., H, W)`` at the input's full resolution."""

    final: torch.Tensor
    """regression: density ``(B, 1, H, W)`` (people per pixel); localization: logits ``(B, K, H, W)``."""
    side: list[torch.Tensor]
    """deep-supervision outputs, shallow to deep (regression d2..d5, localization d1..d5)."""
    features: torch.Tensor | None
    """the multi-level L2S feature ``(B, feature_channels, H, W)`` (152 ch at width 1), or None."""


def center_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Centre-crop the last two axes of ``x`` to ``h x w`` with offset ``floor((a - b) / 2)``."""
    H, W = x.shape[-2:]
    if H < h or W < w:
        raise RuntimeError(f"cannot crop a {H}x{W} map to {h}x{w}")
    top, left = (H - h) // 2, (W - w) // 2
    return x[..., top:top + h, left:left + w]


def _up(x: torch.Tensor, factor: int) -> torch.Tensor:
    """x``factor`` bilinear upsampling with align_corners=True (``nn.UpsamplingBilinear2d``)."""
    if factor == 1:
        return x
    return F.interpolate(x, size=(x.shape[-2] * factor, x.shape[-1] * factor), mode="bilinear",
                         align_corners=True)


class VGGBackbone(nn.Module):
    """VGG ``features`` (torchvision indices, pool5 dropped) returning the five stage outputs.

    Stage k ends just before pool k; stage 5 starts with the (replaced) pool4.
    """

    def __init__(
        self,
        arch: str = "vgg16",
        width: float = 1.0,
        *,
        conv1_padding: int = 1,
        ceil_mode: bool = False,
        pool4: str = "identity",
    ):
        super().__init__()
        if arch not in CFGS:
            raise ValueError(f"unknown backbone {arch!r}; choose from {sorted(CFGS)}")
        self.arch = arch
        pools = pool_indices(arch)
        layers = make_layers(CFGS[arch], width)[: pools[4]]  # drop pool5
        for i in pools[:3]:
            layers[i] = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=ceil_mode)
        if pool4 == "identity":
            layers[pools[3]] = nn.Identity()
        elif pool4 == "stride1":
            layers[pools[3]] = nn.MaxPool2d(kernel_size=2, stride=1, padding=1, ceil_mode=ceil_mode)
        else:
            raise ValueError(f"pool4 must be 'identity' or 'stride1', got {pool4!r}")
        layers[0].padding = (conv1_padding, conv1_padding)
        for i in conv_indices(arch):
            if i > pools[3]:  # conv5: 3x3, dilation 2, padding 2
                layers[i].dilation = (2, 2)
                layers[i].padding = (2, 2)
        self.features = nn.Sequential(*layers)
        self.stage_ends = (*pools[:4], len(layers))
        outs, last = [], 3
        for v in CFGS[arch]:
            if v == "M":
                outs.append(scaled(int(last), width))
            else:
                last = v
        self.channels: tuple[int, ...] = tuple(outs)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stages, ends = [], iter(self.stage_ends)
        end = next(ends)
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i + 1 == end:
                stages.append(x)
                end = next(ends, -1)
        return stages


def _init_official(module: nn.Module) -> None:
    """Authors' init: Conv2d ~ N(0, 0.01), zero bias; BN weight 1, bias 0; ConvTranspose2d default."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _FPNBase(nn.Module):
    variant: str = ""
    backbone: VGGBackbone

    def _imagenet_convs(self, official_init: bool) -> list[int]:
        raise NotImplementedError

    def load_imagenet(self, path: str | PathLike[str], *, official_init: bool = False) -> list[str]:
        """Copy ImageNet VGG conv weights from a local torchvision file into the backbone.

        Paper default: all VGG convs (conv1_1..conv5_3, the dilated conv5 included).
        ``official_init=True`` reproduces the authors' code: regression copies conv1..conv4 only;
        localization copies nothing. Returns the copied ``backbone.features.N.*`` keys. A width or
        shape mismatch raises :class:`CheckpointError` listing every offending key.
        """
        state = load_imagenet_vgg(path, self.backbone.arch)
        own = self.state_dict()
        pairs = {}
        for i in self._imagenet_convs(official_init):
            for p in ("weight", "bias"):
                pairs[f"backbone.features.{i}.{p}"] = state[f"features.{i}.{p}"]
        bad = [f"{k} {tuple(own[k].shape)} vs ImageNet {tuple(v.shape)}"
               for k, v in pairs.items() if own[k].shape != v.shape]
        if bad:
            raise CheckpointError(f"{path}: ImageNet weights do not fit this model (width must be 1): {bad}")
        with torch.no_grad():
            for k, v in pairs.items():
                own[k].copy_(v)
        return list(pairs)


class RegressionFPN(_FPNBase):
    """Density-regression FPN (facts §1a). ``forward(x)`` -> :class:`FPNOutput`, final ``(B,1,H,W)``."""

    variant = "regression"

    def __init__(self, backbone: str = "vgg16", width: float = 1.0):
        super().__init__()
        self.width = width
        self.backbone = VGGBackbone(backbone, width, conv1_padding=1, ceil_mode=False, pool4="identity")
        ch = self.backbone.channels
        lat, red = scaled(32, width), scaled(8, width)
        cd = lambda c: nn.Sequential(nn.Conv2d(c, lat, 3, padding=1), nn.ReLU())  # noqa: E731
        rd = lambda c: nn.Sequential(nn.Conv2d(c, red, 1), nn.ReLU())  # noqa: E731
        self.cd2, self.cd3, self.cd4, self.cd5 = cd(ch[1]), cd(ch[2]), cd(ch[3]), cd(ch[4])
        self.rd5, self.rd4, self.rd3 = rd(lat), rd(lat + red), rd(lat + red)
        self.up4 = nn.ConvTranspose2d(red, red, 4, stride=2)
        self.up3 = nn.ConvTranspose2d(red, red, 4, stride=2)
        self.dsn2, self.dsn3, self.dsn4 = (nn.Conv2d(lat + red, 1, 1) for _ in range(3))
        self.dsn5 = nn.Conv2d(lat, 1, 1)
        self.dsn6 = nn.Conv2d(4, 1, 1)
        self.feature_channels = 3 * (lat + red) + lat
        self.num_outputs = 1
        _init_official(self)

    def _imagenet_convs(self, official_init: bool) -> list[int]:
        idx = conv_indices(self.backbone.arch)
        return [i for i in idx if i < pool_indices(self.backbone.arch)[3]] if official_init else idx

    def forward(self, x: torch.Tensor, return_features: bool = False) -> FPNOutput:
        """``x``: ImageNet-normalised ``(B, 3, H, W)``; outputs are ``(B, ., H, W)``."""
        H, W = x.shape[-2:]
        c1, c2, c3, c4, c5 = self.backbone(F.pad(x, (8, 8, 8, 8)))
        del c1
        p5 = self.cd5(c5)
        p4 = F.relu(torch.cat([self.cd4(c4), center_crop(self.rd5(F.relu(p5)), *c4.shape[-2:])], 1))
        p3 = F.relu(torch.cat([self.cd3(c3), center_crop(self.up4(self.rd4(p4)), *c3.shape[-2:])], 1))
        p2 = F.relu(torch.cat([self.cd2(c2), center_crop(self.up3(self.rd3(p3)), *c2.shape[-2:])], 1))
        d2 = center_crop(_up(self.dsn2(p2), 2), H, W)
        d3 = center_crop(_up(self.dsn3(p3), 4), H, W)
        d4 = center_crop(_up(self.dsn4(p4), 8), H, W)
        d5 = center_crop(_up(self.dsn5(F.relu(p5)), 8), H, W)
        d6 = self.dsn6(torch.cat([d2, d3, d4, d5], 1))
        feats = None
        if return_features:
            feats = torch.cat([center_crop(_up(p, f), H, W) for p, f in ((p2, 2), (p3, 4), (p4, 8), (p5, 8))], 1)
        return FPNOutput(d6, [d2, d3, d4, d5], feats)


class LocalizationFPN(_FPNBase):
    """Distance-label classification FPN (facts §1b). final = logits ``(B, num_classes, H, W)``."""

    variant = "localization"

    def __init__(self, backbone: str = "vgg16", width: float = 1.0, num_classes: int = 11):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.width = width
        self.backbone = VGGBackbone(backbone, width, conv1_padding=35, ceil_mode=True, pool4="stride1")
        ch = self.backbone.channels
        lat, red, K = scaled(24, width), scaled(8, width), num_classes
        cd = lambda c: nn.Sequential(nn.Conv2d(c, lat, 3, padding=1), nn.BatchNorm2d(lat))  # noqa: E731
        rd = lambda c: nn.Sequential(nn.Conv2d(c, red, 1), nn.BatchNorm2d(red))  # noqa: E731
        self.cd1, self.cd2, self.cd3, self.cd4, self.cd5 = (cd(c) for c in ch)
        self.rd5 = rd(lat)
        self.rd4, self.rd3, self.rd2 = rd(lat + red), rd(lat + red), rd(lat + red)
        self.up4, self.up3, self.up2 = (nn.ConvTranspose2d(red, red, 4, stride=2) for _ in range(3))
        self.dsn1, self.dsn2, self.dsn3, self.dsn4 = (nn.Conv2d(lat + red, K, 1) for _ in range(4))
        self.dsn5 = nn.Conv2d(lat, K, 1)
        self.dsn6 = nn.Conv2d(5 * K, K, 1)
        self.feature_channels = 4 * (lat + red) + lat
        self.num_outputs = self.num_classes = K
        _init_official(self)

    def _imagenet_convs(self, official_init: bool) -> list[int]:
        return [] if official_init else conv_indices(self.backbone.arch)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> FPNOutput:
        """``x``: ImageNet-normalised ``(B, 3, H, W)``; logits ``(B, K, H, W)``."""
        H, W = x.shape[-2:]
        c1, c2, c3, c4, c5 = self.backbone(x)
        p5 = self.cd5(c5)
        p4 = F.relu(torch.cat([self.cd4(c4), center_crop(self.rd5(F.relu(p5)), *c4.shape[-2:])], 1))
        p3 = F.relu(torch.cat([self.cd3(c3), center_crop(self.up4(self.rd4(p4)), *c3.shape[-2:])], 1))
        p2 = F.relu(torch.cat([self.cd2(c2), center_crop(self.up3(self.rd3(p3)), *c2.shape[-2:])], 1))
        p1 = F.relu(torch.cat([self.cd1(c1), center_crop(self.up2(self.rd2(p2)), *c1.shape[-2:])], 1))
        d1 = center_crop(self.dsn1(p1), H, W)
        d2 = center_crop(_up(self.dsn2(p2), 2), H, W)
        d3 = center_crop(_up(self.dsn3(p3), 4), H, W)
        d4 = center_crop(_up(self.dsn4(p4), 8), H, W)
        d5 = center_crop(_up(self.dsn5(F.relu(p5)), 8), H, W)
        d6 = self.dsn6(torch.cat([d1, d2, d3, d4, d5], 1))
        feats = None
        if return_features:
            feats = torch.cat([F.interpolate(p, size=(H, W), mode="bilinear", align_corners=True)
                               for p in (p1, p2, p3, p4, p5)], 1)
        return FPNOutput(d6, [d1, d2, d3, d4, d5], feats)
