"""FSDP2 under torchrun: the rank's place, sharding, and the facts ranks must agree on.

A stage with `Workload.nproc` runs in every process torchrun starts. Each rank builds the same
seeded model, lets the stage's optimizations change it, then FSDP2 shards it: `fully_shard` per
decoder layer, then the root (embeddings, final norm, LM head). Ranks train on different data
(seed + rank), so rank 0 sees exactly what a single-process run sees.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

# Profiled after the measured steps, so the profiler never touches a timed step: the steps the
# collectives' share is read from when the workload profiles none (profile_steps=0).
PROFILE_STEPS = 3
COMM_KERNEL_PREFIXES = ("nccl",)  # NCCL's device kernels: ncclDevKernel_AllGather_RING_LL ...
COMM_CPU_PREFIXES = ("gloo:",)  # gloo runs collectives on its own host threads


@dataclass(frozen=True)
class Rank:
    rank: int
    world_size: int
    local_rank: int


def current() -> Rank | None:
    """This process's place in a torchrun job; None outside one."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return Rank(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", os.environ["RANK"])),
    )


def device_for(device_type: str, rank: Rank | None) -> torch.device:
    if device_type == "cuda" and rank is not None:
        return torch.device("cuda", rank.local_rank)
    return torch.device(device_type)


def start(device: torch.device) -> None:
    """Join the job's process group: NCCL on GPUs, gloo on a CPU."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def backend() -> str:
    return str(dist.get_backend())


def shard(model: torch.nn.Module, layers: torch.nn.ModuleList, dtype: torch.dtype) -> str:
    """FSDP2: every decoder layer its own unit, the root holds the rest. Returns a note.

    Parameters, gradients and their reduction all stay in the workload's dtype, as in a
    single-process run (the seed trains in pure bf16), so `--nproc 1` does the same math.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=dtype)
    for layer in layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return (
        f"FSDP2 fully_shard: {len(layers)} decoder layers + root, params and reduce {_name(dtype)}"
    )


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def full(value: torch.Tensor) -> torch.Tensor:
    """A DTensor (FSDP's grad norm) as the plain tensor every rank agrees on."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def rank0_decides(decision: bool, device: torch.device) -> bool:
    """Every rank must run the same number of steps: rank 0's stopping rule speaks for all."""
    flag = torch.tensor([int(decision)], device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def mean(value: float, device: torch.device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _union_us(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _length(intervals: list[tuple[float, float]]) -> float:
    return sum(end - start for start, end in intervals)


def _overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Total overlap of two sorted, disjoint interval lists."""
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


@dataclass(frozen=True)
class CommTime:
    busy_ms: float  # when any collective ran
    exposed_ms: float | None  # when a collective ran and no compute kernel did (GPU only)
    source: str


def comm_time(events: list[tuple[str, bool, float, float]]) -> CommTime:
    """Collective time in a profile: events are (name, on_device, start_us, end_us).

    On a GPU, NCCL kernels against every other kernel: what overlaps compute is hidden, the rest
    is exposed. On a CPU, gloo's collectives run on their own threads and nothing says whether the
    main thread was waiting, so only busy time is known.
    """
    device_events = [e for e in events if e[1]]
    if device_events:
        comm = [(s, t) for name, _, s, t in device_events if name.startswith(COMM_KERNEL_PREFIXES)]
        compute = [
            (s, t) for name, _, s, t in device_events if not name.startswith(COMM_KERNEL_PREFIXES)
        ]
        busy, work = _union_us(comm), _union_us(compute)
        exposed = _length(busy) - _overlap(busy, work)
        return CommTime(_length(busy) / 1e3, exposed / 1e3, "profiler: NCCL kernels vs compute")
    comm = [(s, t) for name, _, s, t in events if name.startswith(COMM_CPU_PREFIXES)]
    return CommTime(_length(_union_us(comm)) / 1e3, None, "profiler: gloo collectives")
