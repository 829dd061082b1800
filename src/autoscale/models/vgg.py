"""VGG16 / VGG19 defined here with torchvision's parameter names, and local ImageNet weights.

The modules reproduce torchvision's layout exactly (``features.N.weight`` with the same ``N``,
``classifier.0/3/6``), so torchvision's ``vgg16-397923af.pth`` / ``vgg19-dcbe5e0e.pth`` load
key-for-key. Nothing is ever downloaded: :func:`load_imagenet_vgg` reads a file the user gives.

A ``width`` multiplier scales every channel count (``max(1, round(c * width))``) to build
narrow networks for tests; only ``width=1`` matches the ImageNet weights.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoscale.errors import CheckpointError

__all__ = [
    "CFGS",
    "IMAGENET_FILES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VGG",
    "VGGFeatures",
    "check_state_dict",
    "conv_indices",
    "key_problems",
    "load_torch_file",
    "load_imagenet_vgg",
    "make_layers",
    "normalize",
    "pool_indices",
    "scaled",
    "vgg16",
    "vgg19",
]

#: torchvision's VGG configurations ("M" = 2x2 max-pool, stride 2).
CFGS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
#: file names torchvision uses for the ImageNet weights (for messages only; never downloaded).
IMAGENET_FILES = {"vgg16": "vgg16-397923af.pth", "vgg19": "vgg19-dcbe5e0e.pth"}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded, at least 1."""
    return max(1, int(round(channels * width)))


def _check_arch(arch: str) -> list[int | str]:
    if arch not in CFGS:
        raise ValueError(f"unknown VGG architecture {arch!r}; choose from {sorted(CFGS)}")
    return CFGS[arch]


