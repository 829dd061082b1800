"""The training engine: ``train(cfg) -> TrainResult``.

Per step (``batch_size`` images per process): for ``method="autoscale"`` each image's joint loss
(paper Eq. 6 / Eq. 8, :func:`autoscale.pipeline.joint_loss`: first pass + re-prediction of the
zoomed dense region + lambda x centre loss); for ``method="fpn"`` (the baseline) the first-pass
pixel loss only. The step loss is the mean over the batch's images; one backward, one Adam step.

Optimiser: Adam with parameter groups ``counter`` (``optim.lr``, weight decay; with
``optim.backbone_lr`` the backbone gets its own group ``backbone`` before it), ``l2s``
(``optim.l2s_lr``) and, in ``official`` centre mode, ``center`` (``optim.center_lr``, no decay).
In ``paper`` centre mode C is not in the optimiser: :meth:`CenterLoss.step_center` (Eq. 4) runs
every ``optim.center_every`` steps, or at the end of each epoch when that is None (T = 1 epoch).

Outputs in ``cfg.out``: ``last.pt`` (every epoch and on SIGINT/SIGTERM, written atomically),
``best.pt`` (lowest validation MAE), ``history.json`` / ``history.csv`` (one row per epoch: mean
losses, learning rate, wall time, validation metrics; AutoScale runs add ``regions``, the number of
the epoch's images whose joint loss refined a dense region, and the centre ``center``),
``epoch_<N>.pt`` for ``keep_epochs``, a model card ``<name>.json`` beside every checkpoint
(:func:`write_model_card`), ``run.json`` (marks the folder as ours), TensorBoard scalars in ``tb/``
when available. Nothing is written to ``cfg.out`` (not even the folder) before the datasets and the
model have been built: a run that fails on its data or config leaves the folder as it was.
Checkpoints are plain models (:func:`autoscale.models.checkpoint.make_checkpoint`: a regression
``model.output_scale`` folded into the weights, the input normalisation recorded) plus the training
state; ``cpu_seconds`` is the run's process CPU time (main process), an ``init_from`` parent's
included.

Learning rate: ``optim.schedule`` (constant / cosine / step, optional linear warm-up) is set per
step from the global step, so resumed and branched runs follow the same curve (:func:`lr_factor`).

Branching (``init_from``): an AutoScale run starts from an FPN run's kept checkpoint with its
weights, a copy of its Adam state, its epoch, step, RNG and schedule; a fresh L2S (and in
``official`` centre mode the centre) join as new parameter groups. This is how the demo and the
benchmarks compare AutoScale with its FPN at equal budgets.

Resuming (``train(cfg, resume=True)`` or a checkpoint path) restores weights, optimiser, centre,
RNG states, epoch and position inside the epoch; with data order from
``DistributedSampler(seed).set_epoch(epoch)`` and augmentation drawn from ``(seed, epoch, index)``
the continued run computes the same losses as an uninterrupted one. ``resume="auto"`` continues
``<out>/last.pt`` when it exists, else starts. Under ``torchrun --max-restarts N`` a worker group
that the elastic agent restarted after a rank died continues its own ``last.pt`` by itself (the
job recorded in ``run.json`` must be this torchrun's; :func:`_resolve_resume`).

Faults (docs/reliability.md): a step whose loss (any image's, on any rank) or gradient is NaN/Inf
is never applied. ``optim.nonfinite="stop"`` (default) raises one :class:`AutoScaleError` line
naming the image file(s), epoch, step and what ``last.pt`` holds; nothing is written after the
last completed epoch. ``"skip"`` drops the step (no optimiser step, gradients cleared, the
buffers its forward pass changed restored) but counts it in the step position and learning-rate
schedule, prints one warning per skipped step (main process), records the epoch's count as
``skipped`` in the history row and ``skipped_in_epoch`` in mid-epoch checkpoints (exact resume),
and raises when every step of an epoch was skipped. A checkpoint is never written with non-finite
weights, and a failed write (disk full) raises one line naming the file and saying the previous
one is intact (:func:`autoscale.engine.checkpoint.save_atomic`).
"""
from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from autoscale.engine import distributed as D
from autoscale.device import resolve_device  # the one device resolver (re-exported here)
from autoscale.engine.checkpoint import code_version, load_training_checkpoint, rng_state, save_atomic, set_rng_state
from autoscale.engine.config import TrainConfig, config_to_dict
from autoscale.engine.dataset import build_dataset, collate, resolve_sigma
from autoscale.errors import AutoScaleError, CheckpointError, ConfigError
from autoscale.io import atomic_write_text
from autoscale.losses import CenterLoss, num_output_channels
from autoscale.metrics import counting_metrics
from autoscale.models.checkpoint import cpu_state_dict, make_checkpoint
from autoscale.models.init import ScaledCounter, unwrap_counter
from autoscale.models.registry import get_model, model_spec
from autoscale.pipeline import AutoScale, PipelineConfig, joint_loss, pixel_loss

