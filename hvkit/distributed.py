"""torch.distributed in one place: process-group set-up, the gather policy, rank helpers.

A single process is simply world size 1: every function here is then a no-op.

Gather policy: a loss that declares ``needs_global_batch`` is computed on the embeddings
of every rank (:func:`gather_with_grad`); each rank keeps the gradient to its own
samples only. DDP then *averages* parameter gradients over ranks, so the core scales
such a loss by the world size before ``backward`` (:func:`global_loss_scale`) — the
result equals one process on the whole batch (tests/distributed checks it).
"""

from __future__ import annotations

import hashlib
import logging
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn


def world() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the torchrun environment (0, 0, 1 otherwise)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)))


_owned = False  # whether init() created the default process group (shutdown() only ends its own)


def init(device: torch.device) -> None:
    """Initialise the default process group under torchrun (nccl on CUDA, gloo on CPU); ranks other
    than 0 then log errors only."""
    global _owned
    _, _, world_size = world()
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
        _owned = True
        if dist.get_rank() != 0:  # rank 0 says what every rank would: the others log errors only
            logging.getLogger("hvkit").setLevel(logging.ERROR)


def shutdown() -> None:
    """After a successful run: wait for every rank, then end the process group :func:`init` made.

    Exiting with the group alive lets gloo's worker threads outlive the interpreter and abort
    the exit ("terminate called without an active exception"). Across several ranks the
    group is ended by :func:`_destroy_together`. A group someone else created is left alone.
    """
    global _owned
    if _owned and dist.is_initialized():
        if dist.get_world_size() > 1:
            _destroy_together()
        else:
            dist.destroy_process_group()
    _owned = False


_DESTROYED = "hvkit/groups_destroyed"


def _destroy_together() -> None:
    """Barrier, end the group, then wait on the rendezvous store until every rank has ended it.

    The barrier keeps one rank from tearing its connections down while another still uses
    them; the wait keeps a rank from exiting while a peer is still tearing down, which aborted
    a finished two-rank gloo run at exit about once in fifteen. The store outlives the group
    (torchrun's agent holds it).
    """
    store = dist.distributed_c10d._get_default_store()
    world_size = dist.get_world_size()
    dist.barrier()
    dist.destroy_process_group()
    if store.add(_DESTROYED, 1) == world_size:
        store.set(f"{_DESTROYED}/all", b"1")
    store.wait([f"{_DESTROYED}/all"])


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if active():
        dist.barrier()


def max_over_ranks(value: int, device: torch.device) -> int:
    """The largest of every rank's ``value`` (``value`` itself in a single process)."""
    if not active():
        return value
    box = torch.tensor([value], device=device)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return int(box.item())


_REPORTED = "hvkit/reported"


def first_to_report(message: str) -> bool:
    """Whether this rank should print ``message``: under several processes the ranks usually meet
    the same error, and one line says it. Once the group exists the first rank to report a message
    prints it (counted on the rendezvous store); before, rank 0 does."""
    if not active():
        return world()[0] == 0
    store = dist.distributed_c10d._get_default_store()
    store.add(_REPORTED, 1)
    return store.add(f"{_REPORTED}/{hashlib.sha1(message.encode()).hexdigest()}", 1) == 1


def peer_reported() -> bool:
    """Whether some rank has reported an error, so that a failure here may only follow from it."""
    if not active():
        return False
    return dist.distributed_c10d._get_default_store().add(_REPORTED, 0) > 0


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def wrap(module: nn.Module, device: torch.device, channels_last: bool = False,
         sync_batchnorm: bool = True) -> nn.Module:
    """DDP-wrap a module with trainable parameters when running under several processes.

    With ``sync_batchnorm`` (the stage's ``train.sync_batchnorm``) its BatchNorm layers first become
    :class:`hvkit.sync_batchnorm.SyncBatchNorm`, which normalise by the global batch's statistics, so
    W processes compute the steps one process does; without, each rank normalises by its own share.
    ``channels_last`` (the stage's ``train.channels_last``) converts the module first too, as the
    Trainer would: converted after wrapping, its gradients no longer match the strides of DDP's
    buckets, which then copy them every step ("Grad strides do not match bucket view strides").
    """
    if not active() or not any(p.requires_grad for p in module.parameters()):
        return module
    if sync_batchnorm:
        from hvkit.sync_batchnorm import convert  # it reads active() from here
        module = convert(module)
    if channels_last:
        module.to(memory_format=torch.channels_last)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """All ranks' ``tensor`` concatenated in rank order; the gradient flows to this rank's part."""
    if not active():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    parts[dist.get_rank()] = tensor
    return torch.cat(parts)


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """All ranks' ``tensor`` concatenated in rank order (no gradient)."""
    if not active():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def sync_loss_gradients(module: nn.Module, gathered: bool) -> None:
    """Make a loss module's parameter gradients those of one process on the whole batch.

    A loss computed on the ``gathered`` batch on every rank, scaled by the world size, has
    parameter gradients identical on all ranks and W times too large: they are divided by
    W. A loss that saw only its rank's share has them averaged over ranks, as DDP does for
    the model.
    """
    if not active():
        return
    world_size = dist.get_world_size()
    for p in module.parameters():
        if p.grad is None:
            continue
        if not gathered:
            dist.all_reduce(p.grad)
        p.grad.div_(world_size)


def broadcast_object(value: object) -> object:
    """Rank 0's ``value`` on every rank."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(n: int) -> slice:
    """This rank's contiguous share of ``n`` items (all of them in a single process)."""
    if not active():
        return slice(0, n)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    return slice(rank * n // world_size, (rank + 1) * n // world_size)


def gather_objects(value: object) -> list:
    """Every rank's ``value`` in rank order (``[value]`` in a single process)."""
    if not active():
        return [value]
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, value)
    return parts


def gather_shards(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's :func:`shard` result (shares may differ in length) on every rank."""
    if not active():
        return tensor
    return torch.cat(gather_objects(tensor.cpu())).to(tensor.device)


def global_loss_scale() -> float:
    """Factor for a loss computed on the gathered batch so DDP's averaging gives the true gradient."""
    return float(dist.get_world_size()) if active() else 1.0
