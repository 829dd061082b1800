"""The counter interface: what the two-pass AutoScale pipeline needs from a counting network.

Paper Table 9 puts L2S on five density counters (MCNN, CSRNet, BL, CAN, SFCN) besides its own FPN.
:class:`autoscale.pipeline.AutoScale` therefore talks to its counter through this small contract
(the FPNs of :mod:`autoscale.models.fpn` meet it as they are):

``forward(x, return_features=False) -> FPNOutput``
    ``x``: ``(B, 3, H, W)`` normalised with :attr:`normalization`. The output's maps are at the
    input's full resolution: ``final`` is the density ``(B, 1, H, W)`` in people per input pixel
    (regression; the count is its sum) or ``(B, K, H, W)`` logits (localization); ``side`` the
    deep-supervision maps trained like ``final`` (may be empty); ``features`` the map L2S reads,
    ``(B, feature_channels, H, W)``, when ``return_features`` (its dense-region box is average-pooled
    to 14 x 14, :func:`autoscale.models.l2s.roi_features`), else None; ``output_stride`` the cell
    size ``s`` in input pixels the density was predicted at (``final`` is constant on the ``s x s``
    cells from the top-left corner; 1 = per pixel). The pipeline's inference passes ``return_features="lazy"``:
    a counter treats it as True, or (the FPNs) returns a :class:`~autoscale.models.fpn.LazyFeatures`
    with the same values that computes only the region L2S pools.
``feature_channels``: int, ``normalization``: ``(mean, std)`` in [0, 1] RGB units, ``variant``:
    ``"regression"`` or ``"localization"``.
``scale_output_(factor)`` (regression, optional): multiply every output map by ``factor > 0`` in
    place; the trainer folds ``model.output_scale`` into saved weights with it
    (:func:`autoscale.models.init.fold_output_scale`).
``backbone`` (optional): the module whose BatchNorm layers ``model.freeze_bn`` freezes.

Most counters predict a density map at a stride ``s`` (CSRNet, CAN, SFCN, BL: 8; MCNN: 4) and read
one feature map at that stride. Such a counter subclasses :class:`DensityCounter` and implements
only ``maps(x) -> (density (B, 1, H/s, W/s) in people per cell, feature (B, C, H/f, W/f))``;
:meth:`DensityCounter.forward` provides the contract above:

* the input is zero-padded at the bottom and right (zero = the mean colour after normalisation) to
  a multiple of :attr:`DensityCounter.input_multiple` (the network's total down-sampling), so any
  size works - the second pass sees zoomed regions of a few pixels - and each density cell ``(i, j)``
  covers exactly the input pixels ``[i s, (i+1) s) x [j s, (j+1) s)``;
* the density is *spread* to full resolution: each cell's value divided by ``s^2`` on each of its
  ``s x s`` pixels (count-preserving; the padding is cropped, so a cell cut by the image border
  keeps the share of its mass that lies inside). Hence the pipeline's pixel MSE against a
  full-resolution density target is, per cell, ``(v - t)^2 / s^2`` + a constant, with ``t`` the
  target's mass in the cell: exactly the stride-``s`` MSE against the sum-pooled ground truth that
  CSRNet-style counters train with (Li et al. 2018 §3.2 / Zhang et al. 2016 §2.2 down-sample their
  maps preserving the count), scaled by ``1 / s^2``;
* the feature is repeated (nearest) over its cells and cropped, so a region of the image pools the
  feature cells it covers.

Our choice (the paper does not say how its Table 9 counters feed L2S): the feature L2S reads is
the counter's last feature map before its 1x1 output layer (MCNN: the three columns' outputs
concatenated; CSRNet / CAN: the dilated back end's 64 channels; SFCN: the spatial encoder's output;
BL: the regression head's 128 channels), all at the density's stride.

A user's own network joins with a few lines (:func:`as_counter`)::

    from autoscale.models import L2S, as_counter
    from autoscale.pipeline import AutoScale, PipelineConfig

    class MyNet(nn.Module):                       # density at stride 8, people per cell
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(8))
            self.head = nn.Conv2d(16, 1, 1)
        def forward(self, x):
            return self.head(self.body(x))

    counter = as_counter(MyNet(), output_stride=8, feature="body", output_conv="head")
    model = AutoScale(counter, L2S(counter.feature_channels), PipelineConfig(variant="regression"))
    result = model.predict(model.prepare(rgb_uint8_image))   # result.count, result.regions

``feature`` names the submodule whose output L2S reads (or the network returns ``(density,
feature)``); ``output_conv`` (optional) names the last convolution, so ``model.output_scale`` can
be folded into it. To save it as one of our checkpoints and load it with ``autoscale predict``,
register a builder: ``register_model("mynet_regression", counter=CounterSpec("regression"))``.
"""
from __future__ import annotations

from collections.abc import Callable
from os import PathLike
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autoscale.errors import ConfigError
from autoscale.models.fpn import FPNOutput
from autoscale.models.vgg import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["DensityCounter", "WrappedCounter", "as_counter", "build_counter", "spread_density", "spread_features"]

