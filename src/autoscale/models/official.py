"""Convert the authors' released checkpoints to ours and back (official-code-facts §1, §9).

The authors' files are ``torch.save`` dicts ``{'state_dict': ..., 'rate_state_dict': ...}`` (older
ones: ``'pre_state_dict'``) saved from ``nn.DataParallel``, so keys usually carry ``module.``.
Their models contain modules that the forward pass never uses (regression: ``densend``, ``fuse``,
``cd1``, ``dsn1``, ``rd2``, ``up5``, ``up2``; localization: ``up5``); our models do not build
them, and :func:`convert_official` keeps those tensors under ``"official_unused"`` so that
:func:`to_official` reproduces the original tensors exactly.

Every key is accounted for: a missing, unexpected or mis-shaped key raises
:class:`CheckpointError` listing all of them -- never a silent partial load (the authors'
localization loader uses ``strict=False`` and would silently keep random weights).

Name mapping (our backbone keeps torchvision indices ``backbone.features.N``):

* regression: ``frontend.N`` <-> ``backbone.features.N`` (N < 23, conv1_1..conv4_3),
  ``backend.{0,2,4}`` <-> ``backbone.features.{24,26,28}`` (dilated conv5);
* localization: ``conv{k}.{j}`` <-> ``backbone.features.{start_k + j}`` with stage starts
  0, 4, 9, 16, 23 (``conv1.0`` = features.0, ``conv2.1`` = features.5, ..., ``conv5.5`` = features.28);
* every other key (``cdK``, ``rdK``, ``upK``, ``dsnK``) keeps its name; the rate net
  (``des_dimension``, ``ROI_feat``, ``output``) keeps its names in :class:`~autoscale.models.l2s.L2S`.
"""
from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any

import torch

from autoscale.errors import CheckpointError
from autoscale.models.fpn import LocalizationFPN, RegressionFPN
from autoscale.models.l2s import L2S
from autoscale.models.registry import CHECKPOINT_FORMAT, backbone_normalization
from autoscale.models.vgg import conv_indices, load_torch_file, pool_indices

__all__ = ["VARIANTS", "convert_official", "official_shapes", "read_official", "to_official"]

PREFIX = "module."

VARIANTS: dict[str, dict[str, Any]] = {
    "regression": {
        "model": "fpn_regression",
        "cls": RegressionFPN,
        "kwargs": {"backbone": "vgg16", "width": 1.0},
        "l2s": {"head": "official_regression", "bound": "official", "pool": "avg"},
    },
    "localization": {
        "model": "fpn_localization",
        "cls": LocalizationFPN,
        "kwargs": {"backbone": "vgg16", "width": 1.0, "num_classes": 11},
        "l2s": {"head": "paper", "bound": "official", "pool": "max"},
    },
}


def _conv(name: str, out: int, inp: int, k: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (out, inp, k, k), f"{name}.bias": (out,)}


def _unused_shapes(variant: str) -> dict[str, tuple[int, ...]]:
    """Shapes of the official modules that the forward pass never uses."""
    if variant == "regression":
        return {
            **_conv("densend.0", 256, 512, 3), **_conv("densend.2", 128, 256, 3), **_conv("densend.4", 64, 128, 3),
            **_conv("fuse.0", 28, 112, 3), **_conv("fuse.2", 1, 28, 1), **_conv("cd1.0", 32, 64, 3),
            **_conv("dsn1", 1, 40, 1), **_conv("rd2.0", 8, 40, 1), **_conv("up5", 8, 8, 4), **_conv("up2", 8, 8, 4),
        }
    return _conv("up5", 8, 8, 4)


def _backbone_map(variant: str) -> dict[str, str]:
    """our backbone conv name prefix -> official name prefix (VGG16)."""
    pools = pool_indices("vgg16")
    out = {}
    for i in conv_indices("vgg16"):
        if variant == "regression":
            off = f"frontend.{i}" if i < pools[3] else f"backend.{i - pools[3] - 1}"
        else:
            stage = sum(i > p for p in pools[:4])
            start = 0 if stage == 0 else pools[stage - 1]
            off = f"conv{stage + 1}.{i - start}"
        out[f"backbone.features.{i}"] = off
    return out


def _key_map(variant: str) -> dict[str, str]:
    """our FPN state_dict key -> official key."""
    bmap = _backbone_map(variant)
    with torch.device("meta"):
        model = VARIANTS[variant]["cls"](**VARIANTS[variant]["kwargs"])
    out = {}
    for k in model.state_dict():
        mod, _, param = k.rpartition(".")
        out[k] = f"{bmap[mod]}.{param}" if mod in bmap else k
    return out


def _shapes_of(module_factory) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        m = module_factory()
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def official_shapes(variant: str) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """``(state_dict, rate_state_dict)`` key -> shape tables of the authors' checkpoints (no prefix)."""
    _check_variant(variant)
    ours = _shapes_of(lambda: VARIANTS[variant]["cls"](**VARIANTS[variant]["kwargs"]))
    main = {off: ours[k] for k, off in _key_map(variant).items()}
    main.update(_unused_shapes(variant))
    cfg = VARIANTS[variant]["l2s"]
    rate = _shapes_of(lambda: L2S(152, head=cfg["head"], bound=cfg["bound"], pool=cfg["pool"]))
    return main, rate


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise CheckpointError(f"unknown variant {variant!r}; choose from {sorted(VARIANTS)}")


