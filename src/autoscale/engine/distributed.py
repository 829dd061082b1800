"""Multi-process training (one process per GPU, or CPU processes) launched by ``torchrun``.

Launch: ``torchrun --nproc_per_node N -m autoscale train --config ...`` (multi-node: add
``--nnodes``, ``--node_rank``, ``--rdzv_endpoint``). ``torchrun`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``); :func:`init_distributed` then joins the
process group (``nccl`` on CUDA, ``gloo`` on CPU) and pins ``cuda:LOCAL_RANK``.

How the trainer uses it:

* the counter is wrapped in ``DistributedDataParallel`` with ``find_unused_parameters=False``:
  every step runs its first pass, so all of its parameters get gradients (the second pass on the
  zoomed region re-uses the same parameters in the same graph; DDP's hooks fire once per
  parameter after the whole backward);
* the L2S network (and the learned centre in ``official`` mode) is *not* DDP-wrapped: it is
  unused on images with no dense region, which would make DDP without
  ``find_unused_parameters`` hang and with it fail on the counter's repeated forward. Its
  gradients are averaged by :func:`all_reduce_grads` (a missing gradient counts as zero), the
  same mean DDP computes;
* a ``DistributedSampler`` (``set_epoch`` every epoch) gives each rank ``batch_size`` images per
  step, so the global batch is ``batch_size x world_size`` and the loss is the global mean;
* rank 0 alone writes checkpoints, history and TensorBoard logs; validation is sharded and the
  per-image counts are gathered (:func:`gather_objects`); the paper-mode centre accumulators are
  summed over ranks before each Eq. 4 update.

Faults: under ``torchrun --max-restarts N`` a rank that dies (killed, out of memory) makes the
elastic agent stop the other ranks and start the whole worker group again with the same command
line and ``TORCHELASTIC_RESTART_COUNT`` (:func:`restart_count`) raised by one. The trainer then
continues the run's own ``last.pt`` by itself: ``run.json`` records the torchrun job that wrote
the folder (:func:`elastic_job`), so a restart never adopts a folder another run left.
torchrun's agent keeps one TCP store for all attempts (``TORCHELASTIC_USE_AGENT_STORE``), and the
keys a process group leaves there (gloo's peer addresses) would be read by the next attempt's
ranks, which then fail to connect (pytorch/pytorch#135712); on one node the ranks therefore join
under a per-attempt prefix (:func:`_attempt_store`). Across nodes the agents' restart counts can
differ, so there launch torchrun with ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` (a fresh store per
attempt) to use ``--max-restarts``.
"""
from __future__ import annotations

import gc
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "cleanup", "all_reduce_grads", "all_reduce_sum", "gather_objects",
           "any_flag", "barrier", "broadcast_object", "restart_count", "elastic_job"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place: ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); else a
    single-process :class:`DistInfo`. On CUDA, ``device`` index is ignored: ``LOCAL_RANK`` picks it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, **_attempt_store(rank, world))
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def _attempt_store(rank: int, world: int) -> dict[str, Any]:
    """``init_process_group`` arguments that join through torchrun's agent store under the prefix
    ``autoscale/attempt_<TORCHELASTIC_RESTART_COUNT>/`` when all ranks run on this node (one
    agent, so one restart count); else ``{}`` (the ``env://`` default). Without the prefix a
    restarted worker group can read the previous attempt's gloo addresses and fail to connect."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or os.environ.get("LOCAL_WORLD_SIZE") != str(world):
        return {}
    from torch.distributed.constants import default_pg_timeout

    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                          timeout=default_pg_timeout)
    return {"store": dist.PrefixStore(f"autoscale/attempt_{restart_count()}/", store), "rank": rank,
            "world_size": world}


def cleanup() -> None:
    """Leave the process group. After a successful run every rank meets at a barrier first, so no
    rank tears its connections down while a peer still uses them, and the group's native threads
    are joined now rather than during interpreter shutdown (where gloo can abort the process with
    "terminate called without an active exception"). Call it only after success: after a failure a
    peer may be blocked in a collective (the barrier would hang), and torchrun stops the ranks anyway."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    dist.destroy_process_group()
    gc.collect()


def all_reduce_grads(params: Iterable[torch.nn.Parameter], info: DistInfo) -> None:
    """Average gradients over ranks (a ``None`` gradient counts as zeros and is filled in)."""
    if not info.enabled:
        return
    for p in params:
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(info.world_size)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """In-place sum over ranks (no-op in a single process); returns ``t``."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def any_flag(flag: bool, device: torch.device, info: DistInfo) -> bool:
    """True when ``flag`` is set on any rank (e.g. a stop request)."""
    if not info.enabled:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` (picklable) on every rank (``obj`` itself in a single process)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def restart_count() -> int:
    """How many times torchrun's elastic agent has restarted this worker group
    (``TORCHELASTIC_RESTART_COUNT``; 0 on the first attempt and outside torchrun)."""
    try:
        return max(0, int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")))
    except ValueError:
        return 0


def elastic_job() -> str | None:
    """An id of the torchrun invocation this process runs under: the same in every restarted
    worker group, different for any other invocation (even one with the same ``--rdzv-id``):
    ``TORCHELASTIC_RUN_ID``, the host, and the pid and start time of the elastic agent (this
    process's parent, which survives the restarts). None when not launched by torchrun."""
    if "TORCHELASTIC_RESTART_COUNT" not in os.environ:
        return None
    agent = os.getppid()
    start = ""
    try:  # the agent's start time (field 22 of /proc/PID/stat) guards against a reused pid
        stat = Path(f"/proc/{agent}/stat").read_text(encoding="ascii", errors="replace")
        start = stat[stat.rindex(")") + 2:].split()[19]
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.environ.get('TORCHELASTIC_RUN_ID', '')}/{socket.gethostname()}/{agent}/{start}"