Normalization = tuple[tuple[float, float, float], tuple[float, float, float]]


def _repeat(x: torch.Tensor, s: int) -> torch.Tensor:
    """Each element of the last two axes repeated ``s x s`` times (exact nearest up-sampling)."""
    if s == 1:
        return x
    *lead, h, w = x.shape
    return x[..., :, None, :, None].expand(*lead, h, s, w, s).reshape(*lead, h * s, w * s)


def spread_density(density: torch.Tensor, stride: int, h: int, w: int) -> torch.Tensor:
    """A stride-``stride`` density ``(B, C, h', w')`` (people per cell) as ``(B, C, h, w)`` people
    per pixel: each cell's value / ``stride^2`` on its ``stride x stride`` pixels (top-left aligned),
    cropped to ``h x w`` (zeros where the cells do not reach). Sums over whole cells are unchanged."""
    up = _repeat(density, stride)
    if stride != 1:
        up = up / float(stride * stride)
    return _fit(up, h, w)


def spread_features(features: torch.Tensor, stride: int, h: int, w: int) -> torch.Tensor:
    """A stride-``stride`` feature map as ``(B, C, h, w)``: each cell repeated over its pixels,
    cropped to ``h x w`` (edge cells repeated where the cells do not reach)."""
    return _fit(_repeat(features, stride), h, w, mode="replicate")


def _fit(x: torch.Tensor, h: int, w: int, mode: str = "constant") -> torch.Tensor:
    x = x[..., :h, :w]
    ph, pw = h - x.shape[-2], w - x.shape[-1]
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x