def _problems(state: dict[str, Any], expected: dict[str, tuple[int, ...]]) -> list[str]:
    from autoscale.models.vgg import key_problems

    return key_problems(state, expected)


def _strip(state: Any, source: str, what: str) -> tuple[dict[str, torch.Tensor], bool]:
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: '{what}' is a {type(state).__name__}, not a dict of tensors")
    out: dict[str, torch.Tensor] = {}
    prefixed = False
    for k, v in state.items():
        if not isinstance(k, str):
            raise CheckpointError(f"{source}: '{what}' has a non-string key {k!r}")
        name = k[len(PREFIX):] if k.startswith(PREFIX) else k
        prefixed |= name != k
        if name in out:
            raise CheckpointError(f"{source}: '{what}' holds {name!r} both with and without 'module.'")
        out[name] = v
    return out, prefixed


def read_official(src_path: str | PathLike[str]) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` an official file; CheckpointError if unreadable / not a dict."""
    p = Path(src_path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint file not found")
    raw = load_torch_file(p)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{p}: expected a dict with 'state_dict', got {type(raw).__name__}")
    return raw


def convert_official(src_path: str | PathLike[str] | dict[str, Any], variant: str) -> dict[str, Any]:
    """Convert an authors' checkpoint (path, or the loaded dict) to our checkpoint format.

    Accepts ``'state_dict'`` or the legacy ``'pre_state_dict'``, keys with or without ``module.``;
    ``'rate_state_dict'`` is optional (``l2s_state_dict`` is then None). Raises
    :class:`CheckpointError` summarising the missing / unexpected / mis-shaped keys (counts, first names).
    """
    _check_variant(variant)
    source = "<dict>" if isinstance(src_path, dict) else str(src_path)
    raw = src_path if isinstance(src_path, dict) else read_official(src_path)
    main_key = next((k for k in ("state_dict", "pre_state_dict") if k in raw), None)
    if main_key is None:
        raise CheckpointError(f"{source}: no 'state_dict' (or legacy 'pre_state_dict'); keys are {sorted(map(str, raw))}")
    extra = sorted(str(k) for k in raw if k not in (main_key, "rate_state_dict"))
    main, prefixed = _strip(raw[main_key], source, main_key)
    exp_main, exp_rate = official_shapes(variant)
    problems = _problems(main, exp_main)
    if problems:
        other = "localization" if variant == "regression" else "regression"
        hint = ""
        if not _problems(main, official_shapes(other)[0]):
            hint = f" (this is a {other} checkpoint: use --variant {other})"
        raise CheckpointError(f"{source}: not an official {variant} checkpoint{hint}: '{main_key}' has " + "; ".join(problems))
    rate = None
    if "rate_state_dict" in raw:
        rate, _ = _strip(raw["rate_state_dict"], source, "rate_state_dict")
        problems = _problems(rate, exp_rate)
        if problems:
            raise CheckpointError(f"{source}: 'rate_state_dict' does not fit the {variant} rate net: " + "; ".join(problems))
    from autoscale.models.checkpoint import make_checkpoint

    kmap = _key_map(variant)
    cfg = VARIANTS[variant]
    return make_checkpoint(
        {ours: main[off] for ours, off in kmap.items()}, rate, variant=variant, model_name=cfg["model"],
        model_kwargs=cfg["kwargs"], l2s_config=cfg["l2s"], normalization=backbone_normalization("vgg16"),
        official_unused={k: main[k] for k in _unused_shapes(variant)},
        source={"path": source, "state_key": main_key, "module_prefix": prefixed, "other_keys": extra},
    )


def to_official(ckpt: dict[str, Any], *, fill_unused: bool = False) -> dict[str, Any]:
    """Inverse of :func:`convert_official`: ``{'state_dict': {'module.'+k: ...}, 'rate_state_dict': ...}``.

    The unused official modules come from ``ckpt['official_unused']``; for a checkpoint trained
    here (which has none) pass ``fill_unused=True`` to write zeros for them.
    """
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError("not an autoscale checkpoint (no 'format': 'autoscale-checkpoint')")
    variant = ckpt.get("variant")
    if variant not in VARIANTS:
        raise CheckpointError(f"checkpoint variant {variant!r} has no official counterpart")
    kmap = _key_map(variant)
    exp_main, exp_rate = official_shapes(variant)
    ours = ckpt["state_dict"]
    problems = _problems(ours, {k: exp_main[off] for k, off in kmap.items()})
    if problems:
        raise CheckpointError(f"checkpoint does not fit the official {variant} model (VGG16, width 1): " + "; ".join(problems))
    unused_exp = _unused_shapes(variant)
    unused = ckpt.get("official_unused")
    if unused is None and fill_unused:
        unused = {k: torch.zeros(s) for k, s in unused_exp.items()}
    if unused is None:
        raise CheckpointError("checkpoint has no 'official_unused' tensors; pass fill_unused=True to write zeros")
    problems = _problems(unused, unused_exp)
    if problems:
        raise CheckpointError("'official_unused' does not match the official model: " + "; ".join(problems))
    main = {PREFIX + off: ours[k] for k, off in kmap.items()}
    main.update({PREFIX + k: v for k, v in unused.items()})
    out: dict[str, Any] = {"state_dict": main}
    rate = ckpt.get("l2s_state_dict")
    if rate is not None:
        problems = _problems(rate, exp_rate)
        if problems:
            raise CheckpointError(f"L2S weights do not fit the official {variant} rate net: " + "; ".join(problems))
        out["rate_state_dict"] = {PREFIX + k: v for k, v in rate.items()}
    return out