__all__ = ["TrainResult", "train", "build_model", "resolve_device", "model_checkpoint", "lr_factor", "write_model_card",
           "RUN_MARKER"]

RUN_MARKER = "run.json"


@dataclass
class TrainResult:
    """What :func:`train` produced. ``step_losses``: the per-step (global mean) losses of this call;
    ``interrupted``: stopped by SIGINT/SIGTERM (``last.pt`` holds the exact position)."""

    out_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    interrupted: bool = False
    epoch: int = 0
    step: int = 0


# ------------------------------------------------------------------------------------ helpers
def _pipeline_config(cfg: TrainConfig) -> PipelineConfig:
    """The pipeline settings with variant and sigma taken from the model / data sections."""
    p = PipelineConfig(**{k: getattr(cfg.pipeline, k) for k in cfg.pipeline.__dataclass_fields__})
    p.variant = cfg.model.variant
    p.sigma = resolve_sigma(cfg.data)
    p.edges = tuple(p.edges)
    return p


def _model_spec(cfg: TrainConfig) -> tuple[str, dict[str, Any]]:
    """``(registered counter name, builder kwargs)``: ``model.counter`` (the FPN by default)."""
    m = cfg.model
    n_cls = num_output_channels(cfg.pipeline.loss, len(cfg.pipeline.edges)) if m.variant == "localization" else None
    return model_spec(m.counter, m.variant, backbone=m.backbone, width=float(m.width), num_classes=n_cls)


def build_model(cfg: TrainConfig) -> AutoScale:
    """The counter (+ L2S for ``method="autoscale"``) wired as :class:`AutoScale`, initialised
    from ``cfg.seed`` (``model.init``, then ``model.imagenet`` weights when given). A regression
    counter with ``model.output_scale != 1`` is wrapped in a :class:`ScaledCounter` (factor
    ``1 / output_scale``), so the network itself learns ``output_scale`` x density."""
    torch.manual_seed(cfg.seed)
    name, kwargs = _model_spec(cfg)
    counter = get_model(name, **kwargs, init=cfg.model.init, imagenet=cfg.model.imagenet,
                        official_init=cfg.model.official_init)
    if cfg.model.variant == "regression" and cfg.model.output_scale != 1.0:
        counter = ScaledCounter(counter, 1.0 / cfg.model.output_scale)
    l2s = None
    if cfg.method == "autoscale" and cfg.pipeline.fixed_scale is None:
        l2s = get_model(f"l2s_{cfg.model.variant}", in_channels=counter.feature_channels, official=cfg.model.l2s_official)
    return AutoScale(counter, l2s, _pipeline_config(cfg))


def model_checkpoint(model: AutoScale, cfg: TrainConfig, **extra: Any) -> dict[str, Any]:
    """The model checkpoint of a training model (:func:`autoscale.models.checkpoint.make_checkpoint`:
    output factor folded, normalisation recorded) + pipeline, config, method and code version."""
    name, kwargs = _model_spec(cfg)
    return make_checkpoint(model.counter, model.l2s, variant=cfg.model.variant, model_name=name,
                           model_kwargs=kwargs, pipeline=config_to_dict(model.config),
                           config=config_to_dict(cfg), code_version=code_version(), method=cfg.method, **extra)


def lr_factor(step: int, steps_per_epoch: int, o: Any) -> float:
    """The learning-rate multiplier at optimiser step ``step`` (0-based) of the schedule ``o``
    (:class:`OptimConfig`: ``schedule``, ``warmup_epochs``, ``min_lr_ratio``, ``milestones``,
    ``gamma``) over ``o.epochs * steps_per_epoch`` steps."""
    total = max(1, o.epochs * steps_per_epoch)
    warm = o.warmup_epochs * steps_per_epoch
    if warm > 0 and step < warm:
        return (step + 1) / warm
    if o.schedule == "cosine":
        t = min(max((step - warm) / max(total - warm, 1.0), 0.0), 1.0)
        return o.min_lr_ratio + 0.5 * (1.0 - o.min_lr_ratio) * (1.0 + math.cos(math.pi * t))
    if o.schedule == "step":
        epoch = step // max(steps_per_epoch, 1)
        return o.gamma ** sum(epoch >= m for m in o.milestones)
    return 1.0


def _group(params: Any, lr: float, name: str, weight_decay: float) -> dict[str, Any]:
    """One named Adam parameter group; ``base_lr`` is what the schedule scales each step."""
    return {"params": list(params), "lr": lr, "base_lr": lr, "weight_decay": weight_decay, "name": name}