def make_layers(cfg: list[int | str], width: float = 1.0) -> list[nn.Module]:
    """torchvision's ``make_layers`` (no batch norm): conv3x3(p1)+ReLU per int, MaxPool(2,2) per 'M'."""
    layers: list[nn.Module] = []
    in_ch = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            out = scaled(int(v), width)
            layers += [nn.Conv2d(in_ch, out, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_ch = out
    return layers


def conv_indices(arch: str) -> list[int]:
    """Indices ``N`` of the convolutions in ``features`` (VGG16: 0, 2, 5, ..., 28)."""
    return [i for i, m in enumerate(make_layers_meta(arch)) if m == "C"]


def pool_indices(arch: str) -> list[int]:
    """Indices of the five max-pools in ``features`` (VGG16: 4, 9, 16, 23, 30)."""
    return [i for i, m in enumerate(make_layers_meta(arch)) if m == "M"]


def make_layers_meta(arch: str) -> list[str]:
    """The layer kinds of ``features`` without building modules: 'C' conv, 'R' ReLU, 'M' pool."""
    kinds: list[str] = []
    for v in _check_arch(arch):
        kinds += ["M"] if v == "M" else ["C", "R"]
    return kinds


class VGG(nn.Module):
    """torchvision-layout VGG (``features``, ``avgpool``, ``classifier``)."""

    def __init__(self, arch: str = "vgg16", *, width: float = 1.0, num_classes: int = 1000):
        super().__init__()
        self.arch = arch
        self.features = nn.Sequential(*make_layers(_check_arch(arch), width))
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        c5, hidden = scaled(512, width), scaled(4096, width)
        self.classifier = nn.Sequential(
            nn.Linear(c5 * 7 * 7, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class VGGFeatures(nn.Module):
    """The first ``stages`` stages of a VGG's ``features`` (torchvision indices, so ImageNet weights
    load key-for-key), ending before the pool that follows stage ``stages``: ``stages=4`` is
    CSRNet's front end (VGG16 conv1_1..conv4_3, "the first ten layers", Li et al. CVPR 2018 §3.1;
    3 pools, stride 8), ``stages=5`` is the Bayesian-loss network's VGG19 without its last pool
    (Ma et al. ICCV 2019 §5; 4 pools, stride 16). Pools are 2x2 / stride 2, floor mode: an input
    whose sides are multiples of :attr:`stride` gives ``(H / stride, W / stride)``.

    Attributes: ``arch``, ``channels`` (of the output), ``stride`` (input px per output px).
    """

    def __init__(self, arch: str = "vgg16", width: float = 1.0, *, stages: int = 4):
        super().__init__()
        if stages not in (1, 2, 3, 4, 5):
            raise ValueError(f"stages must be 1..5, got {stages}")
        cfg = _check_arch(arch)
        self.arch = arch
        end = pool_indices(arch)[stages - 1]
        self.features = nn.Sequential(*make_layers(cfg, width)[:end])
        self.stride = 2 ** (stages - 1)
        convs = [v for v in cfg[: [i for i, v in enumerate(cfg) if v == "M"][stages - 1]] if v != "M"]
        self.channels = scaled(int(convs[-1]), width)
        self.conv_indices = [i for i in conv_indices(arch) if i < end]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def load_imagenet(self, path: str | PathLike[str]) -> list[str]:
        """Copy torchvision's ImageNet weights (a local file, checked strictly by
        :func:`load_imagenet_vgg`) into every convolution here; returns the copied
        ``features.N.*`` keys. A narrow model (``width != 1``) raises :class:`CheckpointError`."""
        state = load_imagenet_vgg(path, self.arch)
        own = self.state_dict()
        keys = [f"features.{i}.{p}" for i in self.conv_indices for p in ("weight", "bias")]
        bad = [f"{k} {tuple(own[k].shape)} vs ImageNet {tuple(state[k].shape)}" for k in keys if own[k].shape != state[k].shape]
        if bad:
            raise CheckpointError(f"{path}: ImageNet weights do not fit this model (width must be 1): "
                                  f"{len(bad)} mis-shaped keys, e.g. {bad[0]}")
        with torch.no_grad():
            for k in keys:
                own[k].copy_(state[k])
        return keys


def vgg16(*, width: float = 1.0, num_classes: int = 1000) -> VGG:
    return VGG("vgg16", width=width, num_classes=num_classes)


def vgg19(*, width: float = 1.0, num_classes: int = 1000) -> VGG:
    return VGG("vgg19", width=width, num_classes=num_classes)


def expected_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of torchvision's full-width ImageNet VGG state_dict (built on the meta device)."""
    with torch.device("meta"):
        model = VGG(arch)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_torch_file(path: Path) -> Any:
    """``torch.load(path, weights_only=True, map_location="cpu")``: tensors and plain values only,
    never code. Any failure is one :class:`CheckpointError` line naming ``path``; a file that holds
    pickled objects or code says so (torch's own message spans lines and suggests
    ``weights_only=False``, which would run that code)."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a corrupt or foreign file
        text = str(exc)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if "Weights only load failed" in text:
            why = next((ln for ln in lines if "GLOBAL" in ln or "global" in ln), "")
            detail = "it holds pickled objects or code, which are never unpickled" + (f": {why}" if why else "")
        else:
            first = lines[0] if lines else ""
            detail = f"{type(exc).__name__}: {first if len(first) <= 200 else first[:197] + '...'}"
        raise CheckpointError(f"{path}: cannot read as a torch checkpoint ({detail})") from exc


def _natural(key: str) -> list[Any]:
    return [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", key)]


def _first(items: list[str], n: int) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def key_problems(state: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], *, show: int = 4) -> list[str]:
    """How ``state`` differs from ``expected`` (key -> shape), summarised: one entry each for the
    missing, unexpected and mis-shaped keys with their count and the first ``show`` names (natural
    order; a whole different network is hundreds of keys, so never the full list). Empty = fits."""
    def shape(v: Any) -> str:
        return str(tuple(v.shape)) if isinstance(v, torch.Tensor) else type(v).__name__

    missing = sorted((k for k in expected if k not in state), key=_natural)
    unexpected = sorted((str(k) for k in state if k not in expected), key=_natural)
    shaped = [f"{k} {shape(state[k])} (expected {tuple(expected[k])})"
              for k in sorted((k for k in state if k in expected), key=_natural)
              if not isinstance(state[k], torch.Tensor) or tuple(state[k].shape) != tuple(expected[k])]
    out = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shaped)):
        if keys:
            out.append(f"{what} keys ({len(keys)}): {_first(keys, show)}")
    return out


def check_state_dict(
    state: dict[str, torch.Tensor],
    expected: dict[str, tuple[int, ...]],
    source: str,
) -> None:
    """Raise one :class:`CheckpointError` line naming ``source`` when ``state`` does not fit
    ``expected``: the counts of missing, unexpected and mis-shaped keys and the first few names
    of each (:func:`key_problems`)."""
    problems = key_problems(state, expected)
    if problems:
        raise CheckpointError(f"{source}: weights do not fit the model: " + "; ".join(problems))


def load_imagenet_vgg(path: str | PathLike[str], arch: str = "vgg16") -> dict[str, torch.Tensor]:
    """Load torchvision's ImageNet VGG weights from a LOCAL file and check them strictly.

    ``path`` is e.g. ``vgg16-397923af.pth``. Loaded with ``torch.load(weights_only=True,
    map_location="cpu")``. Every key of torchvision's layout must be present with its shape and
    no other key may appear; otherwise :class:`CheckpointError` summarises the offenders.
    """
    _check_arch(arch)
    hint = f"ImageNet weights must be supplied locally (torchvision's {IMAGENET_FILES[arch]}); nothing is downloaded"
    return load_imagenet_state(path, arch, expected_shapes(arch), hint)


def load_imagenet_state(path: str | PathLike[str], arch: str, expected: dict[str, tuple[int, ...]],
                        missing_hint: str) -> dict[str, torch.Tensor]:
    """A local ImageNet state dict of backbone ``arch``, checked strictly against ``expected``
    shapes (every key, nothing else); ``missing_hint`` ends the message for an absent file."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: ImageNet weights file not found; {missing_hint}")
    state = load_torch_file(p)
    if not isinstance(state, dict):
        raise CheckpointError(f"{p}: expected a state_dict (dict), got {type(state).__name__}")
    check_state_dict(state, expected, f"{p} ({arch} ImageNet weights)")
    return state


def normalize(
    img: np.ndarray | torch.Tensor,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> torch.Tensor:
    """Normalise an RGB image into a float32 ``(B, 3, H, W)`` tensor: ``(x - mean) / std``.

    Accepts a ``uint8 (H, W, 3)`` numpy array (0..255), a float ``(H, W, 3)`` numpy array in
    [0, 1], or a tensor ``(3, H, W)`` / ``(B, 3, H, W)`` that is uint8 (0..255) or float in [0, 1].
    ``mean``/``std`` are in [0, 1] units; the default is ImageNet's (VGG); pass
    ``*autoscale.models.backbone_normalization(name)`` for another backbone.
    """
    if isinstance(img, np.ndarray):
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB array, got shape {img.shape}")
        arr = np.ascontiguousarray(img)
        if not arr.flags.writeable:  # torch.from_numpy warns on read-only arrays (e.g. decoded images)
            arr = arr.copy()
        t = torch.from_numpy(arr).permute(2, 0, 1)
    elif isinstance(img, torch.Tensor):
        t = img
    else:
        raise TypeError(f"expected numpy array or tensor, got {type(img).__name__}")
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4 or t.shape[1] != 3:
        raise ValueError(f"expected (3, H, W) or (B, 3, H, W), got {tuple(t.shape)}")
    unit = 255.0 if t.dtype == torch.uint8 else 1.0
    if t.dtype != torch.uint8:
        t = t.float()
    # one pass: x * (1 / (unit * std)) - mean / std (uint8 is promoted inside the op)
    scale = torch.tensor([1.0 / (unit * v) for v in std], dtype=torch.float32, device=t.device).view(1, 3, 1, 1)
    shift = torch.tensor([-a / b for a, b in zip(mean, std)], dtype=torch.float32, device=t.device).view(1, 3, 1, 1)
    return torch.addcmul(shift, t, scale)
