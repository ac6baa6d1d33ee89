"""What lets one training loop run on one process or many (torch.distributed, DDP).

The loops call these helpers unconditionally. Without an initialised process
group they are identities, so a one-process run is the same code with world
size 1. With one (a rank started by torch.distributed's elastic launcher, as
torchrun starts it), each rank trains on its shard of every global batch and
DDP averages the gradients: the same update as one process taking the whole
batch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
from torch.distributed.launcher.api import LaunchConfig, elastic_launch
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1


def ranks() -> Ranks:
    """This process's place in the process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


@dataclass(frozen=True)
class Launch:
    """How many processes train, and where they meet: torchrun's ``--nproc-per-node``, ``--nnodes`` and rendezvous."""

    processes_per_node: int = 1
    nodes: int = 1
    # host:port of the c10d rendezvous store (hosted by the node it names); "localhost:0": one node, a free port.
    rendezvous_endpoint: str = "localhost:0"
    run_id: str = "distillery"  # nodes with the same id and endpoint form one run
    log_dir: str | None = None  # each rank's stdout and stderr, when given

    @property
    def world_size(self) -> int:
        return self.processes_per_node * self.nodes


def launch(plan: Launch, entrypoint: Callable[..., Any], *args: Any) -> dict[int, Any]:
    """Run ``entrypoint(*args)`` on this node's ranks under torch.distributed's elastic agent, as torchrun does.

    Blocks until every rank of the run has finished; returns this node's return
    values by global rank. A failed rank ends the run (no restarts): raises
    torch.distributed.elastic's ChildFailedError, or its SignalException when
    this process got SIGTERM (the ranks got it too).
    """
    logs = DefaultLogsSpecs(log_dir=plan.log_dir, redirects=Std.ALL) if plan.log_dir else None
    config = LaunchConfig(
        min_nodes=plan.nodes,
        max_nodes=plan.nodes,
        nproc_per_node=plan.processes_per_node,
        run_id=plan.run_id,
        rdzv_backend="c10d",
        rdzv_endpoint=plan.rendezvous_endpoint,
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
        logs_specs=logs,
        signals_to_handle="SIGTERM",  # the worker ignores SIGINT; it must not end a run
    )
    return elastic_launch(config, entrypoint)(*args)


def init(device: str) -> str:
    """Join the process group the launcher set up (its environment says where); returns this rank's device."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    dist.init_process_group(backend(device))
    return device


def backend(device: str) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.startswith("cuda") else "gloo"


def wrap(module: nn.Module, device: str, find_unused_parameters: bool = False) -> nn.Module:
    """``module`` under DDP when there are several ranks (its gradients are then averaged across them)."""
    if not ranks().active:
        return module
    device_ids = [torch.device(device).index or 0] if device.startswith("cuda") else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def shard(index: torch.Tensor, of: Ranks) -> torch.Tensor:
    """This rank's contiguous share of a global batch (sizes differ by at most one).

    A batch smaller than the world is padded by repeating its samples, so that
    no rank gets nothing to train on (the visit counts show the repeats).
    """
    if not of.active:
        return index
    if len(index) < of.world:
        index = index.repeat(math.ceil(of.world / len(index)))[: of.world]
    return index.tensor_split(of.world)[of.rank]


def batch_share(batch_size: int, of: Ranks) -> int:
    """How many of ``batch_size`` generated samples this rank makes (sizes differ by at most one)."""
    return batch_size // of.world + (1 if of.rank < batch_size % of.world else 0)


def sum_across(values: torch.Tensor) -> torch.Tensor:
    """The sum over ranks, in place (``values`` is returned unchanged with one rank)."""
    if ranks().active:
        # NCCL reduces only CUDA tensors; gloo either kind.
        on_wire = values.cuda() if dist.get_backend() == "nccl" else values
        dist.all_reduce(on_wire, op=dist.ReduceOp.SUM)
        values.copy_(on_wire)
    return values


def rows_of(total: int, of: Ranks) -> range:
    """This rank's contiguous block of ``total`` rows, for work split across ranks and gathered after."""
    per_rank = math.ceil(total / of.world)
    return range(min(total, of.rank * per_rank), min(total, (of.rank + 1) * per_rank))


def gather_rows(local: torch.Tensor, total: int) -> torch.Tensor:
    """Every rank's ``rows_of`` block, concatenated in rank order: ``total`` rows on every rank."""
    of = ranks()
    if not of.active:
        return local
    per_rank = math.ceil(total / of.world)
    padded = local.new_zeros(per_rank, *local.shape[1:])  # all_gather wants equal sizes
    padded[: len(local)] = local
    blocks = [torch.empty_like(padded) for _ in range(of.world)]
    dist.all_gather(blocks, padded)
    return torch.cat(blocks)[:total]


def from_leader(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (e.g. the checkpoint only rank 0 read)."""
    if not ranks().active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def copy_leader_state(module: nn.Module) -> None:
    """Make every rank's parameters and buffers rank 0's.

    DDP keeps parameters in step, but BatchNorm running statistics are updated
    by each rank from its own shard: after training, rank 0's are the model's.
    """
    if not ranks().active:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)