def _counter_groups(counter: torch.nn.Module, fpn: torch.nn.Module, o: Any) -> list[dict[str, Any]]:
    """The counter's Adam parameter groups: one ``counter`` group at ``optim.lr``, or, with
    ``optim.backbone_lr`` set, ``backbone`` (``fpn.backbone``'s parameters at that rate) then
    ``counter`` (every other parameter at ``optim.lr``)."""
    if o.backbone_lr is None:
        return [_group(counter.parameters(), o.lr, "counter", o.weight_decay)]
    backbone = getattr(fpn, "backbone", None)
    if not isinstance(backbone, torch.nn.Module):
        raise ConfigError(f"optim.backbone_lr: the counter {type(fpn).__name__} has no backbone; leave it null")
    ids = {id(p) for p in backbone.parameters()}
    rest = [p for p in counter.parameters() if id(p) not in ids]
    return [_group(backbone.parameters(), o.backbone_lr, "backbone", o.weight_decay),
            _group(rest, o.lr, "counter", o.weight_decay)]


def _freeze_backbone_bn(counter: torch.nn.Module) -> None:
    """Put the backbone's BatchNorm layers in eval mode (running statistics frozen)."""
    fpn, _ = unwrap_counter(counter)
    for m in getattr(fpn, "backbone", torch.nn.Identity()).modules():  # a counter may have none (MCNN)
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def write_model_card(ckpt_path: Path, ckpt: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """``<name>.json`` beside ``<name>.pt``: backbone, data, resolution, epochs, CPU minutes, metrics."""
    c = ckpt.get("config") or {}
    d, m, o = c.get("data", {}), c.get("model", {}), c.get("optim", {})
    card = {
        "checkpoint": ckpt_path.name, "variant": ckpt["variant"], "method": ckpt.get("method"),
        "model": ckpt["model"], "backbone": ckpt["model"]["kwargs"].get("backbone"),
        "imagenet": m.get("imagenet"), "normalization": ckpt.get("normalization"),
        "data": {k: d.get(k) for k in ("format", "root", "train_split", "val_split", "limit")},
        "resolution": {"resize": d.get("resize"), "crop": d.get("crop"), "scale_range": d.get("scale_range")},
        "epochs": ckpt.get("epoch"), "epochs_planned": o.get("epochs"), "steps": ckpt.get("step"),
        "cpu_minutes": round(float(ckpt.get("cpu_seconds", 0.0)) / 60.0, 3),
        "metrics": ckpt.get("metrics") or {}, "code_version": ckpt.get("code_version"),
        "use": f"autoscale predict IMAGES --checkpoint {ckpt_path} --out OUT",
    }
    card.update(extra or {})
    path = ckpt_path.with_suffix(".json")
    _write_text_atomic(path, json.dumps(card, indent=1) + "\n", "model card")
    return path


def _write_text_atomic(path: Path, text: str, what: str, newline: str | None = None) -> None:
    atomic_write_text(path, text, what, newline=newline)


def _stale_temp_files(out: Path) -> list[Path]:
    """Temporary files of atomic writes (:func:`autoscale.io.atomic_path`: ``.<name>.<random>.tmp``)
    that a killed process left in ``out``; no write of this run is in progress when it is called."""
    return [p for p in out.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file()]


def _check_out(out: Path, resume: bool) -> None:
    """Refuse a foreign non-empty folder, (without resume) a finished run, or a path that cannot
    become a writable folder - without creating or writing anything."""
    existing = out
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise AutoScaleError(f"{out}: output folder is not writable ({existing} is not a directory)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise AutoScaleError(f"{out}: output folder is not writable ({existing}: permission denied)")
    if existing != out:
        return
    stale = set(_stale_temp_files(out))
    entries = [p for p in out.iterdir() if p.name != ".write_test" and p not in stale]
    if entries and not (out / RUN_MARKER).is_file():
        raise AutoScaleError(f"{out}: output folder is not empty and not an autoscale training run; "
                             f"choose another out=... or empty it")
    if (out / "last.pt").exists() and not resume:
        raise AutoScaleError(f"{out}: already holds a training run (last.pt); pass --resume to continue it "
                             f"or choose another out=...")


def _prepare_out(out: Path, resume: bool, cfg: TrainConfig) -> None:
    """Check ``out`` again (:func:`_check_out`), create it and write the run marker."""
    _check_out(out, resume)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise AutoScaleError(f"{out}: output folder is not writable ({exc.strerror or exc})") from None
    for tmp in _stale_temp_files(out):  # partial checkpoints of a killed run: as large as the model
        with contextlib.suppress(OSError):
            tmp.unlink()
    marker: dict[str, Any] = {"autoscale_train": True, "config": config_to_dict(cfg), "code_version": code_version()}
    if D.elastic_job() is not None:
        marker["torchrun_job"] = D.elastic_job()  # lets a restarted worker group find its own run
    _write_text_atomic(out / RUN_MARKER, json.dumps(marker, indent=1) + "\n", "run marker")


def _resolve_resume(resume: Any, out: Path, info: D.DistInfo) -> Any:
    """What ``resume`` means for this attempt: after a torchrun restart of the worker group
    (:func:`D.restart_count` > 0), True when ``out/last.pt`` exists and ``run.json`` names this
    torchrun job (:func:`D.elastic_job`), whatever ``resume`` says; else ``"auto"`` -> True when
    ``out/last.pt`` exists, None when not; anything else unchanged. Rank 0 decides for all ranks."""
    if resume != "auto" and D.restart_count() == 0:
        return resume
    if info.is_main:
        last = out / "last.pt"
        own = False
        if D.restart_count() > 0 and last.is_file():
            with contextlib.suppress(OSError, ValueError, AttributeError):
                own = json.loads((out / RUN_MARKER).read_text()).get("torchrun_job") == D.elastic_job()
        if own:
            resume = True
        elif resume == "auto":
            resume = True if last.is_file() else None
    return D.broadcast_object(resume, info)


def _write_history(out: Path, history: list[dict[str, Any]]) -> None:
    _write_text_atomic(out / "history.json", json.dumps(history, indent=1) + "\n", "training history")
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    _write_text_atomic(out / "history.csv", buf.getvalue(), "training history", newline="")


def _tensorboard(out: Path, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
    except Exception:  # noqa: BLE001 - optional; skip silently
        return None
    try:
        return SummaryWriter(str(out / "tb"))
    except Exception:  # noqa: BLE001
        return None


class _SkipSampler(Sampler[int]):
    """The indices of ``base`` for the current epoch, minus the first ``skip`` (resume mid-epoch)."""

    def __init__(self, base: DistributedSampler, skip: int = 0) -> None:
        self.base, self.skip = base, skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.base)[self.skip:])

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)