class DensityCounter(nn.Module):
    """Base of the counters that predict a density map at a stride (module docstring).

    Subclasses set :attr:`output_stride`, :attr:`input_multiple`, :attr:`feature_channels` (and
    :attr:`feature_stride` when it differs from the density's) and implement :meth:`maps`;
    :attr:`output_conv` names the last convolution (for :meth:`scale_output_`). The final
    activation after it, if any, must be positively homogeneous (ReLU, abs): ``f(a z) = a f(z)``.
    """

    variant: str = "regression"
    output_stride: int = 1
    input_multiple: int = 1
    feature_stride: int | None = None
    feature_channels: int = 0
    output_conv: str | None = None

    @property
    def normalization(self) -> Normalization:
        """``(mean, std)`` in [0, 1] RGB units of the inputs: ImageNet's (the VGG front ends'; the
        from-scratch MCNN uses it too)."""
        return (IMAGENET_MEAN, IMAGENET_STD)

    def maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x`` ``(B, 3, H, W)`` with ``H, W`` multiples of :attr:`input_multiple` ->
        ``(density (B, 1, H/s, W/s) people per cell, feature (B, C, H/f, W/f) or None)``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, return_features: bool = False) -> FPNOutput:
        """The counter interface (module docstring): maps at the input's resolution, no side outputs."""
        H, W = x.shape[-2:]
        m = int(self.input_multiple)
        ph, pw = (-H) % m, (-W) % m
        xp = F.pad(x, (0, pw, 0, ph)) if ph or pw else x
        density, feature = self.maps(xp)
        s = int(self.output_stride)
        want = ((H + ph) // s, (W + pw) // s)
        if tuple(density.shape[-2:]) != want or density.shape[1] != 1:
            raise RuntimeError(f"{type(self).__name__}: a {H + ph}x{W + pw} input gave a density map of shape "
                               f"{tuple(density.shape)}, expected (B, 1, {want[0]}, {want[1]}) at stride {s}")
        final = spread_density(density, s, H, W)
        feats = None
        if return_features:
            if feature is None:
                raise RuntimeError(f"{type(self).__name__} returned no feature map for L2S")
            feats = spread_features(feature, int(self.feature_stride or s), H, W)
        return FPNOutput(final, [], feats, s)

    @torch.no_grad()
    def scale_output_(self, factor: float) -> None:
        """Multiply every output by ``factor > 0`` in place: the weight and bias of
        :attr:`output_conv` (exact through a positively homogeneous final activation)."""
        if not factor > 0:
            raise ValueError(f"output factor must be > 0, got {factor}")
        if self.output_conv is None:
            raise NotImplementedError(f"{type(self).__name__} names no output_conv; model.output_scale "
                                      f"cannot be folded into its weights (leave model.output_scale at 1)")
        layer = self.get_submodule(self.output_conv)
        layer.weight.mul_(factor)
        if layer.bias is not None:
            layer.bias.mul_(factor)


class WrappedCounter(DensityCounter):
    """A user's network as a counter (:func:`as_counter`); it lives in :attr:`net`."""

    def __init__(
        self,
        net: nn.Module,
        *,
        output_stride: int,
        input_multiple: int | None = None,
        feature: str | None = None,
        feature_stride: int | None = None,
        feature_channels: int | None = None,
        output_conv: str | None = None,
        normalization: Normalization = (IMAGENET_MEAN, IMAGENET_STD),
    ):
        super().__init__()
        if int(output_stride) < 1:
            raise ValueError(f"output_stride must be >= 1, got {output_stride}")
        self.net = net
        self.output_stride = int(output_stride)
        self.input_multiple = int(input_multiple or output_stride)
        self.feature_stride = int(feature_stride or output_stride)
        for what, v in (("output_stride", self.output_stride), ("feature_stride", self.feature_stride)):
            if self.input_multiple % v:
                raise ValueError(f"input_multiple {self.input_multiple} must be a multiple of {what} {v}")
        self._norm = (tuple(normalization[0]), tuple(normalization[1]))
        self._feature_name = feature
        self._captured: torch.Tensor | None = None
        if feature is not None:
            modules = dict(net.named_modules())
            if feature not in modules:
                raise ValueError(f"feature {feature!r} is not a submodule of {type(net).__name__} "
                                 f"(submodules: {', '.join(n for n in modules if n)[:200]})")
            modules[feature].register_forward_hook(self._capture)
        if output_conv is not None:
            self.get_submodule(f"net.{output_conv}")
            self.output_conv = f"net.{output_conv}"
        self.feature_channels = int(feature_channels) if feature_channels is not None else self._probe_channels()

    def _capture(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._captured = output

    def _probe_channels(self) -> int:
        """Channels of the feature map, from one forward pass on a small zero image (eval mode)."""
        p = next(self.net.parameters(), None)
        size = 2 * self.input_multiple
        x = torch.zeros(1, 3, size, size, device=p.device if p is not None else None,
                        dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32)
        was = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                _, feature = self.maps(x)
        finally:
            self.net.train(was)
        if feature is None:
            raise ValueError("the network returns only a density map: name the submodule L2S reads (feature=...) "
                             "or return (density, feature)")
        return int(feature.shape[1])

    @property
    def normalization(self) -> Normalization:
        return self._norm

    def maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        self._captured = None
        out = self.net(x)
        feature = self._captured
        self._captured = None  # hold no graph between calls
        if isinstance(out, (tuple, list)):
            density, feature = out[0], out[1]
        else:
            density = out
        return density, feature


def as_counter(net: nn.Module, *, output_stride: int, feature: str | None = None, **kwargs: Any) -> WrappedCounter:
    """Wrap a density network as a counter (module docstring has the example).

    ``net(x)`` returns the density ``(B, 1, H/s, W/s)`` in people per cell for an input whose sides
    are multiples of ``input_multiple`` (default ``output_stride``), or ``(density, feature)``.
    ``feature``: the name of the submodule whose output L2S reads (captured with a forward hook).
    Keyword arguments of :class:`WrappedCounter`: ``input_multiple``, ``feature_stride`` (default
    ``output_stride``), ``feature_channels`` (default: found by one forward pass on a zero image),
    ``output_conv`` (the last convolution, for ``model.output_scale``), ``normalization``.
    """
    return WrappedCounter(net, output_stride=output_stride, feature=feature, **kwargs)


def build_counter(
    cls: Callable[..., nn.Module],
    *,
    name: str,
    variant: str = "regression",
    weights: Any = None,
    imagenet: str | PathLike[str] | None = None,
    official_init: bool = False,
    init: str = "official",
    **kwargs: Any,
) -> nn.Module:
    """The one private builder of the Table 9 counters: ``cls(**kwargs)``, initialised with
    ``init`` (:func:`autoscale.models.init.init_weights`; ``official`` = N(0, 0.01) convolutions,
    zero biases, BN 1 / 0, the initialisation of MCNN's, CSRNet's, CAN's and SFCN's code; then the
    model's own ``after_init()`` when it has one), then the
    backbone's ImageNet convolutions from a local torchvision file (``imagenet``; counters with a
    ``backbone`` only), then ``weights`` (one of our checkpoints, strictly).

    ``official_init`` is the AutoScale authors' partial FPN initialisation and is refused here.
    """
    from autoscale.models.init import init_weights
    from autoscale.models.registry import _apply_weights, resolve_imagenet

    if official_init:
        raise ConfigError(f"{name}: model.official_init reproduces the AutoScale authors' FPN initialisation; "
                          f"it does not apply to this counter")
    model = cls(**kwargs)
    init_weights(model, init)  # type: ignore[arg-type]
    if hasattr(model, "after_init"):  # layers whose initialisation does not follow the scheme (SFCN)
        model.after_init()
    if imagenet is not None:
        backbone = getattr(model, "backbone", None)
        if backbone is None or not hasattr(backbone, "load_imagenet"):
            raise ConfigError(f"{name} has no ImageNet backbone; leave model.imagenet unset")
        path = resolve_imagenet(backbone.arch, imagenet)
        backbone.load_imagenet(path)
    _apply_weights(model, weights, "fpn", variant)
    return model
