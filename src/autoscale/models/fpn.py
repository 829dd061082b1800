"""The FPN counting networks of AutoScale (paper §3.4 regression, §3.5 localization).

Architecture as the authors' code (official-code-facts §1a/§1b) on a VGG backbone, with our
backbone holding torchvision indices (``backbone.features.N``) so ImageNet weights load key-for-key:

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

The head is driven by the backbone's ``channels`` and ``strides`` (five levels; regression uses
levels 2..5, localization 1..5). A top-down merge from level k+1 into level k uses no upsampling
between equal strides (VGG's ``rd5`` -> c4) and ``upK+1`` = ConvTranspose2d(8, 8, 4, stride 2) +
centre crop for a stride ratio of 2. Side outputs and the L2S feature are upsampled by each level's
stride. :data:`BACKBONES` also holds EfficientNet-Lite0/1/2
(:class:`~autoscale.models.efficientnet_lite.EfficientNetLiteBackbone`, strides 2..32, so the lite
heads have an ``up5`` too); their TF-"SAME" maps are corner-aligned: no input padding, a stride-s
map of size n is upsampled to n*s (bilinear, align_corners=False) and cropped to ``[:H, :W]``.
(The transposed-conv merges' centre crop of 2n+2 to ceil-halved sizes is offset 1 either way.)

``forward(x, return_features="lazy")`` returns the L2S feature as a :class:`LazyFeatures`: the
levels at their native resolution, of which :func:`autoscale.models.l2s.roi_features` pools
only the dense region (the pipeline's inference uses it; training asks for ``True``, the
full-resolution tensor, whose float32 rounding it has always had).

Inputs are normalised with :attr:`_FPNBase.normalization` (the backbone's ImageNet (mean, std)).
``width`` scales every channel count (backbone and laterals; ``max(1, round(c * width))``) for
narrow test models; only ``width=1`` with VGG16 matches the authors' checkpoints.
"""
from __future__ import annotations

from collections.abc import Callable
from os import PathLike
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from autoscale.errors import CheckpointError, ConfigError
from autoscale.models import fused
from autoscale.models.efficientnet_lite import EfficientNetLiteBackbone, load_imagenet_efficientnet
from autoscale.models.vgg import (
    CFGS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    conv_indices,
    load_imagenet_vgg,
    make_layers,
    pool_indices,
    scaled,
)

__all__ = ["BACKBONES", "FPNOutput", "LazyFeatures", "LocalizationFPN", "RegressionFPN", "VGGBackbone", "center_crop"]

#: backbone names every FPN accepts.
VGG_BACKBONES = ("vgg16", "vgg19")
LITE_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
BACKBONES: tuple[str, ...] = VGG_BACKBONES + LITE_BACKBONES


class FPNOutput(NamedTuple):
    """What an FPN returns - and every counter (the counter interface of
    :mod:`autoscale.models.counter`); every map is ``(B, ., H, W)`` at the input's full resolution."""

    final: torch.Tensor
    """regression: density ``(B, 1, H, W)`` (people per pixel); localization: logits ``(B, K, H, W)``."""
    side: list[torch.Tensor]
    """deep-supervision outputs, shallow to deep (regression d2..d5, localization d1..d5)."""
    features: "torch.Tensor | LazyFeatures | None"
    """the multi-level L2S feature ``(B, feature_channels, H, W)`` (152 ch at width 1), or None;
    with ``return_features="lazy"`` an FPN gives a :class:`LazyFeatures` instead (the same values,
    computed only for the region L2S reads)."""
    output_stride: int = 1
    """the cell size ``s`` (input px) the maps were predicted at: 1 for the FPNs (per pixel); a
    stride-``s`` counter's maps (:class:`autoscale.models.counter.DensityCounter`) are constant on
    ``s x s`` cells from the top-left corner. The Bayesian loss sums the map over these cells."""


