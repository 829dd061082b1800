"""Training checkpoints: atomic writes, RNG state capture/restore, version stamp.

A training checkpoint is a model checkpoint of :mod:`autoscale.models.registry` (``format``,
``version``, ``variant``, ``model {name, kwargs}``, ``state_dict``, ``l2s_state_dict``,
``l2s {head, bound, pool}``) - so :func:`autoscale.models.registry.build_from_checkpoint` and
``load_checkpoint`` read it directly - plus these keys:

    pipeline     PipelineConfig as a dict (tuples as lists)
    config       the full TrainConfig dict (config_to_dict)
    code_version {"autoscale": __version__, "git": commit or None}
    method       "fpn" | "autoscale"
    epoch        completed epochs
    batch_in_epoch  batches already done in the epoch being run (0 at an epoch boundary)
    step         optimiser steps done in total
    optimizer    torch optimizer state_dict
    center       CenterLoss state_dict or None (method fpn)
    rng          {"torch", "cuda" (list or None), "numpy", "python"}
    history      list of per-epoch dicts
    best_mae     best validation MAE so far (None before any validation)

Everything is made of tensors and plain Python values so ``torch.load(weights_only=True)``
reads it.
"""
from __future__ import annotations

import random
import subprocess
from functools import lru_cache
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

import autoscale
from autoscale.errors import CheckpointError
from autoscale.io import atomic_path
from autoscale.models.registry import load_checkpoint

__all__ = ["save_atomic", "load_training_checkpoint", "rng_state", "set_rng_state", "code_version", "TRAINING_KEYS"]

TRAINING_KEYS = ("pipeline", "config", "method", "epoch", "batch_in_epoch", "step", "optimizer", "center",
                 "rng", "history", "best_mae")


def save_atomic(obj: dict[str, Any], path: str | PathLike[str]) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (:func:`autoscale.io.atomic_path`): a reader
    sees either the old or the new complete file, never a partial one; a failed write (disk full,
    quota, I/O error) leaves any previous ``path`` untouched and raises :class:`AutoScaleError` as
    one line naming ``path``, the reason and whether a previous checkpoint there is intact."""
    with atomic_path(path, "checkpoint") as tmp:
        torch.save(obj, tmp)
    return Path(path)


def load_training_checkpoint(path: str | PathLike[str]) -> dict[str, Any]:
    """Load one of our checkpoints and check it carries the training keys needed to resume."""
    ckpt = load_checkpoint(path)
    missing = [k for k in TRAINING_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint (lacks {', '.join(missing)}); cannot resume from it")
    return ckpt


def rng_state() -> dict[str, Any]:
    """Global RNG states (torch CPU/CUDA, numpy legacy, python ``random``) as plain values."""
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


@lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """``{"autoscale": __version__, "git": <commit of the source tree> | None}``."""
    commit = None
    try:
        src = Path(autoscale.__file__).resolve().parent
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=5)
        if r.returncode == 0:
            commit = r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"autoscale": autoscale.__version__, "git": commit}