class _StopFlag:
    """SIGINT/SIGTERM -> set a flag (the loop saves and stops); a second SIGINT aborts."""

    def __init__(self) -> None:
        self.set = False
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.set and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.set = True
        print(f"\nautoscale train: received {signal.Signals(signum).name}; saving last.pt after this step "
              f"and stopping (press Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """Every element of every tensor is finite (one device sync for all of them)."""
    flags = [torch.isfinite(t).all() for t in tensors if t is not None and t.is_floating_point()]
    return not flags or bool(torch.stack(flags).all())


def _grads_finite(params: list[torch.nn.Parameter]) -> bool:
    """No gradient element is NaN or infinite (the max-norm over all gradients is finite: one
    pass over the gradients, one device sync, no overflow)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return True
    try:
        norms = torch._foreach_norm(grads, math.inf)
    except (AttributeError, RuntimeError, TypeError):  # a torch without the fused norm
        norms = [g.detach().abs().max() for g in grads]
    return bool(torch.isfinite(torch.stack([n.float() for n in norms])).all())


def _name_images(paths: list[str], show: int = 3) -> str:
    """``a.jpg, b.jpg and 4 more``: the first ``show`` paths and how many others."""
    head = ", ".join(paths[:show])
    return head + (f" and {len(paths) - show} more" if len(paths) > show else "")


def _move_target(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t.to(device)[None]  # (1, 1, H, W) density or (1, H, W) classes


def _samples(batch: dict[str, Any]) -> Iterator[tuple[torch.Tensor, np.ndarray, torch.Tensor]]:
    for i in range(len(batch["name"])):
        yield batch["image"][i], batch["points"][i], batch["target"][i]


@torch.inference_mode()
def validate(model: AutoScale, dataset: Any, cfg: TrainConfig, device: torch.device, info: D.DistInfo) -> dict[str, float]:
    """Count MAE/RMSE on ``dataset`` (sharded over ranks): the full two-pass prediction for
    ``autoscale`` (``mae_first``: its first pass alone), a single pass for ``fpn``."""
    was_training = model.training
    model.eval()
    rows = []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.bf16 else contextlib.nullcontext()
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    for i in range(info.rank, len(dataset), info.world_size):
        s = dataset[i]
        with autocast:
            res = model.predict(s["image"][None].to(device, memory_format=fmt), single_pass=cfg.method == "fpn")
        rows.append((i, float(res.count), float(res.first_count), float(s["count"])))
    model.train(was_training)
    rows = sorted(r for part in D.gather_objects(rows, info) for r in part)
    pred, first, gt = (np.array([r[k] for r in rows]) for k in (1, 2, 3))
    m = counting_metrics(pred, gt)
    out = {"val_mae": float(m["mae"]), "val_rmse": float(m["rmse"]), "val_n": int(m["n"])}
    if cfg.method == "autoscale":
        out["val_mae_first"] = float(counting_metrics(first, gt)["mae"])
    return out


# ------------------------------------------------------------------------------------- train
def train(cfg: TrainConfig, resume: bool | str | os.PathLike[str] | None = None, *,
          on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train as configured; see the module docstring. ``resume``: True = ``<out>/last.pt``, a
    checkpoint path, or ``"auto"`` (``<out>/last.pt`` when it exists, else a new run).
    ``on_epoch``: called (main process) with each epoch's history row.
    Returns :class:`TrainResult` (``interrupted`` after SIGINT/SIGTERM)."""
    device = resolve_device(cfg.device)
    info = D.init_distributed(device)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    out = Path(cfg.out)
    prev_det = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        # CPU kernels are deterministic already (and the switch costs a 2 s import there).
        if cfg.deterministic and device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
        result = _train(cfg, resume, device, info, out, on_epoch)
    finally:
        if cfg.deterministic and device.type == "cuda":
            torch.use_deterministic_algorithms(prev_det[0], warn_only=prev_det[1])
    D.cleanup()  # only after success: see its docstring
    return result


def _load_init_from(cfg: TrainConfig) -> dict[str, Any]:
    """The FPN training checkpoint ``cfg.init_from``, checked to fit this run."""
    path = Path(cfg.init_from)
    ck = load_training_checkpoint(path)
    name, kwargs = _model_spec(cfg)
    if ck["method"] != "fpn" or ck["variant"] != cfg.model.variant:
        raise CheckpointError(f"{path}: init_from needs an FPN {cfg.model.variant} training checkpoint, "
                              f"got a {ck['method']}/{ck['variant']} one")
    if ck["model"]["name"] != name or ck["model"]["kwargs"] != kwargs:
        raise CheckpointError(f"{path}: init_from model {ck['model']} differs from this config's "
                              f"{{'name': {name!r}, 'kwargs': {kwargs}}}")
    if int(ck["batch_in_epoch"]) != 0:
        raise CheckpointError(f"{path}: init_from needs a checkpoint saved at an epoch boundary "
                              f"(use keep_epochs=[N] in the FPN run)")
    return ck


def _train(cfg: TrainConfig, resume: Any, device: torch.device, info: D.DistInfo, out: Path,
           on_epoch: Callable[[dict[str, Any]], None] | None) -> TrainResult:
    ckpt_path: Path | None = None
    resume = _resolve_resume(resume, out, info)
    if resume:
        ckpt_path = out / "last.pt" if resume is True else Path(resume)
        if not ckpt_path.is_file():
            raise CheckpointError(f"{ckpt_path}: no checkpoint to resume from")
    parent = _load_init_from(cfg) if cfg.init_from and ckpt_path is None else None
    if info.is_main:
        _check_out(out, resume=bool(resume))  # fail early, but write nothing yet

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    o = cfg.optim
    train_ds = build_dataset(cfg, cfg.data.train_split, train=True, limit=cfg.data.limit, quiet=not info.is_main)
    val_ds = None
    if cfg.data.val_split and cfg.val_every > 0:
        val_ds = build_dataset(cfg, cfg.data.val_split, train=False, limit=cfg.data.val_limit, quiet=not info.is_main)

    model = build_model(cfg).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Data and model are built: only now does the output folder get created and marked.
    if info.is_main:
        _prepare_out(out, bool(resume), cfg)
    D.barrier(info)
    counter, l2s = model.counter, model.l2s
    fpn, out_factor = unwrap_counter(counter)
    center = None
    if cfg.method == "autoscale" and l2s is not None:
        center = CenterLoss(o.center_mode, init=o.center_init, alpha=o.center_lr).to(device)
    groups = _counter_groups(counter, fpn, o)
    n_counter = len(groups)
    if l2s is not None:
        groups.append(_group(l2s.parameters(), o.l2s_lr or o.lr, "l2s", o.weight_decay))
    if center is not None and o.center_mode == "official":
        groups.append(_group(center.parameters(), o.center_lr, "center", 0.0))
    optimizer = torch.optim.Adam(groups)

    epoch, batch_in_epoch, step, history, best_mae, cpu_base = 0, 0, 0, [], None, 0.0
    skipped_in_epoch = 0  # steps of the current epoch skipped for a non-finite loss (optim.nonfinite=skip)
    last_saved: tuple[int, int] | None = None  # (epoch, step) that out/last.pt holds, when known
    if parent is not None:
        # Branch off an FPN run: its weights, a copy of its Adam state (the parent's tensors must
        # never be shared) for the counter group, its position and RNG; new groups start fresh.
        fpn.load_state_dict(parent.get("train_state_dict") or parent["state_dict"])
        opt_state = copy.deepcopy(parent["optimizer"])
        names = [g.get("name", "counter") for g in opt_state["param_groups"]]
        if names != [g["name"] for g in groups[:n_counter]]:
            raise CheckpointError(f"{cfg.init_from}: its optimiser groups {names} do not match this run's "
                                  f"{[g['name'] for g in groups[:n_counter]]}; set optim.backbone_lr as the FPN "
                                  f"run did")
        first = torch.optim.Adam(groups[:n_counter])
        first.load_state_dict(opt_state)
        for g, fresh in zip(first.param_groups, groups[:n_counter]):
            g.update(base_lr=fresh["base_lr"], weight_decay=o.weight_decay, name=fresh["name"])
        for g in groups[n_counter:]:
            first.add_param_group(g)
        optimizer, groups = first, first.param_groups
        epoch, step = int(parent["epoch"]), int(parent["step"])
        history = [dict(r, source="init_from") for r in parent["history"]]
        cpu_base = float(parent.get("cpu_seconds", 0.0))
        set_rng_state(parent["rng"])
        if info.is_main:
            print(f"autoscale train: starting from {cfg.init_from} (epoch {epoch}, step {step})", file=sys.stderr)
    if ckpt_path is not None:
        ck = load_training_checkpoint(ckpt_path)
        if ck["method"] != cfg.method or ck["variant"] != cfg.model.variant:
            raise CheckpointError(f"{ckpt_path}: a {ck['method']}/{ck['variant']} run, but the config asks for "
                                  f"{cfg.method}/{cfg.model.variant}")
        try:
            fpn.load_state_dict(ck.get("train_state_dict") or ck["state_dict"])
            if l2s is not None:
                l2s.load_state_dict(ck["l2s_state_dict"])
            if center is not None:
                center.load_state_dict(ck["center"])
            optimizer.load_state_dict(ck["optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{ckpt_path}: does not match this config's model ({str(exc).splitlines()[0]})") from None
        epoch, batch_in_epoch, step = int(ck["epoch"]), int(ck["batch_in_epoch"]), int(ck["step"])
        history, best_mae = list(ck["history"]), ck["best_mae"]
        skipped_in_epoch = int(ck.get("skipped_in_epoch", 0))
        if ckpt_path.resolve() == (out / "last.pt").resolve():
            last_saved = (epoch, step)
        cpu_base = float(ck.get("cpu_seconds", 0.0))
        set_rng_state(ck["rng"])
        if info.is_main:
            restarted = f" after torchrun restart {D.restart_count()}" if D.restart_count() else ""
            print(f"autoscale train: resumed {ckpt_path} at epoch {epoch}, batch {batch_in_epoch}, step {step}"
                  f"{restarted}", file=sys.stderr)

    train_model = model
    if info.enabled:
        ddp = torch.nn.parallel.DistributedDataParallel(
            counter, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False)
        train_model = AutoScale(ddp, l2s, model.config)
    manual_sync = ([*l2s.parameters()] if l2s is not None else []) + (
        [*center.parameters()] if center is not None and o.center_mode == "official" else [])
    all_params = [p for g in optimizer.param_groups for p in g["params"]]
    # optim.nonfinite=skip restores what a skipped step's forward pass changed (BatchNorm
    # statistics, the paper-mode centre accumulators) from a copy taken before it.
    step_buffers = [*model.buffers(), *(center.buffers() if center is not None else [])]
    skip_nonfinite = o.nonfinite == "skip"

    base_sampler = DistributedSampler(train_ds, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                      seed=cfg.seed, drop_last=False)
    writer = _tensorboard(out, cfg.tensorboard) if info.is_main else None
    best_path, last_path = out / "best.pt", out / "last.pt"
    result = TrainResult(out_dir=out, best_checkpoint=best_path if best_path.exists() else None, last_checkpoint=last_path)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if cfg.bf16 else contextlib.nullcontext
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    # Regression with an output factor: scale the loss back by output_scale^2 for the backward pass
    # so the gradients keep their magnitude against Adam's epsilon (logged losses stay unscaled).
    grad_scale = cfg.model.output_scale ** 2 if cfg.model.variant == "regression" else 1.0
    cpu0 = time.process_time()

    def kept() -> str:
        """What the output folder still holds, for an error that stops training."""
        if last_saved is not None:
            return f"{last_path} holds epoch {last_saved[0]}, step {last_saved[1]}"
        return f"{last_path} is as it was" if last_path.exists() else f"no {last_path.name} was written"

    def save(path: Path, metrics: dict[str, Any] | None = None) -> None:
        nonlocal last_saved
        if not info.is_main:
            return
        if not _all_finite([*model.parameters(), *(center.parameters() if center is not None else [])]):
            raise AutoScaleError(f"{path}: not written: the model's weights are non-finite at epoch {epoch}, "
                                 f"step {step}; {kept()}; lower optim.lr or check the data")
        payload = model_checkpoint(
            model, cfg, epoch=epoch, batch_in_epoch=batch_in_epoch, step=step,
            optimizer=optimizer.state_dict(), center=None if center is None else center.state_dict(),
            rng=rng_state(), history=history, best_mae=best_mae, metrics=metrics or {},
            cpu_seconds=cpu_base + time.process_time() - cpu0, skipped_in_epoch=skipped_in_epoch)
        if out_factor != 1.0:  # the unfolded weights, for an exact resume
            payload["train_state_dict"] = cpu_state_dict(fpn)
        try:
            save_atomic(payload, path)
            write_model_card(path, payload)
        except AutoScaleError as exc:
            hint = f"{kept()}; free space and continue with --resume" if last_path.exists() else "free space and run again"
            raise AutoScaleError(f"{exc}; training stopped at epoch {epoch}, step {step} ({hint})") from None
        if path == last_path:
            last_saved = (epoch, step)

    def nonfinite(what: str, where: list[tuple[str, str]]) -> None:
        """A step with a non-finite loss or gradient ``what`` on the images ``where`` ((path, loss)
        on this rank): stop with one error line (optim.nonfinite=stop) or warn that it is skipped."""
        where = [w for part in D.gather_objects(where, info) for w in part]
        values = sorted({v for _, v in where if v})
        what = f"non-finite training {what}" + (f" ({', '.join(values)})" if values else "")
        at = f"epoch {epoch + 1}, step {step + 1} (batch {batch_in_epoch + 1} of {steps_per_epoch})"
        names = _name_images([w for w, _ in where])
        if not skip_nonfinite:
            these = "the image and its annotation" if len(where) == 1 else "these images and their annotations"
            raise AutoScaleError(f"{names}: {what} at {at}; training stopped, {kept()}; lower optim.lr, check "
                                 f"{these}, or set optim.nonfinite=skip to skip such steps")
        if info.is_main:
            print(f"autoscale train: warning: skipped {at}: {what} for {names}", file=sys.stderr, flush=True)

    def train_mode() -> None:
        model.train()
        if center is not None:
            center.train()
        if cfg.model.freeze_bn:
            _freeze_backbone_bn(counter)

    def sync_center_step() -> None:
        if center is None or center.mode != "paper":
            return
        D.all_reduce_sum(center.acc_sum, info)
        D.all_reduce_sum(center.acc_count, info)
        center.step_center()

    train_mode()
    steps_per_epoch = len(base_sampler) // o.batch_size + (len(base_sampler) % o.batch_size > 0)
    stop = _StopFlag()
    with stop:
        while epoch < o.epochs and (o.max_steps is None or step < o.max_steps):
            base_sampler.set_epoch(epoch)
            train_ds.set_epoch(epoch)
            loader = DataLoader(train_ds, batch_size=o.batch_size, sampler=_SkipSampler(base_sampler, batch_in_epoch * o.batch_size),
                                collate_fn=collate, num_workers=cfg.num_workers)
            t0 = time.perf_counter()
            sums: dict[str, float] = {}
            n_steps = n_regions = 0
            bar = None
            if cfg.progress and info.is_main:
                from tqdm import tqdm
                bar = tqdm(total=steps_per_epoch, initial=batch_in_epoch, desc=f"epoch {epoch + 1}/{o.epochs}",
                           leave=False, dynamic_ncols=True)
            for batch in loader:
                # sums over images: total, first, refine, centre loss; images that refined a region
                terms = torch.zeros(5, dtype=torch.float64)
                n_img = len(batch["name"])
                loss = None
                snapshot = [t.detach().clone() for t in step_buffers] if skip_nonfinite else None
                bad: list[tuple[str, str]] = []  # (image, loss) of the images whose own loss is non-finite
                for i, (img, pts, tgt) in enumerate(_samples(batch)):
                    img, tgt = img[None].to(device, memory_format=fmt), _move_target(tgt, device)
                    with autocast():
                        if cfg.method == "autoscale":
                            bd = joint_loss(train_model, img, pts, tgt, center, reduction=o.loss_reduction, refine=True)
                            li = bd.total
                            value = float(li.detach())
                            terms += torch.tensor([value, bd.first, bd.refine, bd.center,
                                                   float(bd.region is not None)], dtype=torch.float64)
                        else:
                            li = pixel_loss(cfg.model.variant, train_model.counter(img), tgt, model.config, o.loss_reduction,
                                            points=pts)
                            value = float(li.detach())
                            terms += torch.tensor([value, value, 0.0, 0.0, 0.0], dtype=torch.float64)
                    if not math.isfinite(value):
                        bad.append((str(train_ds.records[int(batch["index"][i])].image_path), f"{value}"))
                    li = li.float() / n_img
                    loss = li if loss is None else loss + li
                if not bad and not torch.isfinite(loss):  # each image finite, their mean is not
                    bad = [(str(train_ds.records[int(k)].image_path), f"{float(loss.detach())}") for k in batch["index"]]
                fault = "loss" if D.any_flag(bool(bad), device, info) else None
                if fault is not None and not skip_nonfinite:
                    nonfinite(fault, bad)  # stops before the backward pass
                factor = lr_factor(step, steps_per_epoch, o)
                for g in optimizer.param_groups:
                    g["lr"] = g["base_lr"] * factor
                optimizer.zero_grad(set_to_none=True)
                (loss * grad_scale if grad_scale != 1.0 else loss).backward()
                D.all_reduce_grads(manual_sync, info)
                if fault is None and not _grads_finite(all_params):  # the same gradients on every rank
                    fault = "gradient"
                    bad = [(str(train_ds.records[int(k)].image_path), "") for k in batch["index"]]
                if fault is None:
                    if o.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], o.grad_clip)
                    optimizer.step()
                else:  # stop, or skip: no optimiser step, gradients and the forward's buffer updates dropped
                    nonfinite(fault, bad)
                    optimizer.zero_grad(set_to_none=True)
                    for t, saved in zip(step_buffers, snapshot):
                        t.copy_(saved)
                step += 1  # a skipped step still counts: the schedule and resume positions stay the same
                batch_in_epoch += 1
                if fault is None:
                    n_steps += 1
                    glob = D.all_reduce_sum(torch.cat([terms, torch.tensor([float(n_img)], dtype=torch.float64)]).to(device), info).cpu()
                    mean = (glob[:4] / glob[5]).tolist()
                    n_regions += int(glob[4])
                    result.step_losses.append(mean[0])
                    for k, v in zip(("loss", "loss_first", "loss_refine", "loss_center"), mean):
                        sums[k] = sums.get(k, 0.0) + v
                else:
                    skipped_in_epoch += 1
                    result.step_losses.append(math.nan)
                if o.center_every is not None and step % o.center_every == 0:
                    sync_center_step()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{mean[0]:.4g}" if fault is None else "skipped")
                if D.any_flag(stop.set, device, info):
                    break
                if o.max_steps is not None and step >= o.max_steps:
                    break
            if bar is not None:
                bar.close()
            if D.any_flag(stop.set, device, info):
                save(last_path)
                result.interrupted = True
                if info.is_main:
                    print(f"autoscale train: interrupted; state saved to {last_path} "
                          f"(epoch {epoch + 1}, batch {batch_in_epoch}, step {step}); continue with --resume",
                          file=sys.stderr)
                break
            if batch_in_epoch < steps_per_epoch:  # max_steps reached mid-epoch
                save(last_path)
                break
            # -- end of epoch ------------------------------------------------------------------
            if skipped_in_epoch and skipped_in_epoch >= batch_in_epoch:  # optim.nonfinite=skip; none applied
                raise AutoScaleError(f"{out}: every step of epoch {epoch + 1} had a non-finite loss or gradient "
                                     f"({skipped_in_epoch} skipped, see the warnings); training stopped, {kept()}; "
                                     f"lower optim.lr or check the data")
            if o.center_every is None:
                sync_center_step()
            epoch += 1
            batch_in_epoch = 0
            row: dict[str, Any] = {"epoch": epoch, "step": step}
            row.update({k: v / max(n_steps, 1) for k, v in sums.items()})
            row["lr"] = o.lr * lr_factor(step - 1, steps_per_epoch, o)
            if skip_nonfinite:
                row["skipped"] = skipped_in_epoch
            skipped_in_epoch = 0
            if cfg.method == "autoscale":
                row["regions"] = n_regions
            if center is not None:
                row["center"] = float(center.center.detach())
            row["time_s"] = round(time.perf_counter() - t0, 3)
            metrics: dict[str, Any] = {}
            if val_ds is not None and epoch % cfg.val_every == 0:
                metrics = validate(model, val_ds, cfg, device, info)
                train_mode()
                row.update(metrics)
            history.append(row)
            if metrics and (best_mae is None or metrics["val_mae"] < best_mae):
                best_mae = metrics["val_mae"]
                save(best_path, metrics)
                result.best_checkpoint = best_path
            if epoch in cfg.keep_epochs:
                save(out / f"epoch_{epoch}.pt", metrics)
            save(last_path, metrics)
            if info.is_main:
                _write_history(out, history)
                if on_epoch is not None:
                    on_epoch(row)
                if writer is not None:
                    for k, v in row.items():
                        if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v):
                            writer.add_scalar(k, v, epoch)
                    writer.flush()
            D.barrier(info)
    if writer is not None:
        writer.close()
    if val_ds is None and info.is_main and last_path.exists():
        result.best_checkpoint = None
    result.history, result.epoch, result.step = history, epoch, step
    return result