def center_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Centre-crop the last two axes of ``x`` to ``h x w`` with offset ``floor((a - b) / 2)``."""
    H, W = x.shape[-2:]
    if H < h or W < w:
        raise RuntimeError(f"cannot crop a {H}x{W} map to {h}x{w}")
    top, left = (H - h) // 2, (W - w) // 2
    return x[..., top:top + h, left:left + w]


def _interp_input(x: torch.Tensor) -> torch.Tensor:
    # Under bf16 autocast, upsampling the output maps runs 2x faster in float32 on the CPU (1.3 vs
    # 0.6 ms for a 1-channel 768x1024 output here, 34 vs 13 ms for 11 channels) and is more precise.
    # Inference only: training keeps its numerics.
    if x.dtype == torch.bfloat16 and torch.is_autocast_enabled(x.device.type) and not torch.is_grad_enabled():
        return x.float().contiguous()
    return x


def _up(x: torch.Tensor, factor: int) -> torch.Tensor:
    """x``factor`` bilinear upsampling with align_corners=True (``nn.UpsamplingBilinear2d``)."""
    if factor == 1:
        return x
    return F.interpolate(x, size=(x.shape[-2] * factor, x.shape[-1] * factor), mode="bilinear",
                         align_corners=True)


def _up_corner(x: torch.Tensor, factor: int, h: int, w: int) -> torch.Tensor:
    """Corner-aligned: ``n -> n * factor`` bilinear (align_corners=False), then ``[:h, :w]``."""
    if factor != 1:
        x = F.interpolate(x, size=(x.shape[-2] * factor, x.shape[-1] * factor), mode="bilinear",
                          align_corners=False)
    if x.shape[-2] < h or x.shape[-1] < w:
        raise RuntimeError(f"cannot crop a {x.shape[-2]}x{x.shape[-1]} map to {h}x{w}")
    return x[..., :h, :w]


def _power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


class LazyFeatures:
    """The FPN's multi-level L2S feature, kept as the per-level maps at their native resolution.

    ``full()`` is exactly the tensor ``forward(x, return_features=True)`` returns
    (``(B, C, H, W)``); ``crop((x, y, w, h))`` is ``full()[..., y:y+h, x:x+w]`` computed from
    the few rows and columns of each level that the region's pixels interpolate from, and
    ``pool`` (what :func:`autoscale.models.l2s.roi_features` of a dense region calls at inference)
    never upsamples the region at all, so the whole 152-channel map is never brought to the input
    resolution. For the corner-aligned (EfficientNet-Lite) FPNs the crop is bit-identical to
    slicing the full map: a power-of-two stride makes the bilinear (align_corners=False) source
    coordinates and weights exact, the same in a window as in the whole map, and the window keeps
    every neighbour (and the border clamp) the region's pixels use. Other FPNs (VGG's
    align_corners=True maps) crop ``full()``.

    The autocast state of the forward pass is recorded and reapplied, so the values do not depend
    on where the crop is taken. ``detach()`` detaches the maps (L2S reads detached features).
    """

    def __init__(self, fpn: "_FPNBase", maps: list[torch.Tensor], strides: list[int], size: tuple[int, int]):
        self._fpn = fpn
        self.maps = maps
        self.strides = strides
        self.size = (int(size[0]), int(size[1]))
        dev = maps[0].device.type
        self._autocast = (dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.maps[0].shape[0], sum(m.shape[1] for m in self.maps), *self.size))

    @property
    def device(self) -> torch.device:
        return self.maps[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.maps[0].dtype

    def detach(self) -> "LazyFeatures":
        out = LazyFeatures.__new__(LazyFeatures)
        out.__dict__.update(self.__dict__)
        out.maps = [m.detach() for m in self.maps]
        return out

    def _ctx(self) -> torch.autocast:
        dev, enabled, dtype = self._autocast
        return torch.autocast(dev, dtype=dtype, enabled=enabled)

    def full(self) -> torch.Tensor:
        """The full-resolution feature ``(B, C, H, W)``."""
        H, W = self.size
        with self._ctx():
            return torch.cat([self._fpn._feature(p, s, H, W) for p, s in zip(self.maps, self.strides)], 1)

    def _windowed(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
        """The checked integer ``(x, y, w, h)`` when a region can be computed from windows of the
        levels (corner-aligned FPN, power-of-two strides), else None."""
        xywh = self._check(box)
        if not self._fpn.corner_aligned or not all(_power_of_two(s) for s in self.strides):
            return None
        return xywh

    def _check(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        x, y, w, h = (int(v) for v in box)
        H, W = self.size
        if w < 1 or h < 1 or x < 0 or y < 0 or x + w > W or y + h > H:
            raise ValueError(f"region (x={x}, y={y}, w={w}, h={h}) is empty or outside the {H}x{W} map")
        return x, y, w, h

    def _level_crops(self, box: tuple[int, int, int, int]) -> list[torch.Tensor] | None:
        xywh = self._windowed(box)
        if xywh is None:
            return None
        x, y, w, h = xywh
        return [_window_up_corner(p, s, (y, h), (x, w)) for p, s in zip(self.maps, self.strides)]

    def crop(self, box: tuple[int, int, int, int]) -> torch.Tensor:
        """``full()[..., y:y+h, x:x+w]`` for an integer region ``(x, y, w, h)`` inside the map."""
        with self._ctx():
            crops = self._level_crops(box)
            if crops is None:
                x, y, w, h = (int(v) for v in box)
                return self.full()[..., y:y + h, x:x + w]
            return torch.cat(crops, 1)

    def pool(self, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
        """``adaptive_avg_pool2d(crop(box), size)``. Without autograd (inference) computed level by
        level in float32 without upsampling the region (:func:`_pool_up`; equal to pooling the
        float32 region up to rounding, so under bf16 autocast more precise than pooling the bf16
        crop), for every FPN; in training the region is upsampled and pooled (the numerics
        training always had: level by level for the corner-aligned FPNs, else from :meth:`full`)."""
        xywh = self._windowed(box)
        if torch.is_grad_enabled():
            with self._ctx():
                if xywh is None:
                    return F.adaptive_avg_pool2d(self.crop(box), (size, size))
                return torch.cat([F.adaptive_avg_pool2d(c, (size, size)) for c in self._level_crops(box)], 1)
        x, y, w, h = self._check(box)
        mode = self._fpn.feature_mode
        H, W = self.size
        return torch.cat([_pool_up(p, s, (y, h, H), (x, w, W), size, mode=mode)
                          for p, s in zip(self.maps, self.strides)], 1)


def _source_span(start: int, length: int, stride: int, n: int) -> tuple[int, int]:
    """The input rows ``[a, b)`` that output rows ``[start, start + length)`` of an ``n -> n * stride``
    bilinear (align_corners=False) upsampling read: the lower neighbour ``floor(max(src, 0))`` of
    the first row's source coordinate ``src = (i + 0.5) / stride - 0.5`` to the last row's upper one."""
    def lower(i: int) -> int:
        return max(0, (2 * i + 1 - stride) // (2 * stride))  # floor(max((i + 0.5) / s - 0.5, 0))

    return lower(start), min(n, lower(start + length - 1) + 2)


def _pool_matrix(start: int, length: int, stride: int, n: int, size: int, *, mode: str = "corner",
                 full: int | None = None) -> tuple[np.ndarray, int, int]:
    """1-D ``adaptive_avg_pool(up(v)[start:start+length], size)`` as ``M @ v[a:b]``: returns
    ``(M (size, b - a) float64, a, b)``, for the FPN's upsampling ``up`` of a level of ``n`` values to
    the input's ``full`` values (:attr:`_FPNBase.feature_mode`). ``"corner"``: ``n -> n * stride``
    bilinear (align_corners=False; PyTorch's source index ``max((i + 0.5) / stride - 0.5, 0)``), then
    the first ``full``; ``"center"``: ``n -> n * stride`` with align_corners=True (source
    ``i (n - 1) / (n stride - 1)``), then centre-cropped to ``full`` (:func:`center_crop`);
    ``"resize"``: ``n -> full`` with align_corners=True. The upper neighbour is clamped to ``n - 1``;
    adaptive pooling's bins are ``[floor(k L / size), ceil((k + 1) L / size))``."""
    i = np.arange(start, start + length, dtype=np.float64)
    if mode == "corner":
        src = np.maximum((i + 0.5) / stride - 0.5, 0.0)
    elif mode == "center":
        big = n * stride
        i = i + (big - (big if full is None else full)) // 2
        src = i * ((n - 1) / (big - 1)) if stride > 1 and big > 1 else i
    elif mode == "resize":
        src = i * ((n - 1) / (full - 1)) if full is not None and full > 1 else i * 0.0
    else:
        raise ValueError(f"unknown upsampling mode {mode!r}")
    lo = np.floor(src)
    lam = src - lo
    lo = np.minimum(lo.astype(np.int64), n - 1)
    hi = np.minimum(lo + 1, n - 1)
    a, b = int(lo.min()), int(hi.max()) + 1
    k = np.arange(size)
    p0, p1 = (k * length) // size, -(-((k + 1) * length) // size)
    bins = np.repeat(k, p1 - p0)  # output row k averages upsampled rows p0[k] .. p1[k] - 1 (bins overlap)
    rows = np.concatenate([np.arange(u, v) for u, v in zip(p0, p1)])
    share = 1.0 / (p1 - p0)[bins]
    m = np.zeros((size, b - a))
    np.add.at(m, (bins, lo[rows] - a), (1.0 - lam[rows]) * share)
    np.add.at(m, (bins, hi[rows] - a), lam[rows] * share)
    return m, a, b


def _pool_up(p: torch.Tensor, stride: int, rows: tuple[int, int, int], cols: tuple[int, int, int],
             size: int, *, mode: str) -> torch.Tensor:
    """``adaptive_avg_pool2d`` of region ``rows = (y, h, H)``, ``cols = (x, w, W)`` of level ``p``
    upsampled to the ``H x W`` input (:meth:`_FPNBase._feature`), in float32, as
    ``Mh @ p[window] @ Mw^T``: bilinear upsampling, cropping and adaptive average pooling are all
    separable and linear, so the region is never upsampled (equal up to float rounding; the
    152-channel 768x1024 L2S feature of a dense region: 15 -> 1 ms here for Lite0, 314 -> 5 ms
    for VGG16, whose full map was upsampled before)."""
    (y, h, H), (x, w, W) = rows, cols
    mh, a, b = _pool_matrix(y, h, stride, p.shape[-2], size, mode=mode, full=H)
    mw, c, d = _pool_matrix(x, w, stride, p.shape[-1], size, mode=mode, full=W)
    win = p[..., a:b, c:d].permute(0, 2, 3, 1).float()  # (B, h, w, C): channels-last maps stay in place
    with torch.autocast(p.device.type, enabled=False):
        pooled_rows = torch.einsum("sh,bhwc->bswc", torch.from_numpy(mh).to(win), win)
        return torch.einsum("bswc,tw->bcst", pooled_rows, torch.from_numpy(mw).to(win)).contiguous()


def _window_up_corner(p: torch.Tensor, stride: int, rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
    """``_up_corner(p, stride, H, W)[..., y:y+h, x:x+w]`` from a window of ``p`` (``rows = (y, h)``,
    ``cols = (x, w)``); bit-identical for a power-of-two ``stride``."""
    (y, h), (x, w) = rows, cols
    if stride == 1:
        return p[..., y:y + h, x:x + w]
    a, b = _source_span(y, h, stride, p.shape[-2])
    c, d = _source_span(x, w, stride, p.shape[-1])
    up = F.interpolate(p[..., a:b, c:d], size=((b - a) * stride, (d - c) * stride), mode="bilinear",
                       align_corners=False)
    return up[..., y - a * stride:y - a * stride + h, x - c * stride:x - c * stride + w]


class VGGBackbone(nn.Module):
    """VGG ``features`` (torchvision indices, pool5 dropped) returning the five stage outputs.

    Stage k ends just before pool k; stage 5 starts with the (replaced) pool4.
    """

    strides: tuple[int, ...] = (1, 2, 4, 8, 8)  # pool4 is an identity or stride 1 in both FPNs
    alignment = "center"

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
        self.normalization = (IMAGENET_MEAN, IMAGENET_STD)
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
        """The five stage outputs. Under bf16 autocast without autograd each conv + ReLU runs as
        oneDNN's fused convolution (:mod:`autoscale.models.fused`; the weight rounded to bf16 as
        autocast rounds it, kept between frames, the bias in float32): a VGG16 two-pass frame at
        768x1024 on 2 threads 0.84 -> 0.68 s, the separate ReLU passes over the full-resolution
        maps gone."""
        fuse = fused.active(x)
        stages, ends = [], iter(self.stage_ends)
        end = next(ends)
        layers, relu_done = self.features, False
        for i, layer in enumerate(layers):
            if relu_done:  # this ReLU ran inside the convolution before it
                relu_done = False
            elif (fuse and isinstance(layer, nn.Conv2d) and layer.bias is not None and i + 1 < len(layers)
                  and isinstance(layers[i + 1], nn.ReLU)):
                weight, bias = fused.kept(layer, "_bf16", (layer.weight, layer.bias), None, lambda c=layer: (
                    c.weight.detach().to(torch.bfloat16), c.bias.detach().float()))
                x = fused.conv(x, weight, bias, layer.padding, layer.stride, layer.dilation, layer.groups, "relu")
                relu_done = True
            else:
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


def _check_backbone(name: str) -> None:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {list(BACKBONES)}")


class _FPNBase(nn.Module):
    """The shared FPN head: laterals ``cdK``, reductions ``rdK``, upsamplers ``upK``, heads ``dsnK``.

    Level ``k`` (1..5) is the backbone's k-th output; a subclass uses levels ``first_level..5``.
    """

    variant: str = ""
    first_level: int = 1
    backbone: VGGBackbone | EfficientNetLiteBackbone

    def _build_head(self, lat: int, red: int, out: int, cd: Callable[[int], nn.Module],
                    rd: Callable[[int], nn.Module]) -> None:
        """Create the head modules in the authors' order (which fixes the random initialisation)."""
        ch, st = self.backbone.channels, self.backbone.strides
        levels = list(range(self.first_level, 6))
        self.levels = tuple(levels)
        for k in levels:
            self.add_module(f"cd{k}", cd(ch[k - 1]))
        for k in reversed(levels[1:]):
            self.add_module(f"rd{k}", rd(lat if k == 5 else lat + red))
        self.merge_up: dict[int, bool] = {}
        for k in reversed(levels[1:]):  # merge level k into level k - 1
            ratio, rem = divmod(st[k - 1], st[k - 2])
            if rem or ratio not in (1, 2):
                raise ValueError(f"backbone strides {st}: levels {k - 1}->{k} must keep or double the stride")
            self.merge_up[k] = ratio == 2
            if ratio == 2:
                self.add_module(f"up{k}", nn.ConvTranspose2d(red, red, 4, stride=2))
        for k in levels:
            self.add_module(f"dsn{k}", nn.Conv2d(lat if k == 5 else lat + red, out, 1))
        self.dsn6 = nn.Conv2d(len(levels) * out, out, 1)
        self.feature_channels = (len(levels) - 1) * (lat + red) + lat
        self.num_outputs = out

    def _init_head(self) -> None:
        if self.backbone.alignment == "center":  # VGG: the authors' init everywhere (ImageNet overwrites)
            _init_official(self)
        else:  # the lite backbone keeps EfficientNet's own init
            for name, child in self.named_children():
                if name != "backbone":
                    _init_official(child)

    @property
    def normalization(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """``(mean, std)`` in [0, 1] RGB units that inputs must be normalised with (the backbone's)."""
        return self.backbone.normalization

    @property
    def corner_aligned(self) -> bool:
        return self.backbone.alignment == "corner"

    @property
    def feature_mode(self) -> str:
        """How :meth:`_feature` brings a level to the input size (:func:`_pool_matrix`'s ``mode``)."""
        return "corner" if self.corner_aligned else "center"

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _upsample(self, y: torch.Tensor, stride: int, h: int, w: int) -> torch.Tensor:
        if self.corner_aligned:
            return _up_corner(y, stride, h, w)
        return center_crop(_up(y, stride), h, w)

    def _side(self, y: torch.Tensor, stride: int, h: int, w: int) -> torch.Tensor:
        return self._upsample(_interp_input(y), stride, h, w)

    def _feature(self, p: torch.Tensor, stride: int, h: int, w: int) -> torch.Tensor:
        return self._upsample(p, stride, h, w)

    def forward(self, x: torch.Tensor, return_features: bool | str = False, *,
                side_outputs: bool | None = None) -> FPNOutput:
        """``x``: ``(B, 3, H, W)`` normalised with :attr:`normalization`; outputs are ``(B, ., H, W)``.

        ``return_features``: True for the full-resolution L2S feature tensor, ``"lazy"`` for a
        :class:`LazyFeatures` (the same values, computed only where they are read).
        ``side_outputs``: compute the full-resolution side maps (deep supervision) and ``final``
        from them; False gives ``final`` without them (:meth:`_fused_final`, ``side`` empty; the
        ONNX export traces this); None (default): side maps except in inference mode."""
        H, W = x.shape[-2:]
        cs = self.backbone(self._input(x))
        st = self.backbone.strides
        levels = self.levels
        # p5 is ReLU'd where rd5 and dsn5 read it (two separate calls, as the authors' graph: the
        # same ops in the same order keep outputs and gradients bit-identical); lower levels are
        # ReLU'd concatenations.
        ps = {5: self.cd5(cs[4])}
        for k in reversed(levels[:-1]):
            c = cs[k - 1]
            lateral = getattr(self, f"cd{k}")(c)
            top = getattr(self, f"rd{k + 1}")(F.relu(ps[5]) if k == 4 else ps[k + 1])
            if self.merge_up[k + 1]:
                top = getattr(self, f"up{k + 1}")(top)
            ps[k] = F.relu(torch.cat([lateral, center_crop(top, *c.shape[-2:])], 1))
        heads = {k: F.relu(ps[5]) if k == 5 else ps[k] for k in levels}
        if side_outputs is None:
            side_outputs = not torch.is_inference_mode_enabled()
        if not side_outputs:
            side: list[torch.Tensor] = []
            final = self._fused_final(heads, H, W)
        else:
            side = [self._side(getattr(self, f"dsn{k}")(heads[k]), st[k - 1], H, W) for k in levels]
            final = self.dsn6(torch.cat(side, 1))
        feats: torch.Tensor | LazyFeatures | None = None
        if return_features == "lazy":
            feats = LazyFeatures(self, [ps[k] for k in levels], [st[k - 1] for k in levels], (H, W))
        elif return_features:
            feats = torch.cat([self._feature(ps[k], st[k - 1], H, W) for k in levels], 1)
        return FPNOutput(final, side, feats)

    def _fused_final(self, heads: dict[int, torch.Tensor], h: int, w: int) -> torch.Tensor:
        """``dsn6(cat(side))`` without the full-resolution side maps (for inference).

        ``dsn6`` is a 1x1 convolution and the side maps are per-channel bilinear upsamplings
        (and crops) of 1x1 convolutions of the levels, all linear: so ``final = sum_k
        up(W6_k dsnK(p_k)) + b6``, with ``W6_k dsnK`` one 1x1 convolution at the level's
        resolution. Equal up to float rounding; it skips concatenating, casting and convolving
        ``levels x outputs`` full-resolution channels (lite0 localization at 768x1024 in bf16:
        first pass 0.49 -> 0.18-0.26 s in the benchmark runs here)."""
        out, st = self.num_outputs, self.backbone.strides
        w6 = self.dsn6.weight.flatten(1)
        final: torch.Tensor | None = None
        for i, k in enumerate(self.levels):
            dsn = getattr(self, f"dsn{k}")
            with torch.autocast(heads[k].device.type, enabled=False):
                block = w6[:, i * out:(i + 1) * out].float()
                weight = (block @ dsn.weight.flatten(1).float()).reshape(out, -1, 1, 1)
                bias = block @ dsn.bias.float()
            x = heads[k]
            y = self._side(F.conv2d(x, weight.to(x.dtype), bias.to(x.dtype)), st[k - 1], h, w)
            final = y if final is None else final.add_(y)
        assert final is not None
        return final + self.dsn6.bias.reshape(1, -1, 1, 1).to(final.dtype)

    def _imagenet_convs(self, official_init: bool) -> list[int]:
        raise NotImplementedError

    def load_imagenet(self, path: str | PathLike[str], *, official_init: bool = False) -> list[str]:
        """Copy the backbone's ImageNet weights from a local file into the backbone.

        VGG (a torchvision file): paper default, all VGG convs (conv1_1..conv5_3, the dilated conv5
        included). ``official_init=True`` reproduces the authors' code: regression copies conv1..conv4
        only; localization copies nothing. EfficientNet-Lite (an efficientnet_pytorch file, e.g.
        :func:`~autoscale.models.efficientnet_lite.imagenet_weights_path`): every ``_conv_stem``,
        ``_bn0`` and ``_blocks`` tensor, BatchNorm running statistics included (``official_init``
        has no meaning there and is refused). Returns the copied ``backbone.*`` keys. A width or
        shape mismatch raises :class:`CheckpointError` summarising the offending keys.
        """
        arch = self.backbone.arch
        if arch in LITE_BACKBONES:
            if official_init:
                raise ConfigError(f"official_init reproduces the authors' VGG initialisation; "
                                  f"it does not apply to the {arch} backbone")
            state = load_imagenet_efficientnet(path, arch)
            pairs = {f"backbone.{k}": v for k, v in state.items()
                     if k.split(".", 1)[0] in ("_conv_stem", "_bn0", "_blocks")}
        else:
            state = load_imagenet_vgg(path, arch)
            pairs = {}
            for i in self._imagenet_convs(official_init):
                for p in ("weight", "bias"):
                    pairs[f"backbone.features.{i}.{p}"] = state[f"features.{i}.{p}"]
        own = self.state_dict()
        bad = [f"{k} {tuple(own[k].shape)} vs ImageNet {tuple(v.shape)}"
               for k, v in pairs.items() if k in own and own[k].shape != v.shape]
        bad += [f"{k} (not in this model)" for k in pairs if k not in own]
        if bad:
            raise CheckpointError(f"{path}: ImageNet weights do not fit this model (width must be 1): {bad}")
        with torch.no_grad():
            for k, v in pairs.items():
                own[k].copy_(v)
        return list(pairs)


def _backbone(name: str, width: float, **vgg: object) -> VGGBackbone | EfficientNetLiteBackbone:
    _check_backbone(name)
    if name in LITE_BACKBONES:
        return EfficientNetLiteBackbone(name, width)
    return VGGBackbone(name, width, **vgg)


class RegressionFPN(_FPNBase):
    """Density-regression FPN (facts §1a). ``forward(x)`` -> :class:`FPNOutput`, final ``(B,1,H,W)``."""

    variant = "regression"
    first_level = 2

    def __init__(self, backbone: str = "vgg16", width: float = 1.0):
        super().__init__()
        self.width = width
        self.backbone = _backbone(backbone, width, conv1_padding=1, ceil_mode=False, pool4="identity")
        lat, red = scaled(32, width), scaled(8, width)
        cd = lambda c: nn.Sequential(nn.Conv2d(c, lat, 3, padding=1), nn.ReLU())  # noqa: E731
        rd = lambda c: nn.Sequential(nn.Conv2d(c, red, 1), nn.ReLU())  # noqa: E731
        self._build_head(lat, red, 1, cd, rd)
        self._init_head()

    def _imagenet_convs(self, official_init: bool) -> list[int]:
        idx = conv_indices(self.backbone.arch)
        return [i for i in idx if i < pool_indices(self.backbone.arch)[3]] if official_init else idx

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.corner_aligned else F.pad(x, (8, 8, 8, 8))  # the authors' 8 px padding (VGG)


class LocalizationFPN(_FPNBase):
    """Distance-label classification FPN (facts §1b). final = logits ``(B, num_classes, H, W)``."""

    variant = "localization"
    first_level = 1

    def __init__(self, backbone: str = "vgg16", width: float = 1.0, num_classes: int = 11):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.width = width
        self.backbone = _backbone(backbone, width, conv1_padding=35, ceil_mode=True, pool4="stride1")
        lat, red = scaled(24, width), scaled(8, width)
        cd = lambda c: nn.Sequential(nn.Conv2d(c, lat, 3, padding=1), nn.BatchNorm2d(lat))  # noqa: E731
        rd = lambda c: nn.Sequential(nn.Conv2d(c, red, 1), nn.BatchNorm2d(red))  # noqa: E731
        self._build_head(lat, red, num_classes, cd, rd)
        self.num_classes = num_classes
        self._init_head()

    def _imagenet_convs(self, official_init: bool) -> list[int]:
        return [] if official_init else conv_indices(self.backbone.arch)

    @property
    def feature_mode(self) -> str:
        return "corner" if self.corner_aligned else "resize"

    def _feature(self, p: torch.Tensor, stride: int, h: int, w: int) -> torch.Tensor:
        if self.corner_aligned:
            return _up_corner(p, stride, h, w)
        # the authors' localization feature: every level resized straight to the input size
        return F.interpolate(p, size=(h, w), mode="bilinear", align_corners=True)
